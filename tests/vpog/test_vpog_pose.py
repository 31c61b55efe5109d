"""PnP-RANSAC pose recovery and the rotation / translation errors (fresnel.vpog.pose)."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest

from fresnel.vpog.pose import (
    MIN_CORRESPONDENCES,
    rotation_error_deg,
    solve_pnp_ransac,
    translation_error,
)

K = np.array([[600.0, 0.0, 320.0], [0.0, 600.0, 240.0], [0.0, 0.0, 1.0]])
IMAGE_SIZE = (640, 480)


def rotation(axis, angle: float) -> np.ndarray:
    u = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def project(points: np.ndarray, R: np.ndarray, t: np.ndarray) -> np.ndarray:
    camera = points @ R.T + t
    pixels = camera @ K.T
    return pixels[:, :2] / pixels[:, 2:3]


@pytest.fixture
def scene():
    """200 object points, a known pose, exact pixels, and 30% of them replaced by random pixels."""
    rng = np.random.default_rng(7)
    points = rng.uniform(-60.0, 60.0, size=(200, 3))
    R = rotation([0.3, -1.0, 0.5], 2.1)
    t = np.array([15.0, -25.0, 600.0])
    pixels = project(points, R, t)
    outliers = rng.choice(len(points), size=60, replace=False)
    pixels[outliers] = rng.uniform((0, 0), IMAGE_SIZE, size=(60, 2))
    true_inliers = np.ones(len(points), dtype=bool)
    true_inliers[outliers] = False
    return points, pixels, R, t, true_inliers


def test_recovers_pose_and_inliers_despite_outliers(scene):
    points, pixels, R, t, true_inliers = scene
    estimate = solve_pnp_ransac(points, pixels, K)

    assert estimate.success
    assert estimate.R.dtype == np.float64 and estimate.t.shape == (3,)
    assert rotation_error_deg(estimate.R, R) < 0.1
    assert translation_error(estimate.t, t) < 1e-3
    recall = (estimate.inliers & true_inliers).sum() / true_inliers.sum()
    assert recall >= 0.95
    # A random pixel lands within 2 px of its true projection only by chance.
    assert (estimate.inliers & ~true_inliers).sum() <= 2


def test_is_deterministic_for_a_seed(scene):
    points, pixels, *_ = scene
    first = solve_pnp_ransac(points, pixels, K, seed=3)
    second = solve_pnp_ransac(points, pixels, K, seed=3)
    np.testing.assert_array_equal(first.R, second.R)
    np.testing.assert_array_equal(first.t, second.t)
    np.testing.assert_array_equal(first.inliers, second.inliers)


def test_too_few_correspondences_names_the_count():
    points = np.zeros((MIN_CORRESPONDENCES - 1, 3))
    pixels = np.zeros((MIN_CORRESPONDENCES - 1, 2))
    with pytest.raises(ValueError, match=rf"at least {MIN_CORRESPONDENCES}.*got 5"):
        solve_pnp_ransac(points, pixels, K)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="correspond"):
        solve_pnp_ransac(np.zeros((8, 3)), np.zeros((7, 2)), K)
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        solve_pnp_ransac(np.zeros((8, 3)), np.zeros((8, 3)), K)


@pytest.mark.parametrize("angle_deg", [0.0, 1e-4, 30.0, 90.0, 179.99, 180.0])
def test_rotation_error_is_the_relative_angle(angle_deg):
    base = rotation([1.0, 2.0, 3.0], 0.7)
    rotated = rotation([0.0, 1.0, -1.0], math.radians(angle_deg)) @ base
    assert rotation_error_deg(rotated, base) == pytest.approx(angle_deg, abs=1e-9)


def test_translation_error_is_euclidean():
    assert translation_error([3.0, 4.0, 10.0], [0.0, 0.0, 10.0]) == pytest.approx(5.0)


def test_importing_the_module_does_not_import_opencv():
    code = "import sys, fresnel.vpog.pose; assert 'cv2' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
