"""Z-buffered triangle rasterisation of meshes on the CPU (or any torch device), in pure torch.

One implementation shared by every family that needs to know which triangle each pixel sees:
GaussianAvatars' region-adaptive loss (per-face labels) and VPOG's template renderer (RGB,
depth and mask of textured meshes). `rasterize` gives per pixel the nearest face, its
perspective-correct barycentrics and its depth; `interpolate` turns per-vertex or per-corner
attributes (colours, UVs, normals, positions) into images with those barycentrics.

Conventions are those of `fresnel.render.projection`: `viewmat` is world-to-camera with OpenCV
axes (x right, y down, z forward), u = fx X / Z + cx, v = fy Y / Z + cy, and pixel (x, y) is
sampled at its centre (x + 0.5, y + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor

from fresnel.render.constants import NEAR_PLANE, PIXEL_CENTER
from fresnel.render.projection import Camera

BACKGROUND = -1  # face id of pixels no triangle covers
# Inclusive barycentric test: a pixel centre on an edge shared by two triangles passes for
# both despite rounding, so a closed mesh has no holes (either triangle may take the pixel).
INSIDE_EPS = 1e-7
# Pixels of slack around each face's bounding box, so the inclusive test above decides.
BOX_SLACK = 1e-6
# (face, pixel) candidates evaluated at once: bounds memory (about 100 bytes per candidate).
CHUNK_CANDIDATES = 1 << 21

_FACE_BITS = 24  # the z-buffer key's low bits hold the face id (at most 2**24 - 1 faces)
_FACE_MASK = (1 << _FACE_BITS) - 1


@dataclass(frozen=True)
class MeshRaster:
    """What each pixel of one view sees of a mesh.

    face_ids: (H, W) long, the nearest face covering the pixel centre, -1 (BACKGROUND) for none.
    barycentrics: (H, W, 3) perspective-correct weights of the face's three corners: the
        weights that interpolate vertex attributes linearly in 3D (the camera-space point they
        give projects onto the pixel centre). They sum to 1; zeros where no face. A corner's
        weight may be slightly negative (>= about -1e-7) on an edge, by the inclusive test.
    depth: (H, W) camera-space z of that point, 0 where no face.

    Barycentrics and depth are computed in float64 on first use (callers that need only face
    ids do not pay for them) and returned in the vertices' floating dtype (float64 for integer
    vertices).
    """

    face_ids: Tensor
    camera: Camera
    _planes: Tensor = field(repr=False)  # (F, 4, 3) from _plane_coefficients
    _inv_depth: Tensor = field(repr=False)  # (F, 3) 1/z of the corners
    _dtype: torch.dtype = field(repr=False)

    @property
    def mask(self) -> Tensor:
        """(H, W) bool: the pixels some face covers."""
        return self.face_ids >= 0

    @property
    def barycentrics(self) -> Tensor:
        return self._surface[0]

    @property
    def depth(self) -> Tensor:
        return self._surface[1]

    @cached_property
    def _surface(self) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            bary, depth = _surface_at_pixels(
                self.face_ids, self._planes, self._inv_depth, self.camera
            )
        return bary.to(self._dtype), depth.to(self._dtype)


@torch.no_grad()
def rasterize(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    viewmat: Tensor,
    *,
    near: float = NEAR_PLANE,
    chunk_candidates: int = CHUNK_CANDIDATES,
) -> MeshRaster:
    """Rasterise the triangles `faces` (F, 3) of `vertices` (V, 3, world space) into `camera`.

    Each pixel centre takes the nearest triangle whose projection covers it. Both windings
    count (no backface culling). Depth is perspective-correct: 1/z interpolated with
    screen-space barycentrics, the nearest being the largest 1/z; depths within about 4e-9
    (relative) of each other tie, and ties go to the lower face id. Triangles with a vertex at
    camera z <= `near` (metres; the renderer's NEAR_PLANE) are skipped whole rather than
    clipped. Work is bounded by the faces' pixel bounding boxes, evaluated `chunk_candidates`
    (face, pixel) pairs at a time.

    Measured: 1.5 ms for SyntheticHead (1280 faces) at 64x64, 8 ms at 256x256 and 45 ms at
    512x512, on a 2-core AMD EPYC CPU (torch 2.15, 2 threads); barycentrics and depth, computed
    on first use, add about 4 ms at 512x512 (92k covered pixels).
    """
    if faces.shape[0] > _FACE_MASK:
        raise ValueError(f"at most {_FACE_MASK} faces, got {faces.shape[0]}")
    cam = vertices.double() @ viewmat[:3, :3].double().T + viewmat[:3, 3].double()
    in_front = cam[:, 2] > near
    z = torch.where(in_front, cam[:, 2], 1.0)  # keeps the skipped faces' numbers finite
    u, v = camera.fx * cam[:, 0] / z + camera.cx, camera.fy * cam[:, 1] / z + camera.cy
    corners, inv_depth = torch.stack((u, v), -1)[faces], 1.0 / z[faces]  # (F, 3, 2), (F, 3)
    keep = in_front[faces].all(1)
    coeffs, area = _plane_coefficients(corners, inv_depth)
    keep &= area.abs() > 1e-12  # edge-on triangles cover no pixel centre
    face_ids = _nearest_faces(coeffs, _pixel_boxes(corners, camera), keep, camera, chunk_candidates)
    dtype = vertices.dtype if vertices.is_floating_point() else torch.float64
    return MeshRaster(face_ids, camera, coeffs, inv_depth, dtype)


def interpolate(raster: MeshRaster, attributes: Tensor, faces: Tensor) -> Tensor:
    """`(H, W, C)`: per-vertex `(V, C)` or per-corner `(F, 3, C)` attributes interpolated with
    the raster's perspective-correct barycentrics, zeros where no face. Differentiable in the
    attributes; the result has the promoted dtype of attributes and barycentrics."""
    corner_values = attributes[faces] if attributes.dim() == 2 else attributes
    if corner_values.shape[:2] != (faces.shape[0], 3):
        raise ValueError(f"attributes must be (V, C) or (F, 3, C), got {tuple(attributes.shape)}")
    dtype = torch.promote_types(corner_values.dtype, raster.barycentrics.dtype)
    covered = raster.face_ids >= 0
    values = corner_values.to(dtype)[raster.face_ids.clamp(min=0)]  # (H, W, 3, C)
    weights = raster.barycentrics.to(dtype) * covered[..., None]
    return (weights[..., None] * values).sum(-2)


def _nearest_faces(
    coeffs: Tensor, boxes: Tensor, keep: Tensor, camera: Camera, chunk_candidates: int
) -> Tensor:
    """`(H, W)` long: the z-buffer's winner per pixel over the kept faces, -1 for none."""
    counts = torch.where(keep, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 0)
    keys = torch.full((camera.height * camera.width,), -1, dtype=torch.long, device=coeffs.device)
    ends = counts.cumsum(0)
    total = int(ends[-1]) if len(ends) else 0
    for start in range(0, total, chunk_candidates):
        index = torch.arange(start, min(start + chunk_candidates, total), device=coeffs.device)
        face = torch.searchsorted(ends, index, right=True)
        local = index - (ends[face] - counts[face])
        width = boxes[face, 2] - boxes[face, 0]
        px, py = boxes[face, 0] + local % width, boxes[face, 1] + local // width
        _depth_test(keys, face, px, py, coeffs[face], camera.width)
    face_ids = torch.where(keys < 0, BACKGROUND, _FACE_MASK - (keys & _FACE_MASK))
    return face_ids.reshape(camera.height, camera.width)


def _surface_at_pixels(
    face_ids: Tensor, coeffs: Tensor, inv_depth: Tensor, camera: Camera
) -> tuple[Tensor, Tensor]:
    """The winning faces' perspective-correct barycentrics `(H, W, 3)` and depth `(H, W)`.

    Screen-space barycentrics b_i are affine in the pixel; the 3D weights are b_i / z_i
    normalised, and their normaliser sum_i b_i / z_i is the interpolated 1/z."""
    flat = face_ids.reshape(-1)
    pixel = (flat >= 0).nonzero()[:, 0]
    face = flat[pixel]
    x = (pixel % camera.width + PIXEL_CENTER).to(coeffs)[:, None]
    y = (pixel // camera.width + PIXEL_CENTER).to(coeffs)[:, None]
    plane = coeffs[face]  # (N, 4, 3)
    values = plane[:, :, 0] * x + plane[:, :, 1] * y + plane[:, :, 2]  # (N, 4): b0..b2, 1/z
    weighted = values[:, :3] * inv_depth[face]
    count = camera.height * camera.width
    barycentrics = coeffs.new_zeros((count, 3)).index_copy_(
        0, pixel, weighted / weighted.sum(1, keepdim=True)
    )
    depth = coeffs.new_zeros(count).index_copy_(0, pixel, 1.0 / values[:, 3])
    shape = (camera.height, camera.width)
    return barycentrics.reshape(*shape, 3), depth.reshape(shape)


def _plane_coefficients(corners: Tensor, inv_depth: Tensor) -> tuple[Tensor, Tensor]:
    """Per face, the three barycentrics and 1/z as affine functions a x + b y + c of the
    screen point: `(F, 4, 3)` rows (b0, b1, b2, 1/z) of (a, b, c), and the signed area x 2."""
    p0, p1, p2 = corners.unbind(1)
    edges = []
    for a, b in ((p1, p2), (p2, p0), (p0, p1)):  # edge opposite each vertex
        dx, dy = b[:, 0] - a[:, 0], b[:, 1] - a[:, 1]
        edges.append(torch.stack((-dy, dx, dy * a[:, 0] - dx * a[:, 1]), -1))
    edge = torch.stack(edges, 1)  # (F, 3, 3): w_i(x, y) = edge[:, i] . (x, y, 1)
    area = (edge[:, 0] * torch.cat((p0, torch.ones_like(p0[:, :1])), -1)).sum(-1)
    safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
    bary = edge / safe[:, None, None]  # dividing by the signed area accepts both windings
    depth = (bary * inv_depth[:, :, None]).sum(1, keepdim=True)
    return torch.cat((bary, depth), 1), area


def _pixel_boxes(corners: Tensor, camera: Camera) -> Tensor:
    """`(F, 4)` long (x0, y0, x1, y1), half-open, clamped to the image: the pixels whose
    centres lie in each triangle's bounding box (or within BOX_SLACK of it)."""
    low = (corners.amin(1) - PIXEL_CENTER - BOX_SLACK).ceil()
    high = (corners.amax(1) - PIXEL_CENTER + BOX_SLACK).floor() + 1
    size = corners.new_tensor([camera.width, camera.height])
    low = torch.minimum(low.clamp(min=0), size).long()
    high = torch.maximum(torch.minimum(high, size), low.double()).long()
    return torch.cat((low, high), 1)


def _depth_test(keys: Tensor, face: Tensor, px: Tensor, py: Tensor, coeffs: Tensor, width: int):
    """Scatter the candidates that cover their pixel centre into the z-buffer `keys`.

    A key packs 1/z (the bits of a positive float64 order like the number; the lowest 24 are
    dropped) above the inverted face id, so one `amax` keeps the nearest face and, on a depth
    tie, the lowest id."""
    point = torch.stack((px + PIXEL_CENTER, py + PIXEL_CENTER, torch.ones_like(px)), -1)
    values = torch.bmm(coeffs, point.to(coeffs)[:, :, None])[:, :, 0]  # (N, 4): b0..b2, 1/z
    inside = (values[:, :3] >= -INSIDE_EPS).all(1)
    depth_bits = values[inside, 3].view(torch.long) >> _FACE_BITS << _FACE_BITS
    key = depth_bits | (_FACE_MASK - face[inside])
    pixel = py[inside] * width + px[inside]
    keys.scatter_reduce_(0, pixel, key, "amax")
