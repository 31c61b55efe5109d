"""Shared by the tile renderer and the dense reference: camera, input checks, EWA projection of
3D Gaussians to screen space, the per-pixel Gaussian falloff and the output record; and the
rotation helpers every family shares (quaternions <-> matrices, the minimal rotation between
two directions).

Conventions: camera space is OpenCV's (x right, y down, z forward); pixel (x, y) covers
[x, x+1) x [y, y+1) and is evaluated at its centre (x + PIXEL_CENTER, y + PIXEL_CENTER).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from fresnel.render.constants import (
    ALPHA_MAX,
    ALPHA_MIN,
    BACKGROUND,
    EPS2D,
    NEAR_PLANE,
    PIXEL_CENTER,
    SIGMA_EXTENT,
)


@dataclass(frozen=True)
class Camera:
    """Pinhole intrinsics in pixels for an image of width x height."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, width: int, height: int) -> Camera:
        """The same camera rendering at another resolution (same field of view)."""
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height)

    def cropped(self, x0: int, y0: int, width: int, height: int | None = None) -> Camera:
        """The same camera seeing only the pixels [x0, x0 + width) x [y0, y0 + height)."""
        height = width if height is None else height
        return Camera(self.fx, self.fy, self.cx - x0, self.cy - y0, width, height)


@dataclass
class RenderOutput:
    """One rendered view.

    image: (C, H, W) colour (C = the colours' channels, 3 for RGB; any C >= 1, e.g. a
        feature map), background composited where alpha < 1.
    alpha: (H, W) accumulated opacity, 1 - final transmittance.
    depth: (H, W) sum_i w_i z_i with blend weights w_i; NOT divided by alpha (divide by
        alpha.clamp_min(eps) for the expected depth of the covered part).
    means2d: (N, 2) screen-space means in pixels. When the inputs require grad it is a non-leaf
        tensor on which retain_grad() was called, so after loss.backward() means2d.grad holds
        dL/dmeans2d (the view-space positional gradient 3DGS densification uses). Rows with
        radii == 0 are not meaningful (zero where z < NEAR_PLANE).
    radii: (N,) int32 pixel radius ceil(SIGMA_EXTENT * sqrt(largest eigenvalue of the 2D
        covariance)); 0 = culled.
    """

    image: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor


@dataclass
class Projected:
    """Screen-space Gaussians; conics are (a, b, c) of the inverse 2D covariance [[a,b],[b,c]]."""

    means2d: Tensor  # (N, 2)
    conics: Tensor  # (N, 3)
    depths: Tensor  # (N,) camera-space z
    radii: Tensor  # (N,) int32, 0 = culled
    extents: Tensor  # (N, 2) float: ceil(SIGMA_EXTENT * sigma_x), ... (0 where culled)


def validate_inputs(means, scales, quats, opacities, colors) -> None:
    """ValueError naming the input and the number of bad entries for malformed Gaussians."""
    n = means.shape[0] if means.dim() == 2 else -1
    channels = colors.shape[-1] if colors.dim() == 2 and colors.shape[-1] > 0 else "C >= 1"
    expected = {"means": (n, 3), "scales": (n, 3), "quats": (n, 4), "opacities": (n,),
                "colors": (n, channels)}  # fmt: skip
    tensors = {"means": means, "scales": scales, "quats": quats, "opacities": opacities,
               "colors": colors}  # fmt: skip
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{name} must have shape {expected[name]}, got {tuple(tensor.shape)}")
        bad = int((~torch.isfinite(tensor)).sum())
        if bad:
            raise ValueError(f"{name} has {bad} NaN/Inf entries")
    outside = int(((opacities < 0) | (opacities > 1)).sum())
    if outside:
        raise ValueError(
            f"opacities has {outside} entries outside [0, 1] (pass sigmoid(logits), not logits)"
        )
    negative = int((scales < 0).sum())
    if negative:
        raise ValueError(f"scales has {negative} negative entries (std-devs must be >= 0)")
    zero = int((quats.detach().norm(dim=-1) == 0).sum())
    if zero:
        raise ValueError(f"quats has {zero} zero-norm quaternions")


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) quaternions (w, x, y, z), normalised over the last axis -> (N, 3, 3) rotations."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)


def quat_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Hamilton product a b of (..., 4) quaternions (w, x, y, z): rotation(a b) =
    rotation(a) @ rotation(b), i.e. b is applied first."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        -1,
    )


def covariance_3d(scales: Tensor, quats: Tensor) -> Tensor:
    """Sigma = R S S^T R^T, (N, 3, 3)."""
    m = quat_to_rotmat(quats) * scales.unsqueeze(-2)
    return m @ m.transpose(-1, -2)


def inverse_2x2(m: Tensor) -> Tensor:
    """Closed-form inverse of (..., 2, 2) matrices (batched torch.linalg.inv fails on ROCm for
    more than 65,536 matrices)."""
    a, b, c, d = m[..., 0, 0], m[..., 0, 1], m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    return torch.stack((d, -b, -c, a), dim=-1).reshape(m.shape) / det[..., None, None]


def project_gaussians(
    means: Tensor, scales: Tensor, quats: Tensor, camera: Camera, viewmat: Tensor | None = None
) -> Projected:
    """EWA splatting: Sigma2d = J W Sigma W^T J^T + EPS2D * I, J the perspective Jacobian at the
    mean. Culls z < NEAR_PLANE and Gaussians whose radius box misses the image."""
    cov = covariance_3d(scales, quats)
    if viewmat is not None:
        rot, trans = viewmat[:3, :3].to(means), viewmat[:3, 3].to(means)
        means = means @ rot.T + trans
        cov = rot @ cov @ rot.T
    x, y, z = means.unbind(-1)
    in_front = z >= NEAR_PLANE
    z = torch.where(in_front, z, torch.ones_like(z))  # keeps culled rows finite (no NaN grads)
    zero = torch.zeros_like(z)
    jac = torch.stack((camera.fx / z, zero, -camera.fx * x / (z * z),
                       zero, camera.fy / z, -camera.fy * y / (z * z)), -1).reshape(-1, 2, 3)  # fmt: skip
    cov2d = jac @ cov @ jac.transpose(-1, -2)
    cov2d = cov2d + EPS2D * torch.eye(2, dtype=cov2d.dtype, device=cov2d.device)
    inv = inverse_2x2(cov2d)
    conics = torch.stack((inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]), -1)
    means2d = torch.stack((camera.fx * x / z + camera.cx, camera.fy * y / z + camera.cy), -1)
    means2d = torch.where(in_front[:, None], means2d, torch.zeros_like(means2d))
    with torch.no_grad():
        radii, extents = _radii(cov2d, means2d, in_front, camera)
    return Projected(means2d, conics, means[:, 2], radii, extents)


def _radii(cov2d: Tensor, means2d: Tensor, in_front: Tensor, camera: Camera):
    """Integer radius from the largest eigenvalue, per-axis extents, and the culling mask."""
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    lambda_max = 0.5 * (a + c) + torch.sqrt((0.5 * (a - c)) ** 2 + b * b)
    radius = torch.ceil(SIGMA_EXTENT * lambda_max.sqrt())
    extents = torch.ceil(SIGMA_EXTENT * torch.stack((a, c), -1).sqrt())
    mx, my = means2d.unbind(-1)
    visible = in_front & (mx + radius > 0) & (mx - radius < camera.width)
    visible &= (my + radius > 0) & (my - radius < camera.height)
    radius = torch.where(visible, radius.clamp(max=2**30), torch.zeros_like(radius))
    extents = torch.where(visible[:, None], extents.clamp(max=2**30), torch.zeros_like(extents))
    return radius.to(torch.int32), extents


def gaussian_power(dx: Tensor, dy: Tensor, conics: Tensor) -> Tensor:
    """-0.5 d^T Sigma2d^-1 d for offsets d = pixel - mean, conics (..., 3) = (a, b, c).

    Separable: dx may hold one entry per pixel column and dy one per pixel row (broadcasting to
    rows x columns), so only the last two operations run at full size."""
    a, b, c = conics.unbind(-1)
    return ((-0.5 * a) * dx * dx + (-0.5 * c) * dy * dy).addcmul_(-b * dy, dx)


# Power given to pixels beyond SIGMA_EXTENT: its alpha falls below ALPHA_MIN and is skipped.
# Finite on purpose: exp() of -inf or of underflowing inputs is ~10-100x slower on CPU.
_CUT_POWER = -20.0


def splat_alpha(power: Tensor, opacities: Tensor, clamp: bool = True) -> tuple[Tensor, Tensor]:
    """(alpha, kept): kept = opacity * exp(power), zeroed beyond SIGMA_EXTENT sigmas and below
    ALPHA_MIN (the skipped contributions); alpha = min(ALPHA_MAX, kept). clamp=False skips the
    clamp when the caller knows no opacity exceeds ALPHA_MAX. Overwrites power when no
    gradient is recorded.

    Thresholds use F.threshold rather than boolean masks: bool kernels are several times slower
    than arithmetic ones on CPU."""
    inplace = not (torch.is_grad_enabled() and (power.requires_grad or opacities.requires_grad))
    cut = below(-0.5 * SIGMA_EXTENT**2, power.dtype)
    power = F.threshold(power, cut, _CUT_POWER, inplace=inplace)
    raw = power.exp_().mul_(opacities) if inplace else opacities * power.exp()
    kept = F.threshold(raw, below(ALPHA_MIN, power.dtype), 0.0, inplace=inplace)
    return (kept.clamp(max=ALPHA_MAX) if clamp else kept), kept


@functools.cache
def below(value: float, dtype: torch.dtype) -> float:
    """The largest number of dtype below value as rounded to dtype: F.threshold(x, below(v))
    keeps exactly the x >= v."""
    v = torch.tensor(value, dtype=dtype)
    return torch.nextafter(v, torch.tensor(-math.inf, dtype=dtype)).item()


def finish(color, depth, transmittance, background, means2d, radii) -> RenderOutput:
    """Composite the background into (C, H, W) colour and package the outputs."""
    channels = color.shape[0]
    if background is None:
        background = torch.tensor(BACKGROUND) if channels == 3 else color.new_zeros(channels)
    if background.numel() != channels:
        raise ValueError(f"background has {background.numel()} entries for {channels} channels")
    background = background.to(color)
    image = color + transmittance.unsqueeze(0) * background.reshape(channels, 1, 1)
    if means2d.requires_grad:
        means2d.retain_grad()
    return RenderOutput(image, 1 - transmittance, depth, means2d, radii)


def pixel_centers(size: int, like: Tensor) -> Tensor:
    """Coordinates of pixel centres 0.5, 1.5, ... along one axis."""
    return torch.arange(size, dtype=like.dtype, device=like.device) + PIXEL_CENTER


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: axis-angle `(..., 3)` -> rotation matrix `(..., 3, 3)`.

    Exact identity at zero and finite gradients there (series for small angles), so
    zero-initialised poses can be optimised.
    """
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(safe)) / safe2)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotmat_to_quat(rotations: Tensor) -> Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z) with w >= 0.

    Shepperd's method: each of the four components can be read off the diagonal, but dividing
    by a small one loses precision, so per matrix the branch with the largest |component| is
    used. Every branch stays finite (the square root is clamped), so gradients through the
    unchosen branches are zero rather than NaN.
    """
    m = rotations
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    four_sq = torch.stack(  # 4 w^2, 4 x^2, 4 y^2, 4 z^2
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), -1
    )
    two_abs = four_sq.clamp_min(1e-12).sqrt()  # 2 |q_i|
    d21, d02, d10 = (m[..., i, j] - m[..., j, i] for i, j in ((2, 1), (0, 2), (1, 0)))
    s10, s02, s21 = (m[..., i, j] + m[..., j, i] for i, j in ((1, 0), (0, 2), (2, 1)))
    # Row i: 4 q_i q, whose i-th entry is (2 |q_i|)^2; divided by 2 * (2 |q_i|) it is q.
    numerators = torch.stack(
        (
            torch.stack((four_sq[..., 0], d21, d02, d10), -1),
            torch.stack((d21, four_sq[..., 1], s10, s02), -1),
            torch.stack((d02, s10, four_sq[..., 2], s21), -1),
            torch.stack((d10, s02, s21, four_sq[..., 3]), -1),
        ),
        -2,
    )
    candidates = numerators / (2 * two_abs).unsqueeze(-1)
    best = four_sq.argmax(-1)[..., None, None].expand(*m.shape[:-2], 1, 4)
    quats = candidates.gather(-2, best).squeeze(-2)
    quats = torch.where(quats[..., :1] < 0, -quats, quats)
    return F.normalize(quats, dim=-1)


_ANTIPODAL_EPS = 1e-16  # on 1 + cos: |source + target| < ~1.4e-8


def rotation_between_directions(source: Tensor, target: Tensor) -> Tensor:
    """(..., 3, 3) minimal rotation Q with Q @ source = target for unit vectors.

    Q turns about source x target by the angle between them. For antipodal vectors, where that
    axis is undefined, Q is the half-turn about a fixed axis perpendicular to `source`: its
    cross product with x (or with y when source is nearly parallel to x), normalised.
    """
    source, target = torch.broadcast_tensors(source, target)
    axis = torch.linalg.cross(source, target, dim=-1)
    eye = torch.eye(3, dtype=source.dtype, device=source.device).expand((*axis.shape, 3))
    skew = _skew(axis)
    # Rodrigues' formula, (1 - cos) / sin^2 = 1 / (1 + cos), with 1 + cos = |source + target|^2 / 2
    # which keeps its relative accuracy as the vectors approach antipodal.
    one_plus_cos = ((source + target).square().sum(dim=-1) / 2.0)[..., None, None]
    antipodal = one_plus_cos < _ANTIPODAL_EPS
    rodrigues = eye + skew + skew @ skew / torch.where(antipodal, 1.0, one_plus_cos)
    perpendicular = _perpendicular(source)
    half_turn = 2.0 * perpendicular[..., :, None] * perpendicular[..., None, :] - eye
    return torch.where(antipodal, half_turn, rodrigues)


def _skew(v: Tensor) -> Tensor:
    x, y, z = v.unbind(dim=-1)
    zero = torch.zeros_like(x)
    rows = [
        torch.stack([zero, -z, y], dim=-1),
        torch.stack([z, zero, -x], dim=-1),
        torch.stack([-y, x, zero], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


def _perpendicular(v: Tensor) -> Tensor:
    x_axis = torch.zeros_like(v)
    x_axis[..., 0] = 1.0
    y_axis = torch.zeros_like(v)
    y_axis[..., 1] = 1.0
    nearly_x = v[..., 0:1].abs() > 0.9
    perpendicular = torch.linalg.cross(v, torch.where(nearly_x, y_axis, x_axis), dim=-1)
    return perpendicular / perpendicular.norm(dim=-1, keepdim=True)
