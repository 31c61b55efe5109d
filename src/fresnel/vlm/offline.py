"""The offline density provider: no server, no weights beyond what scikit-image ships.

Chosen explicitly (provider "offline"); never a fallback for a failing VLM.

Face branch ("offline:lbp-face", branch "smart-face"):

1. Detection: scikit-image's LBP frontal-face cascade (``Cascade.detect_multi_scale``) on
   the grey image resized so its shorter side is 518 px (the matte stage's size), scale
   factor 1.1, exhaustive step, windows from 1/12 of the side up to the side, and at least
   8 overlapping raw detections per face (fewer gave false faces on scikit-image's cat,
   camera, retina and microscopy samples; 8 kept the astronaut's face and dropped those).
   The largest merged detection is the face.
2. Landmarks are NOT detected by a landmark model. Eyes: the darkest point of the grey image
   (Gaussian-smoothed, sigma 2.5 % of the box) in a window around face-proportion priors
   (x = 0.30 / 0.70, y = 0.30-0.50 of the box); if the two results are implausible
   (distance outside 0.25-0.65 box widths, or tilted more than 30 degrees) the priors are
   used. Nose and mouth: 0.62 and 1.12 inter-ocular distances below the eye midpoint, along
   the perpendicular of the eye line (average face proportions); the mouth is then moved
   within +-0.25 IOD to the line of strongest horizontal edges (the lips). On
   skimage.data.astronaut() this lands within ~4 px of the eyes and ~1 px of the mouth
   that were located by eye (tests/test_vlm_density.py).
3. The density is ``density.landmark_density`` (the same blob builder as VLM smart mode).

No face ("offline:saliency", branch "saliency"): multi-scale centre-surround colour contrast
(Itti-style) on the image resized to 64 x 64 and converted to CIE Lab: for (centre, surround)
Gaussian sigmas (1, 4), (2, 8), (4, 16) px, the Euclidean Lab distance between the two blurs,
each scale scaled to peak 1, summed, blurred (sigma 1.5) and scaled to peak 1; then
``density.saliency_density``. On scikit-image's samples it marks the cat's eyes and nose,
the coffee cup and the launch-pad lights. Spectral-residual saliency was tried first and
dropped: its FFT wrap-around lit up image borders and corners, and it failed on a plain
synthetic patch.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image
from scipy import ndimage

from fresnel.vlm.density import DensityResult, landmark_density, saliency_density

FACE_PROVIDER = "offline:lbp-face"
SALIENCY_PROVIDER = "offline:saliency"
DETECT_SIDE = 518
MIN_NEIGHBORS = 8
SALIENCY_SIDE = 64
SALIENCY_SCALES = ((1, 4), (2, 8), (4, 16))  # (centre, surround) sigmas at SALIENCY_SIDE px
EYE_PRIORS = ((0.30, 0.38), (0.70, 0.38))  # (x, y) as fractions of the face box
EYE_WINDOW = (0.13, 0.30, 0.50)  # half-width, top, bottom (fractions of the box)
NOSE_DROP, MOUTH_DROP = 0.62, 1.12  # below the eye midpoint, in inter-ocular distances

Box = tuple[float, float, float, float]  # x0, y0, width, height in pixels


@functools.lru_cache(maxsize=1)
def _cascade():
    from skimage import data
    from skimage.feature import Cascade

    return Cascade(data.lbp_frontal_face_cascade_filename())


def to_grey(image: Image.Image | np.ndarray) -> np.ndarray:
    """float64 grey image in [0, 1] from a PIL image or an (H, W[, 3]) uint8 array."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim == 3:
        array = array[..., :3] @ np.array([0.2125, 0.7154, 0.0721])  # skimage's rgb2gray
    scale = 255.0 if array.dtype == np.uint8 or array.max() > 1 else 1.0
    return np.asarray(array, dtype=np.float64) / scale


def _resize(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from skimage.transform import resize

    return resize(grey, shape, anti_aliasing=shape[0] < grey.shape[0], preserve_range=True)


def detect_face(grey: np.ndarray) -> Box | None:
    """The largest frontal face as (x0, y0, w, h) in `grey`'s pixels, or None."""
    height, width = grey.shape
    scale = DETECT_SIDE / min(height, width)
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    work = _resize(grey, shape)
    side = min(shape)
    found = _cascade().detect_multi_scale(
        img=work,
        scale_factor=1.1,
        step_ratio=1,
        min_size=(side // 12, side // 12),
        max_size=(side, side),
        min_neighbor_number=MIN_NEIGHBORS,
    )
    if not found:
        return None
    best = max(found, key=lambda d: d["width"] * d["height"])
    return (
        best["c"] / scale,
        best["r"] / scale,
        best["width"] / scale,
        best["height"] / scale,
    )


def _darkest_near(smooth: np.ndarray, box: Box, prior_x: float) -> np.ndarray:
    x0, y0, w, h = box
    half, top, bottom = EYE_WINDOW
    xa = int(np.clip(x0 + (prior_x - half) * w, 0, smooth.shape[1] - 1))
    xb = int(np.clip(x0 + (prior_x + half) * w, xa + 1, smooth.shape[1]))
    ya = int(np.clip(y0 + top * h, 0, smooth.shape[0] - 1))
    yb = int(np.clip(y0 + bottom * h, ya + 1, smooth.shape[0]))
    window = smooth[ya:yb, xa:xb]
    row, col = np.unravel_index(np.argmin(window), window.shape)
    return np.array([xa + col, ya + row], dtype=np.float64)


def _plausible_eyes(left: np.ndarray, right: np.ndarray, width: float) -> bool:
    dx, dy = right - left
    distance = float(np.hypot(dx, dy))
    return 0.25 * width <= distance <= 0.65 * width and abs(dy) <= np.tan(np.radians(30)) * dx


def _mouth_on_lips(edges: np.ndarray, start: np.ndarray, down: np.ndarray, iod: float):
    """Move `start` along `down` (+-0.25 IOD) to the strongest horizontal-edge line."""
    across = np.array([down[1], -down[0]])
    offsets = np.linspace(-0.4, 0.4, 17) * iod
    best, best_energy = start, -1.0
    for shift in np.linspace(-0.25, 0.25, 26) * iod:
        centre = start + shift * down
        points = centre[None, :] + offsets[:, None] * across[None, :]
        energy = ndimage.map_coordinates(edges, [points[:, 1], points[:, 0]], order=1).mean()
        if energy > best_energy:
            best, best_energy = centre, energy
    return best


def locate_landmarks(grey: np.ndarray, box: Box) -> dict[str, tuple[float, float]]:
    """Pixel (x, y) of left_eye, right_eye, nose, mouth inside face `box` (see module doc)."""
    x0, y0, w, h = box
    smooth = ndimage.gaussian_filter(grey, max(0.5, 0.025 * w))
    left = _darkest_near(smooth, box, EYE_PRIORS[0][0])
    right = _darkest_near(smooth, box, EYE_PRIORS[1][0])
    if not _plausible_eyes(left, right, w):
        left = np.array([x0 + EYE_PRIORS[0][0] * w, y0 + EYE_PRIORS[0][1] * h])
        right = np.array([x0 + EYE_PRIORS[1][0] * w, y0 + EYE_PRIORS[1][1] * h])
    eye_line = right - left
    iod = float(np.hypot(*eye_line))
    down = np.array([-eye_line[1], eye_line[0]]) / iod
    middle = (left + right) / 2
    edges = np.abs(ndimage.sobel(smooth, axis=0))
    mouth = _mouth_on_lips(edges, middle + MOUTH_DROP * iod * down, down, iod)
    nose = middle + NOSE_DROP * iod * down
    points = {"left_eye": left, "right_eye": right, "nose": nose, "mouth": mouth}
    return {name: (float(p[0]), float(p[1])) for name, p in points.items()}


def centre_surround_saliency(rgb: np.ndarray, side: int = SALIENCY_SIDE) -> np.ndarray:
    """Multi-scale Lab centre-surround contrast of an RGB image as a (side, side) map, peak 1."""
    from skimage.color import rgb2lab

    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    scale = 255.0 if rgb.dtype == np.uint8 else 1.0
    lab = rgb2lab(np.clip(_resize(rgb[..., :3] / scale, (side, side)), 0, 1))
    saliency = np.zeros((side, side))
    for centre, surround in SALIENCY_SCALES:
        near = ndimage.gaussian_filter(lab, (centre, centre, 0))
        far = ndimage.gaussian_filter(lab, (surround, surround, 0))
        contrast = np.linalg.norm(near - far, axis=-1)
        if contrast.max() > 0:
            saliency += contrast / contrast.max()
    saliency = ndimage.gaussian_filter(saliency, 1.5)
    top = saliency.max()
    return saliency / top if top > 0 else np.ones_like(saliency)


def offline_density(image: Image.Image | np.ndarray, size: int) -> DensityResult:
    """A (size, size) density: face blobs if the cascade finds a face, else saliency."""
    rgb = np.asarray(image.convert("RGB")) if isinstance(image, Image.Image) else np.asarray(image)
    grey = to_grey(rgb)
    height, width = grey.shape
    box = detect_face(grey)
    if box is None:
        return DensityResult(
            saliency_density(centre_surround_saliency(rgb), size),
            provider=SALIENCY_PROVIDER,
            branch="saliency",
        )
    pixels = locate_landmarks(grey, box)
    landmarks = {name: (x / width, y / height) for name, (x, y) in pixels.items()}
    x0, y0, w, h = box
    return DensityResult(
        landmark_density(landmarks, size),
        provider=FACE_PROVIDER,
        branch="smart-face",
        landmarks=landmarks,
        face_box=(x0 / width, y0 / height, (x0 + w) / width, (y0 + h) / height),
    )
