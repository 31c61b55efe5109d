"""A tetrahedral grid and differentiable marching tetrahedra (DMTet's surface extraction).

`tet_grid` fills a box with cubes, each split into 6 tetrahedra along its main diagonal (the
Kuhn split: neighbouring cubes share faces, so the tetrahedra tile the box). Given an SDF at the
grid vertices (negative inside), `marching_tetrahedra` puts one mesh vertex on every tet edge
whose ends differ in sign, at the zero of the linear interpolation, shared by the tets around
that edge; each tet then gives one triangle (one corner on the other side) or two (two and
two). Vertex positions are differentiable in the SDF values and in the grid positions (DMTet
deforms its grid); which triangles exist is not. Triangles are oriented geometrically: their
normal points from the inside corners of their tet towards the outside ones.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor

# The 6 tets of a unit cube: for each order of the axes, the path 0 -> 7 along them.
_CUBE_TETS = [[0, 1 << a, (1 << a) | (1 << b), 7] for a, b, _ in itertools.permutations(range(3))]


def tet_grid(resolution: int, extent) -> tuple[Tensor, Tensor]:
    """(V, 3) vertices of a resolution^3-cube grid over [-extent, extent] (per axis when a
    3-sequence) and (T, 4) long tetrahedra, T = 6 resolution^3."""
    n = resolution + 1
    ext = torch.as_tensor(extent, dtype=torch.float32).expand(3)
    axes = [torch.linspace(-float(e), float(e), n) for e in ext]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    idx = torch.arange(n**3).reshape(n, n, n)[:-1, :-1, :-1].reshape(-1)
    corner_offsets = torch.tensor(
        [(c & 1) * n * n + ((c >> 1) & 1) * n + ((c >> 2) & 1) for c in range(8)]
    )
    corners = idx[:, None] + corner_offsets  # (cubes, 8), corner bit k = +1 along axis k
    tets = corners[:, torch.tensor(_CUBE_TETS)].reshape(-1, 4)
    return grid, tets


def _edge_vertices(verts: Tensor, sdf: Tensor, pairs: Tensor) -> tuple[Tensor, Tensor]:
    """Unique crossing edges of `pairs` (E, 2) -> their zero-crossing points and the index of
    each pair into them."""
    keys = torch.sort(pairs, dim=1).values
    unique, inverse = torch.unique(keys, dim=0, return_inverse=True)
    sa, sb = sdf[unique[:, 0]], sdf[unique[:, 1]]
    t = (sa / (sa - sb))[:, None]
    points = verts[unique[:, 0]] + t * (verts[unique[:, 1]] - verts[unique[:, 0]])
    return points, inverse


def marching_tetrahedra(vertices: Tensor, tets: Tensor, sdf: Tensor) -> tuple[Tensor, Tensor]:
    """Surface of {sdf < 0}: (M, 3) vertices and (F, 3) long faces, outward normals."""
    inside = sdf[tets] < 0  # (T, 4)
    count = inside.sum(1)
    ones_or_threes = tets[(count == 1) | (count == 3)]
    twos = tets[count == 2]
    # One odd corner k: a triangle on its three edges (k, j).
    odd_in = (sdf[ones_or_threes] < 0).sum(1) == 1
    odd_mask = (sdf[ones_or_threes] < 0) == odd_in[:, None]
    k = odd_mask.float().argmax(1)
    others = torch.tensor([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[k]
    tri_pairs = torch.stack(
        [torch.stack([ones_or_threes.gather(1, k[:, None])[:, 0],
                      ones_or_threes.gather(1, others[:, i : i + 1])[:, 0]], -1)
         for i in range(3)], 1)  # fmt: skip
    # Two and two: corners a, b inside, c, d outside; the quad (ac, ad, bd, bc).
    order = torch.argsort((sdf[twos] >= 0).to(torch.int8), dim=1, stable=True)
    a, b, c, d = (twos.gather(1, order[:, i : i + 1])[:, 0] for i in range(4))
    quad = torch.stack([torch.stack(p, -1) for p in ((a, c), (a, d), (b, d), (b, c))], 1)
    quad_tris = torch.cat([quad[:, [0, 1, 2]], quad[:, [0, 2, 3]]])
    pairs = torch.cat([tri_pairs, quad_tris]).reshape(-1, 2)
    if len(pairs) == 0:
        return vertices.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long)
    points, inverse = _edge_vertices(vertices, sdf, pairs)
    faces = inverse.reshape(-1, 3)
    tet_of_face = torch.cat([ones_or_threes, twos, twos])
    return points, _orient(points, faces, vertices, sdf, tet_of_face)


def _orient(points: Tensor, faces: Tensor, vertices: Tensor, sdf: Tensor, tets: Tensor) -> Tensor:
    """Flip faces whose normal points from outside corners to inside ones."""
    with torch.no_grad():
        p = points[faces]
        normal = torch.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)
        inside = (sdf[tets] < 0).float()[..., None]
        corners = vertices[tets]
        centre_in = (corners * inside).sum(1) / inside.sum(1)
        centre_out = (corners * (1 - inside)).sum(1) / (1 - inside).sum(1)
        flip = (normal * (centre_out - centre_in)).sum(-1) < 0
    return torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
