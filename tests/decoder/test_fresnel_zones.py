"""Fresnel-inspired utilities: zones, boundary weights, depth edges, edge-aware, phase."""

import math

import pytest
import torch

from fresnel.decoder import fresnel_zones as fz
from fresnel.decoder.gaussians import Z_FAR, Z_NEAR


def two_level(size=256, batch=2, near=1.0, far=0.0):
    """Relative depth (larger = closer): left half `near`, right half `far`."""
    depth = torch.full((batch, size, size), far)
    depth[:, :, : size // 2] = near
    return depth


def test_zone_index_covers_all_zones_far_to_near():
    depth = torch.linspace(0, 10, 1000).reshape(1, 1, 1000).expand(2, 3, 1000)
    zones = fz.zone_index(depth, 8)
    assert zones.dtype == torch.int64
    assert zones.min() == 0 and zones.max() == 7
    assert torch.all(zones[..., 1:] >= zones[..., :-1])  # farthest (smallest) is zone 0
    assert torch.equal(torch.bincount(zones[0, 0]), torch.full((8,), 125))


def test_zone_index_ignores_depth_scale_and_constant_maps():
    depth = torch.rand(2, 16, 16)
    assert torch.equal(fz.zone_index(depth, 6), fz.zone_index(3.0 * depth + 7.0, 6))
    assert torch.all(fz.zone_index(torch.full((1, 8, 8), 2.0), 8) == 4)  # middle zone


def test_boundary_weights_on_planted_two_level_depth():
    w = 0.1
    weights = fz.boundary_loss_weights(two_level(), num_zones=8, boundary_weight=w, size=32)
    assert weights.shape == (2, 32, 32)
    on_boundary = torch.zeros(32, dtype=torch.bool)
    on_boundary[[15, 16]] = True  # the step lies between render columns 15 and 16
    assert torch.allclose(weights[:, :, on_boundary], torch.tensor(1 + w))
    assert torch.all(weights[:, :, ~on_boundary] == 1.0)
    boundary = fz.zone_boundaries(fz.resize_depth(two_level(), 32), 8)
    assert torch.equal(boundary, (weights > 1).expand_as(boundary))


def test_boundary_weights_without_resize_and_zero_weight():
    depth = torch.rand(1, 20, 20)
    assert fz.boundary_loss_weights(depth, 4, 0.5).shape == (1, 20, 20)
    assert torch.all(fz.boundary_loss_weights(depth, 4, 0.0) == 1.0)


def test_quantise_depth_snaps_to_zone_centres():
    z = torch.linspace(Z_NEAR, Z_FAR, 1001).reshape(1, -1)
    q = fz.quantise_depth(z, 8)
    width = (Z_FAR - Z_NEAR) / 8
    centres = Z_NEAR + (torch.arange(8) + 0.5) * width
    assert torch.allclose(torch.unique(q), centres)
    assert torch.all((q - z).abs() <= width / 2 + 1e-6)
    assert torch.unique(fz.quantise_depth(z, 3)).numel() == 3


def test_depth_edges_only_at_a_step():
    assert torch.all(fz.depth_edges(torch.full((2, 37, 37), 5.0)) == 0)  # constant map
    ramp = torch.linspace(0, 1, 37).expand(2, 37, 37)  # a smooth full-range slope
    assert torch.all(fz.depth_edges(ramp) == 0)
    step = fz.resize_depth(two_level(), 37)
    edges = fz.depth_edges(step)
    assert edges.shape == (2, 37, 37) and edges.min() >= 0 and edges.max() <= 1
    columns = edges.amax(dim=(0, 1))
    assert torch.all(columns[17:20] == 1.0)  # the patch columns next to and on the step
    assert torch.all(columns[:17] == 0) and torch.all(columns[20:] == 0)
    assert torch.equal(fz.depth_edges(100 * step + 3), edges)  # scale-free


def test_apply_edge_aware_formula():
    scales = torch.rand(2, 5, 3) + 0.1
    opacities = torch.rand(2, 5)
    edge = torch.tensor([[0.0, 0.5, 1.0, 0.0, 0.25]]).expand(2, 5)
    s, o = fz.apply_edge_aware(scales, opacities, edge, scale_factor=0.5, opacity_boost=0.2)
    assert torch.allclose(s, scales * (1 - 0.5 * edge)[..., None])
    assert torch.allclose(o, opacities + 0.2 * edge * (1 - opacities))
    assert torch.equal(s[:, 0], scales[:, 0]) and torch.equal(o[:, 3], opacities[:, 3])
    assert o.max() <= 1


def test_phase_modulation_formula_and_identity():
    opacities = torch.rand(2, 100)
    z = torch.rand(2, 100) + 1.5
    wavelength = fz.phase_wavelength(8)
    assert wavelength == pytest.approx(1.0 / 8)
    out = fz.phase_modulation(opacities, z, 0.25, wavelength, phase=0.3)
    expected = opacities * (1 + 0.25 * torch.cos(2 * math.pi * z / wavelength + 0.3))
    assert torch.allclose(out, expected.clamp(0, 1), atol=1e-6)
    assert torch.equal(fz.phase_modulation(opacities, z, 0.0, wavelength), opacities)
    assert fz.phase_modulation(torch.ones(1, 1), torch.zeros(1, 1), 1.0, 1.0) == 1.0  # clamped
