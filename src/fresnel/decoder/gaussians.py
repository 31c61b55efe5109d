"""Packed Gaussian layout, the decoder's camera convention and its depth prior.

Packed layout: every decoder returns one float32 tensor (B, N, 14), per Gaussian

    [x, y, z, sx, sy, sz, qw, qx, qy, qz, opacity, r, g, b]

in CAMERA space (OpenCV pinhole: x right, y down, z forward, camera at the origin). Scales
are positive standard deviations along the Gaussian's local axes, quaternions are unit wxyz,
opacity and colours lie in [0, 1]. This is also the row layout of ``out.bin`` written by
decoder inference and the output of the ONNX export.

Gaussians are patch-major: with K = k_side**2 Gaussians per DINOv2 patch, Gaussian
``patch * K + sub`` belongs to patch ``patch = row * 37 + col`` and sub-cell
``sub = i * k_side + j`` (row-major inside the patch), so the first k Gaussians of every
patch are ``packed.view(B, 37 * 37, K, 14)[:, :, :k]``.

Camera: a fixed field of view (FOV_DEGREES, horizontal = vertical, square images) shared by
decoder and trainer; pixel x covers [x, x + 1), so the principal point is (W/2, H/2).

Depth prior (``depth_to_z``): the input is relative inverse depth (Depth Anything V2: larger
= closer, arbitrary scale and offset). Per image it is min-max normalised to d in [0, 1] and
mapped linearly to z = Z_FAR - (Z_FAR - Z_NEAR) * d, so the nearest point sits at Z_NEAR and
the farthest at Z_FAR; a constant map (no depth information) maps to the middle, Z_MID.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PACKED_DIM = 14
MEANS = slice(0, 3)
SCALES = slice(3, 6)
QUATS = slice(6, 10)
OPACITY = 10  # a single column: packed[..., OPACITY] is (B, N)
OPACITIES = slice(10, 11)
COLORS = slice(11, 14)
FIELDS = ("means", "scales", "quats", "opacities", "colors")

GRID = 37  # DINOv2 patches per side of a 518 x 518 image
NUM_PATCHES = GRID * GRID
FEATURE_DIM = 384
DEPTH_SIZE = 256  # nominal depth-map side; any size is accepted

FOV_DEGREES = 50.0
TAN_HALF_FOV = math.tan(math.radians(FOV_DEGREES) / 2)
Z_NEAR = 1.5
Z_FAR = 2.5
Z_MID = 0.5 * (Z_NEAR + Z_FAR)
DEPTH_EPS = 1e-6  # a depth range below this counts as a constant map


def unpack(packed: Tensor) -> dict[str, Tensor]:
    """Split (..., N, 14) into means, scales, quats (..., N, 3|4), opacities (..., N), colors."""
    return {
        "means": packed[..., MEANS],
        "scales": packed[..., SCALES],
        "quats": packed[..., QUATS],
        "opacities": packed[..., OPACITY],
        "colors": packed[..., COLORS],
    }


def pack(means: Tensor, scales: Tensor, quats: Tensor, opacities: Tensor, colors: Tensor) -> Tensor:
    """Inverse of ``unpack``: concatenate the fields into (..., N, 14)."""
    return torch.cat([means, scales, quats, opacities.unsqueeze(-1), colors], dim=-1)


def intrinsics(width: int, height: int) -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) of the shared camera for a square render of width x height pixels."""
    focal = width / (2.0 * TAN_HALF_FOV)
    return focal, focal, width / 2.0, height / 2.0


def ray_slope_per_patch(grid: int = GRID) -> float:
    """Width of one patch in ray-slope units (x/z), i.e. world width of a patch at z = 1."""
    return 2.0 * TAN_HALF_FOV / grid


def subcell_rays(side: int) -> Tensor:
    """(side, side, 3) unit-z rays (x/z, y/z, 1) through the centres of a side x side grid."""
    centres = (torch.arange(side, dtype=torch.float64) + 0.5) / side  # in [0, 1]
    slope = (2.0 * centres - 1.0) * TAN_HALF_FOV
    y, x = torch.meshgrid(slope, slope, indexing="ij")
    return torch.stack([x, y, torch.ones_like(x)], dim=-1).float()


def to_patch_major(grid_map: Tensor, k_side: int, grid: int = GRID) -> Tensor:
    """(B, grid*k, grid*k, C...) sub-cell map -> (B, grid*grid*k*k, C...) in patch-major order."""
    batch, rest = grid_map.shape[0], grid_map.shape[3:]
    x = grid_map.reshape(batch, grid, k_side, grid, k_side, *rest)
    x = x.transpose(2, 3)  # (B, row, col, i, j, ...)
    return x.reshape(batch, grid * grid * k_side * k_side, *rest)


def patch_rays(grid: int = GRID, k_side: int = 2) -> Tensor:
    """(grid*grid*K, 3) rays (x/z, y/z, 1) through sub-cell centres, patch-major, K = k_side^2."""
    rays = subcell_rays(grid * k_side).unsqueeze(0)
    return to_patch_major(rays, k_side, grid)[0]


def resize_depth(depth: Tensor, size: int | tuple[int, int]) -> Tensor:
    """(B, H, W) -> (B, *size) with plain bilinear interpolation (exports to ONNX Resize)."""
    if isinstance(size, int):
        size = (size, size)
    out = F.interpolate(
        depth.unsqueeze(1), size=size, mode="bilinear", align_corners=False, antialias=False
    )
    return out[:, 0]  # not squeeze(1): on a dynamic batch that exports as an ONNX If


def pad_replicate(x: Tensor) -> Tensor:
    """Pad the last two dims by one, repeating the border (exports as Concat, unlike F.pad)."""
    x = torch.cat([x[..., :1, :], x, x[..., -1:, :]], dim=-2)
    return torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)


def patch_depth(depth: Tensor, grid: int = GRID) -> Tensor:
    """(B, H, W) relative depth -> (B, grid, grid) at patch resolution."""
    return resize_depth(depth, grid)


def normalise_depth(depth: Tensor) -> Tensor:
    """Per-image min-max normalisation of (B, ...) to [0, 1]; a constant map gives 0.5."""
    flat = depth.flatten(1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    shape = (-1,) + (1,) * (depth.dim() - 1)
    lo, span = lo.reshape(shape), (hi - lo).reshape(shape)
    d = (depth - lo) / span.clamp_min(DEPTH_EPS)
    return torch.where(span > DEPTH_EPS, d, torch.full_like(d, 0.5))


def depth_to_z(depth_patch: Tensor, z_near: float = Z_NEAR, z_far: float = Z_FAR) -> Tensor:
    """Relative inverse depth (B, ...) -> camera z in [z_near, z_far], nearest at z_near."""
    return z_far - (z_far - z_near) * normalise_depth(depth_patch)


def subcell_z(depth: Tensor, k_side: int, grid: int = GRID) -> Tensor:
    """Prior z of every Gaussian, (B, grid*grid*K): depth sampled at sub-cell resolution."""
    z = depth_to_z(resize_depth(depth, grid * k_side))
    return to_patch_major(z, k_side, grid)


def per_gaussian(patch_values: Tensor, k: int) -> Tensor:
    """(B, grid, grid) or (B, P) per-patch values -> (B, P*K), repeated for each sub-cell."""
    flat = patch_values.reshape(patch_values.shape[0], -1, 1)
    return flat.expand(-1, -1, k).reshape(patch_values.shape[0], -1)


def select_per_patch(packed: Tensor, k_active: int, k_total: int) -> Tensor:
    """First ``k_active`` Gaussians of every patch of (B, P*k_total, C) -> (B, P*k_active, C).

    Used for progressive growing (1 -> 2 -> 4 per patch); the model's forward is unchanged.
    """
    if not 1 <= k_active <= k_total:
        raise ValueError(f"k_active must be in [1, {k_total}], got {k_active}")
    batch, n, channels = packed.shape
    if n % k_total:
        raise ValueError(f"{n} Gaussians are not a multiple of k_total={k_total}")
    grouped = packed.reshape(batch, n // k_total, k_total, channels)
    return grouped[:, :, :k_active].reshape(batch, -1, channels)
