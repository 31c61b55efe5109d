"""Known answers for VPOG's template viewpoints and pose angles (fresnel.vpog.geometry)."""

from __future__ import annotations

import math

import pytest
import torch

from fresnel.vpog.geometry import (
    icosphere_directions,
    in_plane_angle,
    in_plane_rotation,
    look_at_origin,
    nearest_template,
    opencv_to_opengl,
    out_of_plane_angle,
    rotation_between_directions,
    template_poses,
    viewing_direction,
)

F64 = torch.float64


def random_rotations(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(count, 3, 3, generator=generator, dtype=F64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[..., None, :]
    return q * torch.det(q)[..., None, None]  # proper rotations: det +1


def random_angles(count: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(count, generator=generator, dtype=F64) * 2 - 1) * math.pi


def camera_centre_direction(pose: torch.Tensor) -> torch.Tensor:
    R, t = pose[..., :3, :3], pose[..., :3, 3]
    centre = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    return centre / centre.norm(dim=-1, keepdim=True)


def pairwise_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a[:, None] - b[None]).norm(dim=-1)  # exact near 0, unlike torch.cdist


def column_d_ref(R: torch.Tensor) -> torch.Tensor:
    """The public VPOG source's d_ref: column 2 of the OpenGL rotation (a bug)."""
    return opencv_to_opengl(R)[..., :, 2]


def assert_rotations(R: torch.Tensor) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R @ R.transpose(-1, -2), eye, atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.det(R), torch.ones(R.shape[:-2], dtype=R.dtype))


# --- conventions ---------------------------------------------------------------------------


def test_opencv_to_opengl_flips_y_and_z_rows_and_is_an_involution():
    R = random_rotations(5)
    expected = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64)) @ R
    torch.testing.assert_close(opencv_to_opengl(R), expected)
    torch.testing.assert_close(opencv_to_opengl(opencv_to_opengl(R)), R)
    pose = template_poses(0, radius=2.0)[3]
    expected_pose = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)) @ pose
    torch.testing.assert_close(opencv_to_opengl(pose), expected_pose)


def test_in_plane_rotation_turns_the_x_axis_towards_y():
    Rz = in_plane_rotation(math.pi / 2)
    torch.testing.assert_close(
        Rz @ torch.tensor([1.0, 0.0, 0.0], dtype=F64), torch.tensor([0.0, 1.0, 0.0], dtype=F64)
    )
    assert in_plane_rotation(random_angles(4)).shape == (4, 3, 3)
    assert_rotations(in_plane_rotation(random_angles(4)))


# --- icosphere and templates ---------------------------------------------------------------


@pytest.mark.parametrize(("level", "count"), [(0, 42), (1, 162), (2, 642)])
def test_icosphere_counts_are_unit_distinct_and_deterministic(level, count):
    directions = icosphere_directions(level)
    assert directions.shape == (count, 3) and directions.dtype == F64
    torch.testing.assert_close(directions.norm(dim=-1), torch.ones(count, dtype=F64))
    distances = pairwise_distances(directions, directions) + 10 * torch.eye(count, dtype=F64)
    assert distances.min() > 0.05
    assert torch.equal(directions, icosphere_directions(level))
    # centrally symmetric, like the icosahedron: -v is a vertex for every vertex v
    assert pairwise_distances(-directions, directions).min(dim=1).values.max() < 1e-12


def test_icosphere_levels_are_nested_in_order():
    level0, level1, level2 = (icosphere_directions(level) for level in range(3))
    assert torch.equal(level1[:42], level0)
    assert torch.equal(level2[:162], level1)


def test_icosphere_spacing_is_half_an_icosahedron_edge_at_level_0():
    directions = icosphere_directions(0)
    angles = torch.arccos((directions[:12] @ directions.T).clamp(-1, 1))
    angles.fill_diagonal_(math.inf)
    # each icosahedron vertex's nearest neighbours are its edges' midpoints, at atan(2) / 2
    torch.testing.assert_close(
        angles.min(dim=1).values, torch.full((12,), math.atan(2.0) / 2, dtype=F64)
    )


def test_icosphere_rejects_a_negative_level():
    with pytest.raises(ValueError, match="level"):
        icosphere_directions(-1)


@pytest.mark.parametrize(("level", "count"), [(0, 26), (1, 91), (2, 341)])
def test_upper_hemisphere_keeps_z_at_least_zero_in_order(level, count):
    poses = template_poses(level, upper_hemisphere=True)
    directions = icosphere_directions(level)
    assert poses.shape == (count, 4, 4)
    torch.testing.assert_close(
        viewing_direction(poses[:, :3, :3]), directions[directions[:, 2] >= 0]
    )
    assert (viewing_direction(poses[:, :3, :3])[:, 2] >= 0).all()


@pytest.mark.parametrize("level", [0, 1, 2])
def test_template_poses_look_at_the_origin_from_the_icosphere(level):
    radius = 3.5
    poses = template_poses(level, radius=radius)
    R, t = poses[:, :3, :3], poses[:, :3, 3]
    assert_rotations(R)
    torch.testing.assert_close(t, torch.tensor([0.0, 0.0, radius], dtype=F64).expand_as(t))
    torch.testing.assert_close(
        poses[:, 3], torch.tensor([0.0, 0, 0, 1], dtype=F64).expand(len(R), 4)
    )
    centres = -(R.transpose(-1, -2) @ t[..., None])[..., 0]
    torch.testing.assert_close(centres, radius * icosphere_directions(level))


def test_templates_are_upright_with_a_fallback_at_the_poles():
    R = template_poses(1)[:, :3, :3]
    directions = icosphere_directions(1)
    at_pole = directions[:, 2].abs() > 1 - 1e-12
    assert at_pole.sum() == 2
    # camera x horizontal and camera y (image down) pointing to object -z: object +z looks up
    assert R[~at_pole, 0, 2].abs().max() < 1e-12
    assert (R[~at_pole, 1, 2] < 0).all()
    # at the poles object +y projects upwards: camera y (down) is object -y
    y_axis = torch.tensor([0.0, -1.0, 0.0], dtype=F64)
    torch.testing.assert_close(R[at_pole, 1], y_axis.expand(2, 3))
    torch.testing.assert_close(
        look_at_origin(torch.tensor([0.0, 0.0, -2.0], dtype=F64)),
        torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=F64)),
    )


# --- viewing direction: row 2 of the OpenGL rotation, not column 2 --------------------------


@pytest.mark.parametrize("level", [0, 1, 2])
def test_viewing_direction_is_the_camera_centre_direction_of_every_template(level):
    poses = template_poses(level, radius=7.0)
    d_ref = viewing_direction(poses[:, :3, :3])
    torch.testing.assert_close(d_ref, opencv_to_opengl(poses[:, :3, :3])[:, 2, :])
    torch.testing.assert_close(d_ref, camera_centre_direction(poses), atol=1e-12, rtol=0)


def test_viewing_direction_is_the_camera_centre_direction_for_centred_generic_poses():
    R = random_rotations(64)
    poses = torch.eye(4, dtype=F64).repeat(64, 1, 1)
    poses[:, :3, :3] = R
    poses[:, 2, 3] = 2.0  # object origin on the optical axis
    torch.testing.assert_close(viewing_direction(R), camera_centre_direction(poses))
    torch.testing.assert_close(viewing_direction(R).norm(dim=-1), torch.ones(64, dtype=F64))


def test_viewing_direction_is_invariant_to_in_plane_rotation():
    R = torch.cat([template_poses(1)[:, :3, :3], random_rotations(64)])
    rotated = in_plane_rotation(random_angles(len(R))) @ R
    torch.testing.assert_close(viewing_direction(rotated), viewing_direction(R), atol=1e-15, rtol=0)


def test_column_based_d_ref_fails_both_properties_for_generic_poses():
    R = random_rotations(64)
    poses = torch.eye(4, dtype=F64).repeat(64, 1, 1)
    poses[:, :3, :3] = R
    poses[:, 2, 3] = 2.0
    rotated = in_plane_rotation(torch.full((64,), 1.0, dtype=F64)) @ R
    not_camera_direction = (column_d_ref(R) - camera_centre_direction(poses)).norm(dim=-1)
    not_invariant = (column_d_ref(rotated) - column_d_ref(R)).norm(dim=-1)
    assert (not_camera_direction > 1e-3).all()
    assert (not_invariant > 1e-3).all()


def test_column_based_d_ref_picks_wrong_templates_where_the_row_based_one_does_not():
    templates = template_poses(1)[:, :3, :3]
    queries = in_plane_rotation(random_angles(len(templates))) @ templates
    assert torch.equal(nearest_template(queries, templates), torch.arange(len(templates)))
    column_angles = torch.arccos(
        (column_d_ref(queries)[:, None] * column_d_ref(templates)[None]).sum(-1).clamp(-1, 1)
    )
    wrong = column_angles.argmin(dim=1) != torch.arange(len(templates))
    assert wrong.float().mean() > 0.5


# --- out-of-plane and in-plane angles -------------------------------------------------------


def test_out_of_plane_angle_known_values():
    R = template_poses(0)[:, :3, :3]
    directions = icosphere_directions(0)
    expected = torch.arccos((directions[:, None] * directions[None]).sum(-1).clamp(-1, 1))
    torch.testing.assert_close(out_of_plane_angle(R[:, None], R[None]), expected, atol=1e-7, rtol=0)
    north, south = look_at_origin(torch.tensor([[0.0, 0, 1], [0, 0, -1]], dtype=F64))
    equator = look_at_origin(torch.tensor([1.0, 0, 0], dtype=F64))
    torch.testing.assert_close(
        out_of_plane_angle(north, equator), torch.tensor(math.pi / 2, dtype=F64)
    )
    torch.testing.assert_close(out_of_plane_angle(north, south), torch.tensor(math.pi, dtype=F64))


def test_out_of_plane_angle_is_zero_for_in_plane_rotations():
    R = random_rotations(32)
    rotated = in_plane_rotation(random_angles(32)) @ R
    assert out_of_plane_angle(rotated, R).abs().max() < 1e-7


def test_in_plane_angle_recovers_a_random_rotation_about_the_optical_axis():
    templates = torch.cat([template_poses(2)[:, :3, :3], random_rotations(64)])
    theta = random_angles(len(templates), seed=7)
    queries = in_plane_rotation(theta) @ templates
    recovered = in_plane_angle(queries, templates)
    assert (recovered - theta).abs().max() < 1e-6
    assert in_plane_angle(templates, templates).abs().max() < 1e-12


def test_in_plane_angle_for_different_directions_moves_the_template_along_the_great_circle():
    templates = random_rotations(64, seed=3)
    targets = viewing_direction(random_rotations(64, seed=4))
    Q = rotation_between_directions(viewing_direction(templates), targets)
    theta = random_angles(64, seed=5)
    queries = in_plane_rotation(theta) @ templates @ Q.transpose(-1, -2)
    torch.testing.assert_close(viewing_direction(queries), targets)
    assert (in_plane_angle(queries, templates) - theta).abs().max() < 1e-6


def test_in_plane_angle_is_zero_between_upright_cameras_on_one_meridian_or_the_equator():
    def upright(elevation_deg: float, azimuth_deg: float) -> torch.Tensor:
        elevation, azimuth = math.radians(elevation_deg), math.radians(azimuth_deg)
        direction = [
            math.cos(elevation) * math.cos(azimuth),
            math.cos(elevation) * math.sin(azimuth),
            math.sin(elevation),
        ]
        return look_at_origin(torch.tensor(direction, dtype=F64))

    assert abs(in_plane_angle(upright(60, 30), upright(-20, 30))) < 1e-12
    assert abs(in_plane_angle(upright(0, 10), upright(0, 130))) < 1e-12
    # off those great circles the upright query is turned relative to the moved template
    assert abs(in_plane_angle(upright(45, 0), upright(45, 90))) > 0.1
    turned = in_plane_rotation(0.3) @ upright(60, 30)
    torch.testing.assert_close(
        in_plane_angle(turned, upright(-20, 30)), torch.tensor(0.3, dtype=F64)
    )


def test_rotation_between_directions_handles_equal_and_antipodal_vectors():
    source = viewing_direction(random_rotations(16, seed=8))
    target = torch.cat([source[:4], -source[4:8], viewing_direction(random_rotations(8, seed=9))])
    Q = rotation_between_directions(source, target)
    assert_rotations(Q)
    torch.testing.assert_close((Q @ source[..., None])[..., 0], target)
    torch.testing.assert_close(Q[:4], torch.eye(3, dtype=F64).expand(4, 3, 3))
    axis = torch.tensor([1.0, 0, 0], dtype=F64)
    torch.testing.assert_close(rotation_between_directions(axis, -axis) @ axis, -axis)
    assert torch.isfinite(in_plane_angle(look_at_origin(-axis), look_at_origin(axis)))


# --- nearest template -----------------------------------------------------------------------


def test_nearest_template_matches_brute_force():
    templates = template_poses(1)[:, :3, :3]
    queries = random_rotations(50, seed=11)
    found = nearest_template(queries, templates)
    assert found.shape == (50,) and found.dtype == torch.long
    for query, index in zip(queries, found, strict=True):
        angles = [out_of_plane_angle(query, template).item() for template in templates]
        assert index.item() == min(range(len(angles)), key=lambda i: (angles[i], i))
    assert nearest_template(queries[0], templates).shape == ()


def test_nearest_template_breaks_exact_ties_by_lower_index():
    templates = template_poses(0)[:, :3, :3][[5, 5, 3]]
    assert nearest_template(templates[0], templates).item() == 0
