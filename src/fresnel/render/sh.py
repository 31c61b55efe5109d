"""View-dependent colour from real spherical harmonics, degree 0 to 3 (3DGS conventions).

A Gaussian stores K = (degree + 1)^2 coefficients per channel, (N, K, C). Its colour in a view
is sum_k c_k Y_k(d) + 0.5, clamped at 0, where d is the unit direction from the camera centre
to the Gaussian's mean in world space; the 0.5 offset makes zero coefficients mid-grey and
`rgb_to_sh0` inverts degree 0. The basis is the orthonormal real one (integral of Y_i Y_j over
the sphere = delta_ij), with the sign convention of the 3DGS reference code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

MAX_DEGREE = 3
C0 = 0.5 / math.sqrt(math.pi)
C1 = math.sqrt(3 / (4 * math.pi))
C2 = (
    0.5 * math.sqrt(15 / math.pi),
    -0.5 * math.sqrt(15 / math.pi),
    0.25 * math.sqrt(5 / math.pi),
    -0.5 * math.sqrt(15 / math.pi),
    0.25 * math.sqrt(15 / math.pi),
)
C3 = (
    -0.25 * math.sqrt(35 / (2 * math.pi)),
    0.5 * math.sqrt(105 / math.pi),
    -0.25 * math.sqrt(21 / (2 * math.pi)),
    0.25 * math.sqrt(7 / math.pi),
    -0.25 * math.sqrt(21 / (2 * math.pi)),
    0.25 * math.sqrt(105 / math.pi),
    -0.25 * math.sqrt(35 / (2 * math.pi)),
)


def num_coefficients(degree: int) -> int:
    return (degree + 1) ** 2


def basis(degree: int, dirs: Tensor) -> Tensor:
    """(..., 3) unit directions -> (..., (degree + 1)^2) basis values Y_k(d)."""
    if not 0 <= degree <= MAX_DEGREE:
        raise ValueError(f"SH degree must be 0..{MAX_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    values = [torch.full_like(x, C0)]
    if degree >= 1:
        values += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        values += [C2[0] * x * y, C2[1] * y * z, C2[2] * (2 * zz - xx - yy), C2[3] * x * z,
                   C2[4] * (xx - yy)]  # fmt: skip
    if degree >= 3:
        values += [
            C3[0] * y * (3 * xx - yy), C3[1] * x * y * z, C3[2] * y * (4 * zz - xx - yy),
            C3[3] * z * (2 * zz - 3 * xx - 3 * yy), C3[4] * x * (4 * zz - xx - yy),
            C3[5] * z * (xx - yy), C3[6] * x * (xx - 3 * yy),
        ]  # fmt: skip
    return torch.stack(values, -1)


def evaluate(coeffs: Tensor, dirs: Tensor, degree: int) -> Tensor:
    """(N, K, C) coefficients at (N, 3) unit directions -> (N, C), using the first
    (degree + 1)^2 of the K coefficients (so a degree schedule needs no reshaping)."""
    k = num_coefficients(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"degree {degree} needs {k} SH coefficients, got {coeffs.shape[-2]}")
    return torch.einsum("nk,nkc->nc", basis(degree, dirs), coeffs[..., :k, :])


def camera_center(viewmat: Tensor | None, like: Tensor) -> Tensor:
    """World position of the camera of a world-to-camera [R | t] matrix: -R^T t."""
    if viewmat is None:
        return like.new_zeros(3)
    rot, trans = viewmat[:3, :3].to(like), viewmat[:3, 3].to(like)
    return -rot.T @ trans


def view_colors(
    means: Tensor, coeffs: Tensor, degree: int, viewmat: Tensor | None = None
) -> Tensor:
    """Each Gaussian's colour seen from the camera of `viewmat` (camera space if None)."""
    dirs = torch.nn.functional.normalize(means - camera_center(viewmat, means), dim=-1)
    return (evaluate(coeffs, dirs, degree) + 0.5).clamp_min(0.0)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """The degree-0 coefficient whose view colour is `rgb`."""
    return (rgb - 0.5) / C0
