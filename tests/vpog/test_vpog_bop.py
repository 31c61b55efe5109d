"""BOP 2019+ pose errors and average recalls with known answers (fresnel.vpog.bop)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fresnel.vpog.bop import (
    MAX_SYM_DISC_STEP,
    MSPD_THRESHOLDS_PX,
    MSSD_THRESHOLDS,
    VSD_DELTA_MM,
    VSD_TAUS,
    VSD_THETAS,
    ar_mspd,
    ar_mssd,
    ar_vsd,
    average_recall,
    bop_ar,
    continuous_symmetries,
    move_models_info_symmetries,
    mspd,
    mssd,
    n_fold_symmetries,
    score_pose,
    symmetries_from_models_info,
    symmetry_transformations,
    vsd,
)

K = np.array([[200.0, 0.0, 64.0], [0.0, 200.0, 48.0], [0.0, 0.0, 1.0]])
IMAGE_SHAPE = (96, 128)  # rows, columns
# eval_bop19_pose.py's np.arange(0.05, 0.51, 0.05): two of them lie just above the decimal
TENTHS = (0.05, 0.1, 0.15000000000000002, 0.2, 0.25, 0.3, 0.35000000000000003, 0.4, 0.45, 0.5)


def rotation(axis, angle: float) -> np.ndarray:
    u = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


R_GT = rotation([1.0, -2.0, 0.5], 0.9)
T_GT = np.array([20.0, -10.0, 800.0])


def box_points(size=(100.0, 60.0, 40.0)) -> np.ndarray:
    """A box's corners and face centres: 2-fold symmetric about z (and x, y), not 4-fold."""
    half = np.asarray(size) / 2
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)]) * half
    return np.vstack([corners, np.diag(half), -np.diag(half)])


def cylinder_points(radius=30.0, height=100.0, count=48) -> np.ndarray:
    angles = np.linspace(0, 2 * np.pi, count, endpoint=False)
    ring = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
    return np.vstack([np.column_stack([ring, np.full(count, z)]) for z in (0.0, height)])


def square_depth(t: np.ndarray, half_side=50.0) -> np.ndarray:
    """Depth map of a fronto-parallel square (object z = 0 plane, R = identity) at t."""
    rows, cols = np.mgrid[0 : IMAGE_SHAPE[0], 0 : IMAGE_SHAPE[1]]
    x = (cols - K[0, 2]) * t[2] / K[0, 0] - t[0]
    y = (rows - K[1, 2]) * t[2] / K[1, 1] - t[1]
    inside = (np.abs(x) <= half_side) & (np.abs(y) <= half_side)
    return np.where(inside, t[2], 0.0)


def square_points(half_side=50.0, count=11) -> np.ndarray:
    grid = np.linspace(-half_side, half_side, count)
    return np.array([[x, y, 0.0] for x in grid for y in grid])


# --- constants ------------------------------------------------------------------------------


def test_constants_are_the_bop19_ones():
    assert VSD_DELTA_MM == 15.0
    assert VSD_TAUS == VSD_THETAS == MSSD_THRESHOLDS == TENTHS
    assert tuple(float(r) for r in range(5, 51, 5)) == MSPD_THRESHOLDS_PX
    assert MAX_SYM_DISC_STEP == 0.01


# --- MSSD / MSPD ----------------------------------------------------------------------------


def test_mssd_of_a_pure_translation_is_its_length():
    offset = np.array([3.0, -4.0, 12.0])  # length 13
    error = mssd(R_GT, T_GT + offset, R_GT, T_GT, box_points())
    assert error == pytest.approx(13.0)


def test_mspd_of_an_image_plane_shift_is_the_pixel_shift():
    # All points at the same depth: moving by dx in camera x moves every projection fx dx / z.
    points = square_points()
    t_gt = np.array([0.0, 0.0, 1000.0])
    error = mspd(np.eye(3), t_gt + np.array([25.0, 0.0, 0.0]), np.eye(3), t_gt, K, points)
    assert error == pytest.approx(200.0 * 25.0 / 1000.0)


def test_two_fold_symmetric_box_at_its_symmetric_pose():
    points = box_points()
    R_e = R_GT @ rotation([0, 0, 1], math.pi)
    symmetries = n_fold_symmetries(2)

    assert mssd(R_e, T_GT, R_GT, T_GT, points, symmetries) == pytest.approx(0.0, abs=1e-9)
    assert mspd(R_e, T_GT, R_GT, T_GT, K, points, symmetries) == pytest.approx(0.0, abs=1e-9)
    assert mssd(R_e, T_GT, R_GT, T_GT, points) == pytest.approx(2 * math.hypot(50, 30))
    assert mspd(R_e, T_GT, R_GT, T_GT, K, points) > 5.0


def test_cylinder_with_a_continuous_symmetry():
    points = cylinder_points()
    diameter = math.hypot(60.0, 100.0)
    symmetries = continuous_symmetries()
    step = 2 * math.pi / len(symmetries)

    on_step = R_GT @ rotation([0, 0, 1], 37 * step)
    assert mssd(on_step, T_GT, R_GT, T_GT, points, symmetries) == pytest.approx(0.0, abs=1e-9)
    assert mspd(on_step, T_GT, R_GT, T_GT, K, points, symmetries) == pytest.approx(0.0, abs=1e-9)

    # Between steps the error is at most what the discretisation allows.
    off_step = R_GT @ rotation([0, 0, 1], 0.7)
    assert (
        0 < mssd(off_step, T_GT, R_GT, T_GT, points, symmetries) <= (MAX_SYM_DISC_STEP * diameter)
    )
    assert mssd(off_step, T_GT, R_GT, T_GT, points) > 10.0


def test_symmetry_discretisation_follows_bop():
    symmetries = continuous_symmetries(axis=(0, 0, 2), offset=(5.0, 0.0, 0.0))
    assert len(symmetries) == math.ceil(math.pi / 0.01) == 315
    for R, t in symmetries:
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
        # The axis line through the offset stays fixed.
        np.testing.assert_allclose(R @ [5.0, 0.0, 9.0] + t, [5.0, 0.0, 9.0], atol=1e-9)

    flip_x = np.diag([1.0, -1.0, -1.0, 1.0]).reshape(-1).tolist()
    combined = symmetry_transformations([flip_x], [((0, 0, 1), (0, 0, 0))])
    assert len(combined) == 2 * 315
    assert len(symmetry_transformations([flip_x])) == 2


def test_models_info_symmetries_are_read_and_moved_with_the_mesh():
    # A box off the origin, 2-fold about the vertical line through its centre, and a cylinder
    # (continuous about z through its axis), declared as in BOP's models_info.json (mm).
    centre = np.array([40.0, -25.0, 10.0])
    half_turn = np.eye(4)
    half_turn[:3, :3] = rotation([0, 0, 1], math.pi)
    half_turn[:3, 3] = centre - half_turn[:3, :3] @ centre
    entry = {"diameter": 124.9, "symmetries_discrete": [half_turn.reshape(-1).tolist()]}
    points = box_points() + centre
    for R, t in symmetries_from_models_info(entry):
        assert_same_point_set(points @ R.T + t, points)
    moved = move_models_info_symmetries(entry, 0.001, centre * 0.001)  # mm -> m, centred
    centred = box_points() * 0.001
    symmetries = symmetries_from_models_info(moved)
    assert len(symmetries) == 2
    for R, t in symmetries:
        assert_same_point_set(centred @ R.T + t, centred)

    cylinder = {"symmetries_continuous": [{"axis": [0, 0, 1], "offset": [40.0, -25.0, 0.0]}]}
    shifted = cylinder_points() + np.array([40.0, -25.0, 0.0])
    symmetries = symmetries_from_models_info(cylinder)
    assert len(symmetries) == 315
    R_e = R_GT @ symmetries[37][0]
    t_e = R_GT @ symmetries[37][1] + T_GT
    assert mssd(R_e, t_e, R_GT, T_GT, shifted, symmetries) == pytest.approx(0.0, abs=1e-9)
    assert mssd(R_e, t_e, R_GT, T_GT, shifted) > 10.0


def assert_same_point_set(a: np.ndarray, b: np.ndarray) -> None:
    distances = np.linalg.norm(a[:, None] - b[None], axis=-1)
    assert distances.min(1).max() < 1e-9


# --- VSD ------------------------------------------------------------------------------------


def plane(depth: float) -> np.ndarray:
    return np.full(IMAGE_SHAPE, depth)


def test_vsd_of_identical_depth_maps_is_zero_for_every_tau():
    depth = square_depth(T_GT)
    errors = vsd(depth, depth, depth, K, diameter=100.0)
    assert errors == [0.0] * len(VSD_TAUS)
    assert ar_vsd(errors) == 1.0


def test_vsd_counts_pixels_shifted_in_depth_by_more_than_tau():
    # The estimate is right on the left half and 22 mm too far on the right half; with a
    # 100 mm diameter, taus 5..20 mm flag the right half and taus 25..50 mm do not.
    depth_gt = plane(500.0)
    depth_est = depth_gt.copy()
    depth_est[:, IMAGE_SHAPE[1] // 2 :] += 22.0
    errors = vsd(depth_est, depth_gt, depth_gt, K, diameter=100.0)
    np.testing.assert_allclose(errors, [0.5] * 4 + [0.0] * 6)
    # An error of 0.5 is below no theta (the largest is 0.5): 4 taus x 10 thetas fail.
    assert ar_vsd(errors) == pytest.approx(1 - 4 * 10 / 100)


def test_vsd_counts_ground_truth_the_estimate_misses():
    depth_gt = plane(500.0)
    depth_est = depth_gt.copy()
    depth_est[:, IMAGE_SHAPE[1] // 2 :] = 0.0
    assert vsd(depth_est, depth_gt, depth_gt, K, diameter=100.0) == [0.5] * 10


def test_vsd_ignores_occluded_ground_truth_and_missing_test_depth():
    depth_gt = plane(500.0)
    depth_test = depth_gt.copy()
    depth_test[:, IMAGE_SHAPE[1] // 2 :] = 300.0  # an occluder hides the right half
    depth_est = depth_gt.copy()
    depth_est[:, IMAGE_SHAPE[1] // 2 :] += 30.0  # wrong only where nobody can see it
    assert vsd(depth_est, depth_gt, depth_test, K, diameter=100.0) == [0.0] * 10

    no_sensor_depth = np.zeros(IMAGE_SHAPE)  # BOP 2019: missing depth counts as visible
    assert vsd(depth_est, depth_gt, no_sensor_depth, K, diameter=100.0)[0] == 0.5


def test_vsd_tlinear_cost_and_argument_checks():
    depth_gt = plane(500.0)
    depth_est = depth_gt + 10.0
    errors = vsd(depth_est, depth_gt, depth_gt, K, taus=[0.2], diameter=100.0, cost_type="tlinear")
    # Cost = distance difference / 20 mm; a depth step of 10 is a longer step along each ray.
    rows, cols = np.mgrid[0 : IMAGE_SHAPE[0], 0 : IMAGE_SHAPE[1]] + 0.5  # pixel centres
    ray_scale = np.sqrt(1 + ((cols - K[0, 2]) / K[0, 0]) ** 2 + ((rows - K[1, 2]) / K[1, 1]) ** 2)
    assert errors[0] == pytest.approx(np.mean(10.0 * ray_scale / 20.0))
    with pytest.raises(ValueError, match="diameter"):
        vsd(depth_gt, depth_gt, depth_gt, K)
    with pytest.raises(ValueError, match="cost_type"):
        vsd(depth_gt, depth_gt, depth_gt, K, diameter=1.0, cost_type="quadratic")
    nothing = np.zeros(IMAGE_SHAPE)
    assert vsd(nothing, nothing, depth_gt, K, diameter=1.0) == [1.0] * 10


# --- recalls --------------------------------------------------------------------------------


def test_average_recall_counts_errors_strictly_below_each_threshold():
    assert average_recall([0.1], MSSD_THRESHOLDS) == pytest.approx(0.8)  # 0.1 is not < 0.1
    assert average_recall([0.0, math.inf], MSSD_THRESHOLDS) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        average_recall([], MSSD_THRESHOLDS)


def test_errors_on_the_threshold_grid_score_as_bop_toolkit_scores_them():
    # Errors k/20: at the decimal thresholds i/20 exactly i of them are below; bop_toolkit's
    # 3rd and 7th thresholds lie above 0.15 and 0.35, so those two errors count there too.
    errors = [k / 20 for k in range(20)]
    assert ar_mssd(errors, 1.0) == pytest.approx((55 + 2) / 200, abs=1e-15)
    assert ar_vsd(np.array(errors)[:, None]) == pytest.approx((55 + 2) / 200, abs=1e-15)
    assert ar_mspd([5.0 * k for k in range(20)], 640) == pytest.approx(55 / 200, abs=1e-15)


def test_ar_mssd_and_mspd_normalisation():
    assert ar_mssd([10.0], 100.0) == pytest.approx(0.8)  # 0.1 of the diameter
    assert ar_mspd([8.0], 640) == pytest.approx(0.9)  # 8 px: misses only 5 px
    assert ar_mspd([8.0], 1280) == pytest.approx(1.0)  # thresholds double: 10..100 px
    assert bop_ar(1.0, 0.5, 0.0) == pytest.approx(0.5)


# --- the whole score ------------------------------------------------------------------------


def square_scene(t_est: np.ndarray):
    t_gt = np.array([0.0, 0.0, 1000.0])
    depth_gt = square_depth(t_gt)
    return dict(
        R_e=np.eye(3),
        t_e=t_est,
        R_g=np.eye(3),
        t_g=t_gt,
        K=K,
        model_points=square_points(),
        diameter=100.0 * math.sqrt(2),
        depth_est=square_depth(t_est),
        depth_gt=depth_gt,
        depth_test=depth_gt,
    )


def test_ground_truth_scores_full_recall():
    scores = score_pose(**square_scene(np.array([0.0, 0.0, 1000.0])))
    assert scores.vsd_errors == [0.0] * 10 and scores.mssd == 0.0 and scores.mspd == 0.0
    assert scores.ar_vsd == scores.ar_mssd == scores.ar_mspd == scores.ar == 1.0


def test_pose_beyond_every_threshold_scores_zero():
    # 200 mm sideways: the projected squares do not overlap, MSSD = 1.41 diameters and
    # MSPD = 40 px against at most 50 * 128 / 640 = 10 px.
    scores = score_pose(**square_scene(np.array([200.0, 0.0, 1000.0])))
    assert scores.vsd_errors == [1.0] * 10
    assert scores.mspd == pytest.approx(40.0)
    assert scores.ar_vsd == scores.ar_mssd == scores.ar_mspd == scores.ar == 0.0
