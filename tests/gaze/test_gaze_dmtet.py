"""Known answers for the tetrahedral grid and differentiable marching tetrahedra."""

import math

import pytest
import torch
from torch.autograd import gradcheck

from fresnel.gaze.dmtet import marching_tetrahedra, tet_grid


def _tet_volumes(v, t):
    a, b, c, d = (v[t[:, i]] for i in range(4))
    return torch.linalg.det(torch.stack([b - a, c - a, d - a], 1)) / 6


def test_the_tets_tile_the_box():
    v, t = tet_grid(4, (1.0, 2.0, 0.5))
    assert v.shape == (125, 3) and t.shape == (6 * 64, 4)
    vol = _tet_volumes(v.double(), t).abs()
    assert (vol > 0).all()
    assert vol.sum().item() == pytest.approx(2.0 * 4.0 * 1.0, rel=1e-6)


def _sphere(radius=0.6512, resolution=20):
    v, t = tet_grid(resolution, 1.0)
    return v, t, marching_tetrahedra(v, t, v.norm(dim=-1) - radius)


def test_a_sphere_is_closed_oriented_and_the_right_size():
    radius = 0.6512  # no grid vertex on the surface (an SDF of exactly 0 gives slivers)
    _, _, (p, f) = _sphere(radius)
    r = p.norm(dim=1)
    cell = 2.0 / 20
    assert (r - radius).abs().max() < 0.05 * cell  # linear interpolation of a convex SDF
    edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    _, undirected = torch.unique(torch.sort(edges, 1).values, dim=0, return_counts=True)
    _, directed = torch.unique(edges, dim=0, return_counts=True)
    assert (undirected == 2).all() and (directed == 1).all()  # closed, consistently wound
    a, b, c = p[f[:, 0]], p[f[:, 1]], p[f[:, 2]]
    volume = (a * torch.cross(b, c, dim=-1)).sum() / 6
    assert abs(volume / (4 / 3 * math.pi * radius**3) - 1) < 0.03  # positive: normals outward


def test_no_surface_without_a_sign_change():
    v, t = tet_grid(3, 1.0)
    p, f = marching_tetrahedra(v, t, torch.ones(len(v)))
    assert p.shape == (0, 3) and f.shape == (0, 3)


def test_vertices_are_differentiable_in_sdf_and_grid():
    v, t = tet_grid(3, 1.0)
    sdf = (v.norm(dim=-1) - 0.61).double().requires_grad_()
    grid = v.double().requires_grad_()
    assert gradcheck(lambda s, g: marching_tetrahedra(g, t, s)[0], (sdf, grid))
