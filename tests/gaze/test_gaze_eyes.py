"""Known answers for the ETH-XGaze gaze geometry and the rigid eye redirection."""

import math

import pytest
import torch

from fresnel.gaze.eyes import (
    angular_error_deg,
    pitchyaw_to_vector,
    rotate_eye_gaussians,
    vector_to_pitchyaw,
)
from fresnel.render.projection import (
    covariance_3d,
    quat_to_rotmat,
    rotmat_to_quat,
)
from fresnel.render.projection import (
    rotation_between_directions as rotation_between,
)

D = torch.float64


def _eye(n: int = 50, seed: int = 0):
    """An eyeball of radius 0.012 at a fixed centre, Gaussians on and inside its sphere."""
    gen = torch.Generator().manual_seed(seed)
    center = torch.tensor([0.03, -0.02, 0.5], dtype=D)
    means = center + 0.012 * torch.randn(n, 3, generator=gen, dtype=D).clamp(-1, 1)
    quats = torch.nn.functional.normalize(torch.randn(n, 4, generator=gen, dtype=D), dim=-1)
    return center, 0.012, means, quats


def test_pitchyaw_vector_known_values():
    zero = pitchyaw_to_vector(torch.tensor([0.0, 0.0], dtype=D))
    assert torch.allclose(zero, torch.tensor([0.0, 0.0, -1.0], dtype=D))
    up = pitchyaw_to_vector(torch.tensor([math.pi / 2, 0.0], dtype=D))  # looking up: -y
    assert torch.allclose(up, torch.tensor([0.0, -1.0, 0.0], dtype=D), atol=1e-12)
    side = pitchyaw_to_vector(torch.tensor([0.0, math.pi / 2], dtype=D))  # yaw +90: -x
    assert torch.allclose(side, torch.tensor([-1.0, 0.0, 0.0], dtype=D), atol=1e-12)


def test_vector_to_pitchyaw_inverts_and_ignores_length():
    angles = torch.rand(100, 2, dtype=D) * 2.8 - 1.4  # |pitch|, |yaw| < 80 degrees
    vectors = pitchyaw_to_vector(angles)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(100, dtype=D))
    assert torch.allclose(vector_to_pitchyaw(3.5 * vectors), angles, atol=1e-12)


def test_angular_error_known_values_and_extremes():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0], [0.2, 0.1], [0.0, 0.0]], dtype=D)
    b = torch.tensor([[0.0, math.pi / 2], [math.pi / 6, 0.0], [0.2, 0.1], [0.0, math.pi]], dtype=D)
    expected = torch.tensor([90.0, 30.0, 0.0, 180.0], dtype=D)
    assert torch.allclose(angular_error_deg(a, b), expected, atol=1e-9)
    tiny = angular_error_deg(torch.zeros(2, dtype=D), torch.tensor([1e-9, 0.0], dtype=D))
    assert math.isclose(float(tiny), math.degrees(1e-9), rel_tol=1e-6)  # acos would give 0


def test_rotation_between_maps_a_to_b_and_is_a_rotation():
    a = torch.nn.functional.normalize(torch.randn(64, 3, dtype=D), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(64, 3, dtype=D), dim=-1)
    b[0] = a[0]
    b[1] = -a[1]  # antiparallel
    rot = rotation_between(a, b)
    assert torch.allclose((rot @ a[..., None]).squeeze(-1), b, atol=1e-12)
    assert torch.allclose(rot @ rot.transpose(-1, -2), torch.eye(3, dtype=D).expand(64, 3, 3))
    assert torch.allclose(torch.linalg.det(rot), torch.ones(64, dtype=D))
    assert torch.allclose(rot[0], torch.eye(3, dtype=D))


def test_rotation_between_is_minimal():
    """The rotation angle equals the angle between a and b (trace = 1 + 2 cos angle)."""
    a = torch.nn.functional.normalize(torch.randn(32, 3, dtype=D), dim=-1)
    b = torch.nn.functional.normalize(torch.randn(32, 3, dtype=D), dim=-1)
    trace = rotation_between(a, b).diagonal(dim1=-2, dim2=-1).sum(-1)
    assert torch.allclose(trace, 1 + 2 * (a * b).sum(-1), atol=1e-12)


def test_rotmat_to_quat_round_trip():
    q = torch.nn.functional.normalize(torch.randn(200, 4, dtype=D), dim=-1)
    q = torch.where(q[:, :1] < 0, -q, q)
    q[0] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=D)  # half turns: w = 0
    q[1] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=D)
    assert torch.allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-12)


def test_front_point_lands_on_target_gaze_and_distances_are_kept():
    center, radius, means, quats = _eye()
    src, dst = torch.tensor([0.1, -0.3], dtype=D), torch.tensor([-0.25, 0.4], dtype=D)
    front = center + radius * pitchyaw_to_vector(src)
    pts, qs = torch.cat([means, front[None]]), torch.cat([quats, quats[:1]])
    new, _ = rotate_eye_gaussians(pts, qs, center, src, dst)
    assert torch.allclose(new[-1], center + radius * pitchyaw_to_vector(dst), atol=1e-6)
    before = (pts - center).norm(dim=-1)
    assert torch.allclose((new - center).norm(dim=-1), before, atol=1e-12)


def test_same_gaze_is_identity():
    center, _, means, quats = _eye()
    gaze = torch.tensor([0.2, -0.1], dtype=D)
    new_means, new_quats = rotate_eye_gaussians(means, quats, center, gaze, gaze)
    assert torch.allclose(new_means, means, atol=1e-12)
    assert torch.allclose(new_quats, quats, atol=1e-12)


def test_composition_along_a_great_circle_equals_direct():
    """With pitch 0 every redirection is a turn about y, so two steps equal one exactly."""
    center, _, means, quats = _eye()
    a, b, c = (torch.tensor([0.0, y], dtype=D) for y in (-0.3, 0.1, 0.45))
    step_m, step_q = rotate_eye_gaussians(
        *rotate_eye_gaussians(means, quats, center, a, b), center, b, c
    )
    direct_m, direct_q = rotate_eye_gaussians(means, quats, center, a, c)
    assert torch.allclose(step_m, direct_m, atol=1e-12)
    assert torch.allclose(step_q, direct_q, atol=1e-12)


def test_general_composition_differs_only_by_a_twist_about_the_target_gaze():
    """Off a great circle minimal rotations do not compose (holonomy): the two results agree
    on the gaze (front point) and differ by a rotation about the target gaze axis."""
    center, radius, means, quats = _eye()
    a, b, c = (torch.tensor(p, dtype=D) for p in ([0.3, -0.3], [-0.2, 0.0], [0.3, 0.4]))
    front = center + radius * pitchyaw_to_vector(a)
    pts = torch.cat([means, front[None]])
    qs = torch.cat([quats, quats[:1]])
    step_m, _ = rotate_eye_gaussians(*rotate_eye_gaussians(pts, qs, center, a, b), center, b, c)
    direct_m, _ = rotate_eye_gaussians(pts, qs, center, a, c)
    assert torch.allclose(step_m[-1], direct_m[-1], atol=1e-12)
    gc = pitchyaw_to_vector(c)
    # Project onto the target gaze axis: equal components, equal distances from the axis.
    assert torch.allclose((step_m - center) @ gc, (direct_m - center) @ gc, atol=1e-12)
    assert torch.allclose(step_m.sub(center).norm(dim=-1), direct_m.sub(center).norm(dim=-1))


def test_quaternions_rotate_covariances():
    center, _, means, quats = _eye()
    scales = torch.rand(len(means), 3, dtype=D) * 0.002 + 1e-4
    src, dst = torch.tensor([0.35, 0.2], dtype=D), torch.tensor([-0.1, -0.5], dtype=D)
    _, new_quats = rotate_eye_gaussians(means, quats, center, src, dst)
    rot = rotation_between(pitchyaw_to_vector(src), pitchyaw_to_vector(dst))
    expected = rot @ covariance_3d(scales, quats) @ rot.T
    assert torch.allclose(covariance_3d(scales, new_quats), expected, atol=1e-15)
    assert torch.allclose(new_quats.norm(dim=-1), torch.ones(len(means), dtype=D))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_redirection_keeps_dtype(dtype):
    center, radius, means, quats = _eye()
    src, dst = torch.tensor([0.0, 0.0]), torch.tensor([0.3, 0.3])
    m, q = rotate_eye_gaussians(
        means.to(dtype), quats.to(dtype), center.to(dtype), src.to(dtype), dst.to(dtype)
    )
    assert m.dtype == dtype and q.dtype == dtype
    front = center.to(dtype) + radius * pitchyaw_to_vector(src.to(dtype))
    moved, _ = rotate_eye_gaussians(
        front[None], quats[:1].to(dtype), center.to(dtype), src.to(dtype), dst.to(dtype)
    )
    target = center.to(dtype) + radius * pitchyaw_to_vector(dst.to(dtype))
    assert torch.allclose(moved[0], target, atol=1e-6)
