"""BOP 2019+ pose errors (VSD, MSSD, MSPD) and their average recalls, for scoring VPOG.

The BOP score of a method is AR = (AR_VSD + AR_MSSD + AR_MSPD) / 3, each AR being a recall
averaged over a set of correctness thresholds (Hodan et al., BOP, ECCV 2018 and the BOP Challenge
2019 rules). Definitions and constants follow thodan/bop_toolkit: `pose_error.py` (errors),
`visibility.py` (VSD visibility masks), `misc.py` (symmetries, depth to distance),
`scripts/eval_bop19_pose.py` (thresholds), `scripts/eval_calc_scores.py` (normalisation) and
`pose_matching.py` (an estimate is correct when its error is *strictly* below the threshold).

Conventions: a pose (R, t) maps object into camera coordinates, X_cam = R X_obj + t, OpenCV camera
axes, pinhole K (3, 3). Lengths (model points, t, depth maps, diameter, VSD delta) share one unit;
the default delta assumes millimetres, as in BOP.

Symmetries are lists of (R_s, t_s) with R_s X + t_s mapping the model onto itself; a list holds the
identity, as the builders below return. BOP discretises a continuous symmetry so that the vertex
farthest from the axis moves at most `max_sym_disc_step` x diameter between consecutive rotations:
a full turn moves it at most pi x diameter, hence ceil(pi / max_sym_disc_step) rotations (315 for
the BOP value 0.01), see `continuous_symmetries`.

Not covered here: matching several estimates to several ground-truth instances of an image
(bop_toolkit's greedy matching by score); the recall functions take one error per target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Symmetry = tuple[np.ndarray, np.ndarray]  # (R_s (3, 3), t_s (3,)) in object coordinates


def _arange(start: float, stop: float, step: float) -> tuple[float, ...]:
    """np.arange's values as eval_bop19_pose.py builds its thresholds: not exact decimals
    (0.15000000000000002, 0.35000000000000003), which decides errors on a boundary."""
    return tuple(float(x) for x in np.arange(start, stop, step))


# scripts/eval_bop19_pose.py, p["errors"]: vsd_deltas (15 for every dataset except ITODD: 5).
VSD_DELTA_MM = 15.0
# Same place: vsd_taus = np.arange(0.05, 0.51, 0.05) with vsd_normalized_by_diameter = True.
VSD_TAUS = _arange(0.05, 0.51, 0.05)
# Same place, VSD correct_th: thresholds theta on the VSD error itself (a fraction of pixels).
VSD_THETAS = _arange(0.05, 0.51, 0.05)
# Same place, MSSD correct_th; eval_calc_scores.py divides MSSD by the object diameter.
MSSD_THRESHOLDS = _arange(0.05, 0.51, 0.05)
# Same place, MSPD correct_th = np.arange(5, 51, 5) pixels; eval_calc_scores.py multiplies MSPD by
# 640 / image_width, i.e. each threshold r is r * image_width / 640 pixels.
MSPD_THRESHOLDS_PX = _arange(5, 51, 5)
MSPD_REFERENCE_WIDTH_PX = 640.0
# Same place, p["max_sym_disc_step"]; used by misc.get_symmetry_transformations.
MAX_SYM_DISC_STEP = 0.01
MM = 0.001  # metres per millimetre: BOP's models, poses and symmetries are in mm

_Z_AXIS = (0.0, 0.0, 1.0)
_ORIGIN = (0.0, 0.0, 0.0)


# --- symmetries -----------------------------------------------------------------------------


def identity_symmetry() -> Symmetry:
    """The identity transformation, the first member of every symmetry list."""
    return np.eye(3), np.zeros(3)


def n_fold_symmetries(
    n: int, axis: Sequence[float] = _Z_AXIS, offset: Sequence[float] = _ORIGIN
) -> list[Symmetry]:
    """Rotations by 2 pi k / n, k = 0..n-1 (k = 0: identity), about `axis` through `offset`."""
    if n < 1:
        raise ValueError(f"an n-fold symmetry needs n >= 1, got {n}")
    return [_rotation_about(axis, offset, 2.0 * math.pi * k / n) for k in range(n)]


def continuous_symmetries(
    axis: Sequence[float] = _Z_AXIS,
    offset: Sequence[float] = _ORIGIN,
    max_sym_disc_step: float = MAX_SYM_DISC_STEP,
) -> list[Symmetry]:
    """A continuous rotational symmetry about `axis` through `offset`, discretised as BOP does.

    ceil(pi / max_sym_disc_step) equal steps over a full turn (see the module docstring).
    """
    if max_sym_disc_step <= 0:
        raise ValueError(f"max_sym_disc_step must be positive, got {max_sym_disc_step}")
    return n_fold_symmetries(math.ceil(math.pi / max_sym_disc_step), axis, offset)


def symmetry_transformations(
    discrete: Sequence[np.ndarray | Sequence[float]] = (),
    continuous: Sequence[tuple[Sequence[float], Sequence[float]]] = (),
    max_sym_disc_step: float = MAX_SYM_DISC_STEP,
) -> list[Symmetry]:
    """All symmetry transformations of a model, as in BOP's models_info.json.

    `discrete`: 4x4 transforms (or their 16 row-major numbers, "symmetries_discrete");
    `continuous`: (axis, offset) pairs ("symmetries_continuous"). The identity is always included;
    every discrete transform is composed with every step of every continuous symmetry.
    """
    discrete_list = [identity_symmetry()] + [_symmetry_from_matrix(m) for m in discrete]
    continuous_list = [
        sym
        for axis, offset in continuous
        for sym in continuous_symmetries(axis, offset, max_sym_disc_step)
    ]
    if not continuous_list:
        return discrete_list
    return [
        (R_c @ R_d, R_c @ t_d + t_c) for R_d, t_d in discrete_list for R_c, t_c in continuous_list
    ]


def symmetries_from_models_info(entry: Mapping) -> list[Symmetry]:
    """The symmetry transformations of one object's entry of BOP's `models_info.json`:
    "symmetries_discrete" (4x4 row-major lists) and "symmetries_continuous" ({"axis",
    "offset"}), translations and offsets in the model's unit (BOP: millimetres)."""
    continuous = [(sym["axis"], sym["offset"]) for sym in entry.get("symmetries_continuous", ())]
    return symmetry_transformations(entry.get("symmetries_discrete", ()), continuous)


def move_models_info_symmetries(
    entry: Mapping, scale: float, shift: Sequence[float] = _ORIGIN
) -> dict | None:
    """The symmetry keys of a `models_info.json` entry for the model moved into the frame
    Y = scale X - shift (a mesh loaded scaled and centred): X -> R X + t becomes
    Y -> R Y + (R shift + scale t - shift); an axis keeps its direction, its offset moves.
    None when the entry declares no symmetry."""
    if not entry.get("symmetries_discrete") and not entry.get("symmetries_continuous"):
        return None
    shift = np.asarray(shift, dtype=np.float64).reshape(3)
    discrete = []
    for matrix in entry.get("symmetries_discrete", ()):
        R, t = _symmetry_from_matrix(matrix)
        moved = np.eye(4)
        moved[:3, :3], moved[:3, 3] = R, R @ shift + scale * t - shift
        discrete.append(moved.reshape(-1).tolist())
    continuous = [
        {"axis": list(sym["axis"]), "offset": (scale * np.asarray(sym["offset"]) - shift).tolist()}
        for sym in entry.get("symmetries_continuous", ())
    ]
    return {"symmetries_discrete": discrete, "symmetries_continuous": continuous}


# --- pose errors ----------------------------------------------------------------------------


def mssd(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    model_points: np.ndarray,
    symmetries: Sequence[Symmetry] | None = None,
) -> float:
    """Maximum Symmetry-aware Surface Distance, in the unit of the model points.

    min over symmetries S of max over vertices x of |T_e x - T_g S x|. None = no symmetry.
    """
    points = _points(model_points)
    estimated = _transform(points, R_e, t_e)
    return min(
        float(np.linalg.norm(estimated - _transform(points, R, t), axis=1).max())
        for R, t in _symmetric_gt_poses(R_g, t_g, symmetries)
    )


def mspd(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    K: np.ndarray,
    model_points: np.ndarray,
    symmetries: Sequence[Symmetry] | None = None,
) -> float:
    """Maximum Symmetry-aware Projection Distance in pixels (not yet scaled by image width).

    min over symmetries S of max over vertices x of |proj(T_e x) - proj(T_g S x)|.
    """
    points = _points(model_points)
    K = np.asarray(K, dtype=np.float64)
    estimated = _project(_transform(points, R_e, t_e), K)
    return min(
        float(np.linalg.norm(estimated - _project(_transform(points, R, t), K), axis=1).max())
        for R, t in _symmetric_gt_poses(R_g, t_g, symmetries)
    )


def vsd(
    depth_est: np.ndarray,
    depth_gt: np.ndarray,
    depth_test: np.ndarray,
    K: np.ndarray,
    delta: float = VSD_DELTA_MM,
    taus: Sequence[float] = VSD_TAUS,
    normalized_by_diameter: bool = True,
    diameter: float | None = None,
    cost_type: str = "step",
) -> list[float]:
    """Visible Surface Discrepancy, one error in [0, 1] per tau (BOP 2019 "bop19" visibility).

    The caller renders the model: depth_est and depth_gt (H, W) are depth maps (z, 0 = no surface)
    of the model alone in the estimated and the ground-truth pose; depth_test (H, W) is the test
    image's depth (0 = missing, counted as visible as in BOP 2019). Depths are turned into
    distances from the camera centre before comparison. `delta` is the visibility tolerance
    (same unit as depth); `taus` are misalignment tolerances, fractions of `diameter` when
    `normalized_by_diameter`. `cost_type` "step" (BOP) or "tlinear" (ECCVW'16).
    """
    if normalized_by_diameter and (diameter is None or diameter <= 0):
        raise ValueError("vsd normalized_by_diameter needs a positive diameter")
    if cost_type not in ("step", "tlinear"):
        raise ValueError(f"unknown VSD cost_type {cost_type!r}: expected 'step' or 'tlinear'")
    dist_est, dist_gt, dist_test = _distance_maps((depth_est, depth_gt, depth_test), K)

    visible_gt = _visible(dist_test, dist_gt, delta)
    # The estimate is also visible wherever it covers the visible ground truth (ECCVW'16, eq. 14):
    # an occluder in the test image must not hide an estimate that sits where the object is.
    visible_est = _visible(dist_test, dist_est, delta) | (visible_gt & (dist_est > 0))
    both = visible_gt & visible_est
    union_count = int((visible_gt | visible_est).sum())
    if union_count == 0:
        return [1.0] * len(taus)

    only_one_count = union_count - int(both.sum())
    distances = np.abs(dist_gt[both] - dist_est[both])
    if normalized_by_diameter:
        distances = distances / diameter
    return [
        float((_matching_cost(distances, tau, cost_type).sum() + only_one_count) / union_count)
        for tau in taus
    ]


# --- recalls and the BOP score --------------------------------------------------------------


def average_recall(errors: Sequence[float] | np.ndarray, thresholds: Sequence[float]) -> float:
    """Fraction of errors strictly below each threshold, averaged over the thresholds.

    One error per target; pass math.inf for a target without an estimate.
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    if errors.size == 0:
        raise ValueError("average_recall needs at least one error")
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    return float(np.mean(errors[:, None] < thresholds[None, :]))


def ar_vsd(
    errors_per_tau: Sequence[Sequence[float]] | np.ndarray,
    thetas: Sequence[float] = VSD_THETAS,
) -> float:
    """AR_VSD: recall averaged over every (tau, theta) pair, as eval_bop19_pose.py does.

    errors_per_tau: (T,) for one target or (M, T) for M targets, one column per tau.
    """
    errors = np.atleast_2d(np.asarray(errors_per_tau, dtype=np.float64))
    return average_recall(errors.reshape(-1), thetas)


def ar_mssd(
    errors: Sequence[float] | np.ndarray,
    diameters: float | Sequence[float] | np.ndarray,
    thresholds: Sequence[float] = MSSD_THRESHOLDS,
) -> float:
    """AR_MSSD: MSSD divided by each target's object diameter against `thresholds`."""
    normalized = np.asarray(errors, dtype=np.float64) / np.asarray(diameters, dtype=np.float64)
    return average_recall(normalized, thresholds)


def ar_mspd(
    errors_px: Sequence[float] | np.ndarray,
    image_widths: float | Sequence[float] | np.ndarray,
    thresholds_px: Sequence[float] = MSPD_THRESHOLDS_PX,
) -> float:
    """AR_MSPD: each threshold r applies as r * image_width / 640 pixels."""
    widths = np.asarray(image_widths, dtype=np.float64)
    normalized = np.asarray(errors_px, dtype=np.float64) * (MSPD_REFERENCE_WIDTH_PX / widths)
    return average_recall(normalized, thresholds_px)


def bop_ar(ar_vsd: float, ar_mssd: float, ar_mspd: float) -> float:
    """The BOP 2019+ average recall: the mean of the three."""
    return (ar_vsd + ar_mssd + ar_mspd) / 3.0


@dataclass(frozen=True)
class PoseScores:
    """Errors of one pose estimate and the BOP average recalls they give."""

    vsd_errors: list[float]  # one per VSD_TAUS entry
    mssd: float  # model units
    mspd: float  # pixels
    ar_vsd: float
    ar_mssd: float
    ar_mspd: float
    ar: float


def score_pose(
    R_e: np.ndarray,
    t_e: np.ndarray,
    R_g: np.ndarray,
    t_g: np.ndarray,
    K: np.ndarray,
    model_points: np.ndarray,
    diameter: float,
    depth_est: np.ndarray,
    depth_gt: np.ndarray,
    depth_test: np.ndarray,
    symmetries: Sequence[Symmetry] | None = None,
    delta: float = VSD_DELTA_MM,
    image_width: float | None = None,
) -> PoseScores:
    """All BOP errors and ARs of one estimate of one target, with the BOP 2019 thresholds.

    depth_est / depth_gt: the model rendered in the estimated / ground-truth pose (see `vsd`).
    image_width defaults to the width of depth_test.
    """
    width = depth_test.shape[1] if image_width is None else image_width
    vsd_errors = vsd(depth_est, depth_gt, depth_test, K, delta=delta, diameter=diameter)
    mssd_error = mssd(R_e, t_e, R_g, t_g, model_points, symmetries)
    mspd_error = mspd(R_e, t_e, R_g, t_g, K, model_points, symmetries)
    recalls = (ar_vsd(vsd_errors), ar_mssd([mssd_error], diameter), ar_mspd([mspd_error], width))
    return PoseScores(vsd_errors, mssd_error, mspd_error, *recalls, ar=bop_ar(*recalls))


# --- helpers --------------------------------------------------------------------------------


def _rotation_about(axis: Sequence[float], offset: Sequence[float], angle: float) -> Symmetry:
    """Rotation by `angle` about the line through `offset` along `axis` (Rodrigues)."""
    u = np.asarray(axis, dtype=np.float64)
    norm = np.linalg.norm(u)
    if norm == 0:
        raise ValueError("a symmetry axis must be non-zero")
    u = u / norm
    cross = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    R = math.cos(angle) * np.eye(3) + math.sin(angle) * cross
    R += (1.0 - math.cos(angle)) * np.outer(u, u)
    c = np.asarray(offset, dtype=np.float64).reshape(3)
    return R, c - R @ c


def _symmetry_from_matrix(matrix: np.ndarray | Sequence[float]) -> Symmetry:
    m = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
    return m[:3, :3].copy(), m[:3, 3].copy()


def _symmetric_gt_poses(
    R_g: np.ndarray, t_g: np.ndarray, symmetries: Sequence[Symmetry] | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ground-truth poses T_g S, equivalent to T_g for a symmetric object."""
    R_g = np.asarray(R_g, dtype=np.float64)
    t_g = np.asarray(t_g, dtype=np.float64).reshape(3)
    symmetries = [identity_symmetry()] if symmetries is None else symmetries
    if len(symmetries) == 0:
        raise ValueError("symmetries must hold at least the identity (or be None)")
    return [
        (R_g @ np.asarray(R_s, np.float64), R_g @ np.asarray(t_s, np.float64).reshape(3) + t_g)
        for R_s, t_s in symmetries
    ]


def _points(model_points: np.ndarray) -> np.ndarray:
    points = np.asarray(model_points, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or len(points) == 0:
        raise ValueError(f"model_points must have shape (N, 3) with N > 0, got {points.shape}")
    return points


def _transform(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    return points @ R.T + np.asarray(t, dtype=np.float64).reshape(3)


def _project(camera_points: np.ndarray, K: np.ndarray) -> np.ndarray:
    homogeneous = camera_points @ K.T
    return homogeneous[:, :2] / homogeneous[:, 2:3]


def _distance_maps(depths: Sequence[np.ndarray], K: np.ndarray) -> list[np.ndarray]:
    """Depth (z) maps -> distance-from-camera-centre maps. Pixel centres at +0.5, the
    convention of fresnel.render and the VPOG renderer (bop_toolkit puts them at integers)."""
    depths = [np.asarray(d, dtype=np.float64) for d in depths]
    shape = depths[0].shape
    if len(shape) != 2 or any(d.shape != shape for d in depths):
        raise ValueError(f"depth maps must be 2D with one shape, got {[d.shape for d in depths]}")
    K = np.asarray(K, dtype=np.float64)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5
    scale = np.sqrt(((cols - K[0, 2]) / K[0, 0]) ** 2 + ((rows - K[1, 2]) / K[1, 1]) ** 2 + 1.0)
    return [d * scale for d in depths]


def _visible(dist_test: np.ndarray, dist_model: np.ndarray, delta: float) -> np.ndarray:
    """Model surface not behind the test surface by more than delta; missing test depth = seen."""
    return (dist_model > 0) & ((dist_model - dist_test <= delta) | (dist_test == 0))


def _matching_cost(distances: np.ndarray, tau: float, cost_type: str) -> np.ndarray:
    if cost_type == "step":
        return (distances >= tau).astype(np.float64)
    return np.minimum(distances / tau, 1.0)
