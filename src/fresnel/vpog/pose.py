"""6D pose from 2D-3D correspondences (PnP inside RANSAC) and the errors that compare two poses.

VPOG predicts, for pixels of the query image, the object point they show; the pose follows from
those 2D-3D matches, a fraction of which are wrong, hence RANSAC. OpenCV does the solving: EPnP
on minimal samples inside RANSAC, then Levenberg-Marquardt on the inliers.

Conventions: a pose (R, t) maps object into camera coordinates, X_cam = R X_obj + t, with OpenCV
camera axes (x right, y down, z forward) and a pinhole K (3, 3) without lens distortion. Pixel
coordinates are (x, y) = (column, row). Everything is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# EPnP needs 4 points and OpenCV's RANSAC draws samples of 5 when it is not P3P; with fewer than
# 6 correspondences no point is left over to vote for or against a hypothesis.
MIN_CORRESPONDENCES = 6
DEFAULT_REPROJECTION_ERROR_PX = 2.0
DEFAULT_ITERATIONS = 1000
DEFAULT_CONFIDENCE = 0.999
_MIN_INLIERS_TO_REFINE = 4


@dataclass(frozen=True)
class PoseEstimate:
    """A pose (X_cam = R X_obj + t) and which correspondences agree with it."""

    R: np.ndarray  # (3, 3) float64
    t: np.ndarray  # (3,) float64
    inliers: np.ndarray  # (N,) bool: reprojection error within the threshold, in front of camera
    success: bool


def solve_pnp_ransac(
    points_3d: np.ndarray,
    points_2d: np.ndarray,
    K: np.ndarray,
    reprojection_error: float = DEFAULT_REPROJECTION_ERROR_PX,
    iterations: int = DEFAULT_ITERATIONS,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int = 0,
) -> PoseEstimate:
    """Object-to-camera pose from N >= 6 correspondences, robust to outliers.

    points_3d (N, 3) in object coordinates, points_2d (N, 2) in pixels, K (3, 3).
    `reprojection_error` is the RANSAC inlier threshold in pixels. The result is deterministic for
    a given `seed` (OpenCV's RNG is seeded before the call). On failure, `success` is False,
    R is the identity, t is zero and no point is an inlier.
    """
    import cv2  # lazily: importing this module must not need OpenCV

    points_3d, points_2d, K = _checked_correspondences(points_3d, points_2d, K)
    cv2.setRNGSeed(int(seed))
    found, rvec, tvec, inlier_ids = cv2.solvePnPRansac(
        points_3d,
        points_2d,
        K,
        None,
        iterationsCount=int(iterations),
        reprojectionError=float(reprojection_error),
        confidence=float(confidence),
        flags=cv2.SOLVEPNP_EPNP,
    )
    if not found or inlier_ids is None or len(inlier_ids) < _MIN_INLIERS_TO_REFINE:
        return _failed_estimate(len(points_3d))

    inlier_ids = inlier_ids.reshape(-1)
    rvec, tvec = cv2.solvePnPRefineLM(
        points_3d[inlier_ids], points_2d[inlier_ids], K, None, rvec, tvec
    )
    R = cv2.Rodrigues(rvec)[0].astype(np.float64)
    t = tvec.reshape(3).astype(np.float64)
    # Re-scored with the refined pose, so the mask agrees with the pose that is returned.
    inliers = _reprojection_inliers(points_3d, points_2d, K, R, t, reprojection_error)
    success = bool(np.all(np.isfinite(R)) and np.all(np.isfinite(t)) and inliers.any())
    return PoseEstimate(R=R, t=t, inliers=inliers, success=success)


def rotation_error_deg(R_est: np.ndarray, R_gt: np.ndarray) -> float:
    """Angle in degrees of the rotation R_est R_gt^T that takes one rotation to the other."""
    delta = np.asarray(R_est, dtype=np.float64) @ np.asarray(R_gt, dtype=np.float64).T
    # atan2 of (sin, cos) stays accurate near 0 and 180 degrees, where arccos of the trace is not.
    axis_times_sin = 0.5 * np.array(
        [delta[2, 1] - delta[1, 2], delta[0, 2] - delta[2, 0], delta[1, 0] - delta[0, 1]]
    )
    cos_angle = 0.5 * (np.trace(delta) - 1.0)
    return math.degrees(math.atan2(float(np.linalg.norm(axis_times_sin)), float(cos_angle)))


def translation_error(t_est: np.ndarray, t_gt: np.ndarray) -> float:
    """Euclidean distance between two translations, in their unit."""
    return float(
        np.linalg.norm(
            np.asarray(t_est, dtype=np.float64).reshape(3)
            - np.asarray(t_gt, dtype=np.float64).reshape(3)
        )
    )


def _checked_correspondences(
    points_3d: np.ndarray, points_2d: np.ndarray, K: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    points_3d = np.ascontiguousarray(points_3d, dtype=np.float64)
    points_2d = np.ascontiguousarray(points_2d, dtype=np.float64)
    K = np.ascontiguousarray(K, dtype=np.float64)
    if points_3d.ndim != 2 or points_3d.shape[1] != 3:
        raise ValueError(f"points_3d must have shape (N, 3), got {points_3d.shape}")
    if points_2d.ndim != 2 or points_2d.shape[1] != 2:
        raise ValueError(f"points_2d must have shape (N, 2), got {points_2d.shape}")
    if len(points_3d) != len(points_2d):
        raise ValueError(
            f"{len(points_3d)} 3D points but {len(points_2d)} 2D points: they must correspond"
        )
    if K.shape != (3, 3):
        raise ValueError(f"K must have shape (3, 3), got {K.shape}")
    if len(points_3d) < MIN_CORRESPONDENCES:
        raise ValueError(
            f"PnP-RANSAC needs at least {MIN_CORRESPONDENCES} correspondences, got {len(points_3d)}"
        )
    return points_3d, points_2d, K


def _reprojection_inliers(
    points_3d: np.ndarray,
    points_2d: np.ndarray,
    K: np.ndarray,
    R: np.ndarray,
    t: np.ndarray,
    threshold_px: float,
) -> np.ndarray:
    camera_points = points_3d @ R.T + t
    depth = camera_points[:, 2]
    in_front = depth > 0
    projected = camera_points @ K.T
    with np.errstate(divide="ignore", invalid="ignore"):
        pixels = projected[:, :2] / projected[:, 2:3]
    errors = np.linalg.norm(pixels - points_2d, axis=1)
    return in_front & (errors <= threshold_px)


def _failed_estimate(count: int) -> PoseEstimate:
    return PoseEstimate(
        R=np.eye(3), t=np.zeros(3), inliers=np.zeros(count, dtype=bool), success=False
    )
