"""Gaze geometry and rigid redirection of an eyeball's Gaussians.

Conventions (ETH-XGaze):
- gaze angles are (pitch, yaw) in radians, last axis of size 2;
- the camera frame has x right, y down, z forward; an eye looking straight at the camera has
  gaze (0, 0, -1), and g = (-cos(pitch) sin(yaw), -sin(pitch), -cos(pitch) cos(yaw));
- quaternions are (w, x, y, z) and compose as in `fresnel.render.projection.quat_multiply`
  (rotation(a b) = rotation(a) @ rotation(b)); rotation matrices act on column vectors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fresnel.render.projection import quat_multiply, rotation_between_directions, rotmat_to_quat

# Below this value of 1 + cos(angle) two directions are treated as antiparallel.


def pitchyaw_to_vector(pitchyaw: Tensor) -> Tensor:
    """(..., 2) gaze angles (pitch, yaw) -> (..., 3) unit gaze vectors in the camera frame."""
    pitch, yaw = pitchyaw.unbind(-1)
    cp = torch.cos(pitch)
    return torch.stack((-cp * torch.sin(yaw), -torch.sin(pitch), -cp * torch.cos(yaw)), -1)


def vector_to_pitchyaw(vector: Tensor) -> Tensor:
    """(..., 3) gaze vectors (any non-zero length) -> (..., 2) angles (pitch, yaw)."""
    x, y, z = vector.unbind(-1)
    pitch = torch.atan2(-y, torch.sqrt(x * x + z * z))
    yaw = torch.atan2(-x, -z)
    return torch.stack((pitch, yaw), -1)


def angular_error_deg(a: Tensor, b: Tensor) -> Tensor:
    """Angle in degrees between the gaze directions of (..., 2) angles a and b.

    atan2(|u x v|, u . v) stays accurate near 0 and 180 degrees, where acos(u . v) does not.
    """
    u, v = pitchyaw_to_vector(a), pitchyaw_to_vector(b)
    sin = torch.linalg.vector_norm(torch.cross(u, v, dim=-1), dim=-1)
    cos = (u * v).sum(-1)
    return torch.rad2deg(torch.atan2(sin, cos))


def rotate_eye_gaussians(
    means: Tensor,
    rotations: Tensor,
    eye_center: Tensor,
    from_pitchyaw: Tensor,
    to_pitchyaw: Tensor,
) -> tuple[Tensor, Tensor]:
    """Redirect one eyeball: rotate its Gaussians rigidly about the eyeball centre.

    means (N, 3), rotations (N, 4) quaternions (w, x, y, z), eye_center (3,), gaze angles (2,).
    The rotation R is the minimal one taking the current gaze to the target gaze; means become
    R (x - c) + c and quaternions q_R q (normalised), so covariances become R Sigma R^T.
    """
    rot = rotation_between_directions(
        pitchyaw_to_vector(from_pitchyaw), pitchyaw_to_vector(to_pitchyaw)
    )
    new_means = (means - eye_center) @ rot.T + eye_center
    q_rot = rotmat_to_quat(rot).to(rotations.dtype).expand_as(rotations)
    new_rotations = torch.nn.functional.normalize(quat_multiply(q_rot, rotations), dim=-1)
    return new_means, new_rotations
