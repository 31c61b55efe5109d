"""Fresnel-inspired utilities (the guide's ``--use_fresnel_zones``, ``--use_edge_aware``,
``--use_phase_blending`` and ``--boundary_weight``), as pure batch-first tensor functions.

All of them are built from ONNX-exportable ops (no data-dependent Python control flow), so
the decoders call them inside ``forward`` and the flags become part of the exported graph.

* Zones: relative depth is min-max normalised per image and cut into ``num_zones`` equal
  bins (``zone_index``); ``quantise_depth`` snaps camera z to the centre of its bin of
  [Z_NEAR, Z_FAR]. Pixels where the zone changes get extra loss weight
  (``boundary_loss_weights`` = 1 + boundary_weight * boundary).
* Edges: ``depth_edges`` is the Sobel gradient magnitude of the per-image normalised depth,
  ramped to [0, 1]; ``apply_edge_aware`` shrinks scales and raises opacity there.
* Phase: ``phase_modulation`` multiplies opacity by 1 + a * cos(2 pi z / wavelength + phi),
  an interference-like pattern along depth, and clamps to [0, 1].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fresnel.decoder.gaussians import (
    Z_FAR,
    Z_NEAR,
    normalise_depth,
    pad_replicate,
    resize_depth,
)

# Slopes in units of the image's depth range per cell: EDGE_HIGH or more is a full edge (a
# 30 % step between neighbours); EDGE_LOW or less none at all (a full-range ramp over 20
# cells, e.g. a face's curvature at patch resolution).
EDGE_LOW = 0.05
EDGE_HIGH = 0.15


def zone_index(depth: Tensor, num_zones: int) -> Tensor:
    """(B, H, W) relative depth -> int64 zone in [0, num_zones), 0 = farthest."""
    d = normalise_depth(depth)
    return torch.clamp(torch.floor(d * num_zones), 0, num_zones - 1).long()


def zone_boundaries(depth: Tensor, num_zones: int) -> Tensor:
    """(B, H, W) bool: True where the zone differs from a 4-neighbour (both sides marked)."""
    zones = zone_index(depth, num_zones)
    dx = zones[:, :, 1:] != zones[:, :, :-1]
    dy = zones[:, 1:, :] != zones[:, :-1, :]
    boundary = torch.zeros_like(zones, dtype=torch.bool)
    boundary[:, :, 1:] |= dx
    boundary[:, :, :-1] |= dx
    boundary[:, 1:, :] |= dy
    boundary[:, :-1, :] |= dy
    return boundary


def boundary_loss_weights(
    depth: Tensor,
    num_zones: int,
    boundary_weight: float,
    size: int | tuple[int, int] | None = None,
) -> Tensor:
    """Per-pixel loss weights (B, H, W) = 1 + boundary_weight * [zone boundary].

    ``size`` is the loss (render) resolution: the depth is resized to it first (bilinear).
    """
    if size is not None:
        depth = resize_depth(depth, size)
    boundary = zone_boundaries(depth, num_zones).to(depth.dtype)
    return 1.0 + boundary_weight * boundary


def depth_edges(depth_patch: Tensor) -> Tensor:
    """(B, H, W) depth -> edge strength in [0, 1], per image and independent of depth scale.

    Sobel magnitude of the min-max normalised depth (replicate padding, so borders are no
    edges) divided by 8, i.e. the central-difference slope per cell as a fraction of the
    depth range, then ramped linearly from EDGE_LOW (0) to EDGE_HIGH (1). Normalising by the
    depth range instead of the largest gradient keeps an image without edges edge-free, and
    a constant map gives no edges.
    """
    d = pad_replicate(normalise_depth(depth_patch))
    dx = d[:, :, 2:] - d[:, :, :-2]  # (B, H + 2, W)
    dy = d[:, 2:, :] - d[:, :-2, :]  # (B, H, W + 2)
    gx = (dx[:, :-2] + 2.0 * dx[:, 1:-1] + dx[:, 2:]) / 8.0
    gy = (dy[:, :, :-2] + 2.0 * dy[:, :, 1:-1] + dy[:, :, 2:]) / 8.0
    magnitude = torch.sqrt(gx * gx + gy * gy + 1e-12)
    return torch.clamp((magnitude - EDGE_LOW) / (EDGE_HIGH - EDGE_LOW), 0.0, 1.0)


def apply_edge_aware(
    scales: Tensor,
    opacities: Tensor,
    edge: Tensor,
    scale_factor: float = 0.5,
    opacity_boost: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """Sharper Gaussians at depth edges; ``edge`` (B, N) in [0, 1] per Gaussian.

    scales *= 1 - scale_factor * edge;  opacity += opacity_boost * edge * (1 - opacity).
    """
    scales = scales * (1.0 - scale_factor * edge).unsqueeze(-1)
    opacities = opacities + opacity_boost * edge * (1.0 - opacities)
    return scales, opacities


def phase_wavelength(num_zones: int, z_near: float = Z_NEAR, z_far: float = Z_FAR) -> float:
    """Phase wavelength: one period per Fresnel zone of [z_near, z_far]."""
    return (z_far - z_near) / num_zones


def phase_modulation(
    opacities: Tensor,
    z: Tensor,
    amplitude: float,
    wavelength: float,
    phase: Tensor | float = 0.0,
) -> Tensor:
    """clamp(opacity * (1 + amplitude * cos(2 pi z / wavelength + phase)), 0, 1)."""
    wave = torch.cos(z * (2.0 * math.pi / wavelength) + phase)
    return torch.clamp(opacities * (1.0 + amplitude * wave), 0.0, 1.0)


def quantise_depth(
    z: Tensor, num_zones: int, z_near: float = Z_NEAR, z_far: float = Z_FAR
) -> Tensor:
    """Snap camera z to the centre of its zone: [z_near, z_far] cut into num_zones bins."""
    width = (z_far - z_near) / num_zones
    index = torch.clamp(torch.floor((z - z_near) / width), 0, num_zones - 1)
    return z_near + (index + 0.5) * width
