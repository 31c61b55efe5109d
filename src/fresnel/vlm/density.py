"""Density maps from VLM or offline answers: pure numpy, no I/O.

A density map is a float32 (size, size) array over the whole image, non-negative, mean 1
(so a density-weighted loss has the scale of the unweighted one). Row 0 is the top of the
image and column 0 its left edge; pixel (i, j) covers normalised coordinates
x in [j/size, (j+1)/size), y in [i/size, (i+1)/size). Non-square images are stretched to the
square map, like the grid the VLM rates.

* ``grid_density``: an n x n grid, scaled to mean 1 and resampled: BILINEAR (cell values sit
  at cell centres, half-pixel aligned, edges clamped) when the map is at least as large as
  the grid, area averaging when smaller, or NEAREST (flat cells) on request; then rescaled
  to mean 1 again, since bilinear interpolation shifts the mean slightly at the borders.
* ``landmark_density``: Gaussian blobs around left_eye, right_eye (sigma 0.25 x the
  inter-ocular distance, amplitude 1.0), nose and mouth (sigma 0.4 x IOD, amplitude 0.7),
  a broad face blob (0.9 x 1.2 IOD, amplitude 0.3), combined by maximum, over a floor of
  0.05 of the peak; then mean 1.
* ``saliency_density``: any non-negative saliency map, scaled to peak 1 over a floor of 0.1.
* ``importance_levels``: low / medium / high / critical by fraction of the map's maximum.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fresnel.vlm.grid import LANDMARKS

BRANCHES = ("grid", "smart-face", "saliency", "uniform")
RESAMPLE_METHODS = ("bilinear", "nearest")
LEVELS = ("low", "medium", "high", "critical")
LEVEL_THRESHOLDS = (0.2, 0.45, 0.75)  # fraction of the maximum where medium/high/critical start

EYE_SIGMA = 0.25  # x inter-ocular distance
FEATURE_SIGMA = 0.40
FACE_SIGMA = (0.9, 1.2)  # x, y
MIN_IOD = 0.05  # fraction of the image width: keeps blobs visible if the eyes coincide
AMPLITUDE = {"left_eye": 1.0, "right_eye": 1.0, "nose": 0.7, "mouth": 0.7}
FACE_AMPLITUDE = 0.3
LANDMARK_FLOOR = 0.05
SALIENCY_FLOOR = 0.1


@dataclass
class DensityResult:
    """A density map and where it came from.

    provider: "vlm:<model>", "offline:lbp-face" or "offline:saliency" (or "uniform");
    branch: one of BRANCHES; grid_size: the VLM grid asked for (None offline);
    repairs / rejections: what was fixed in an answer, and answers that were rejected on the
    way (e.g. landmarks rejected, so smart mode used the grid prompt).
    """

    density: np.ndarray
    provider: str
    branch: str
    grid_size: int | None = None
    repairs: list[str] = field(default_factory=list)
    rejections: list[str] = field(default_factory=list)
    grid: np.ndarray | None = None
    landmarks: dict[str, tuple[float, float]] | None = None
    face_box: tuple[float, float, float, float] | None = None  # normalised x0, y0, x1, y1

    def __post_init__(self):
        if self.branch not in BRANCHES:
            raise ValueError(f"branch must be one of {BRANCHES}, got {self.branch!r}")

    def record(self) -> dict:
        """JSON-ready metadata (everything but the density itself)."""
        return {
            "provider": self.provider,
            "branch": self.branch,
            "grid_size": self.grid_size,
            "repairs": list(self.repairs),
            "rejections": list(self.rejections),
            "grid": None if self.grid is None else np.asarray(self.grid).tolist(),
            "landmarks": None
            if self.landmarks is None
            else {k: [float(v) for v in xy] for k, xy in self.landmarks.items()},
            "face_box": None if self.face_box is None else [float(v) for v in self.face_box],
        }


# ------------------------------------------------------------------------- basics


def normalise(density: np.ndarray) -> np.ndarray:
    """float32 copy scaled to mean 1; raises ValueError for negative, non-finite or zero maps."""
    density = np.asarray(density, dtype=np.float64)
    if density.ndim != 2 or density.size == 0:
        raise ValueError(f"density must be a non-empty 2-D array, got shape {density.shape}")
    if not np.isfinite(density).all():
        raise ValueError("density has NaN or infinite values")
    if (density < 0).any():
        raise ValueError("density has negative values")
    mean = density.mean()
    if mean <= 0:
        raise ValueError("density is zero everywhere")
    return (density / mean).astype(np.float32)


def uniform_density(size: int) -> np.ndarray:
    _check_size(size)
    return np.ones((size, size), dtype=np.float32)


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"density size must be a positive integer, got {size!r}")


def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: half-pixel-centre linear interpolation, edges clamped."""
    pos = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, n_in - 1)
    frac = pos - low
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), low] += 1 - frac
    weights[np.arange(n_out), high] += frac
    return weights


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: each output pixel averages the input it overlaps."""
    edges_in = np.arange(n_in + 1) / n_in
    edges_out = np.arange(n_out + 1) / n_out
    lo = np.maximum(edges_out[:-1, None], edges_in[None, :-1])
    hi = np.minimum(edges_out[1:, None], edges_in[None, 1:])
    overlap = np.clip(hi - lo, 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def _nearest_matrix(n_in: int, n_out: int) -> np.ndarray:
    index = np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(int), n_in - 1)
    weights = np.zeros((n_out, n_in))
    weights[np.arange(n_out), index] = 1
    return weights


def _axis_matrix(n_in: int, n_out: int, method: str) -> np.ndarray:
    if method == "nearest":
        return _nearest_matrix(n_in, n_out)
    return _bilinear_matrix(n_in, n_out) if n_out >= n_in else _area_matrix(n_in, n_out)


def resample(array: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """A 2-D array resampled to (size, size), per axis as described in the module docstring."""
    _check_size(size)
    if method not in RESAMPLE_METHODS:
        raise ValueError(f"resample method must be one of {RESAMPLE_METHODS}, got {method!r}")
    array = np.asarray(array, dtype=np.float64)
    rows = _axis_matrix(array.shape[0], size, method)
    cols = _axis_matrix(array.shape[1], size, method)
    return rows @ array @ cols.T


# ------------------------------------------------------------------------- builders


def grid_density(values: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
    """A (size, size) mean-1 density from an n x n grid of non-negative importances."""
    return normalise(resample(normalise(values), size, method))


def _gaussian(xx, yy, centre, sigma_x, sigma_y) -> np.ndarray:
    return np.exp(-0.5 * (((xx - centre[0]) / sigma_x) ** 2 + ((yy - centre[1]) / sigma_y) ** 2))


def landmark_density(
    landmarks: dict[str, tuple[float, float]], size: int, floor: float = LANDMARK_FLOOR
) -> np.ndarray:
    """Gaussian blobs around normalised landmarks (eyes tightest), over a floor; mean 1."""
    _check_size(size)
    missing = [name for name in LANDMARKS if name not in landmarks]
    if missing:
        raise ValueError(f"landmarks missing: {missing}")
    points = {name: np.asarray(landmarks[name], dtype=np.float64) for name in LANDMARKS}
    iod = max(float(np.linalg.norm(points["left_eye"] - points["right_eye"])), MIN_IOD)
    centres = (np.arange(size) + 0.5) / size
    xx, yy = np.meshgrid(centres, centres)
    face_centre = np.mean([points[name] for name in LANDMARKS], axis=0)
    peak = FACE_AMPLITUDE * _gaussian(xx, yy, face_centre, FACE_SIGMA[0] * iod, FACE_SIGMA[1] * iod)
    for name in LANDMARKS:
        sigma = (EYE_SIGMA if name.endswith("eye") else FEATURE_SIGMA) * iod
        peak = np.maximum(peak, AMPLITUDE[name] * _gaussian(xx, yy, points[name], sigma, sigma))
    return normalise(floor * peak.max() + peak)


def saliency_density(saliency: np.ndarray, size: int, floor: float = SALIENCY_FLOOR) -> np.ndarray:
    """A non-negative saliency map resampled to (size, size), peak 1 over `floor`; mean 1."""
    resampled = np.clip(resample(saliency, size), 0, None)
    top = resampled.max()
    if not np.isfinite(top) or top <= 0:
        return uniform_density(size)
    return normalise(floor + resampled / top)


# ------------------------------------------------------------------------- levels


def importance_levels(density: np.ndarray) -> np.ndarray:
    """uint8 level index per pixel into LEVELS, by fraction of the maximum.

    A flat map (max within 0.1 % of min) is all "medium": it says nothing about importance.
    """
    density = np.asarray(density, dtype=np.float64)
    top, bottom = density.max(), density.min()
    if top <= 0 or top - bottom <= 1e-3 * top:
        return np.full(density.shape, LEVELS.index("medium"), dtype=np.uint8)
    return np.digitize(density / top, LEVEL_THRESHOLDS).astype(np.uint8)
