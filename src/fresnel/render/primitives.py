"""Mesh primitives shared by the families' synthetic data (avatars' head, gaze's head and eyes)."""

from __future__ import annotations

import math

import numpy as np


def icosphere(level: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A unit icosphere: `(V, 3)` float64 vertices and `(F, 3)` int64 outward faces.

    Each level splits every triangle into four at its edge midpoints (projected onto the
    sphere): `V = 10 * 4**level + 2`, `F = 20 * 4**level` (level 3: 642 / 1280).
    """
    g = (1 + math.sqrt(5)) / 2
    verts = np.array(
        [[s1, s2 * g, 0] for s1 in (-1, 1) for s2 in (-1, 1)]
        + [[0, s1, s2 * g] for s1 in (-1, 1) for s2 in (-1, 1)]
        + [[s2 * g, 0, s1] for s1 in (-1, 1) for s2 in (-1, 1)],
        dtype=np.float64,
    )
    verts /= np.linalg.norm(verts, axis=1, keepdims=True)
    # The 20 faces are the vertex triples that are pairwise nearest neighbours (edge length
    # 2 / sqrt(g^2 + 1) on the unit sphere); orient each to face outward below.
    d = np.linalg.norm(verts[:, None] - verts[None], axis=-1)
    edge = d[d > 1e-9].min()
    adj = np.abs(d - edge) < 1e-6
    faces = [
        (i, j, k)
        for i in range(12)
        for j in range(i + 1, 12)
        for k in range(j + 1, 12)
        if adj[i, j] and adj[j, k] and adj[i, k]
    ]
    faces = _orient_outward(verts, np.array(faces, dtype=np.int64))
    for _ in range(level):
        verts, faces = _subdivide(verts, faces)
    return verts, faces


def _orient_outward(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Flip faces whose normal points towards the origin (valid for a star-shaped mesh)."""
    a, b, c = (verts[faces[:, i]] for i in range(3))
    inward = (np.cross(b - a, c - a) * (a + b + c)).sum(1) < 0
    faces = faces.copy()
    faces[inward] = faces[inward][:, [0, 2, 1]]
    return faces


def _subdivide(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One 1-to-4 split; shared edges get one midpoint, and orientation is kept."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    unique, inverse = np.unique(np.sort(edges, axis=1), axis=0, return_inverse=True)
    mids = verts[unique[:, 0]] + verts[unique[:, 1]]
    mids /= np.linalg.norm(mids, axis=1, keepdims=True)
    m = inverse.reshape(3, -1) + len(verts)  # midpoint ids of edges (ab, bc, ca) per face
    a, b, c = faces.T
    ab, bc, ca = m
    new = np.stack(
        [
            np.stack([a, ab, ca], 1),
            np.stack([b, bc, ab], 1),
            np.stack([c, ca, bc], 1),
            np.stack([ab, bc, ca], 1),
        ],
        1,
    ).reshape(-1, 3)
    return np.concatenate([verts, mids]), new
