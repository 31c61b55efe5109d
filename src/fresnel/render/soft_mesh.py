"""Differentiable mesh rendering in pure torch: a soft silhouette and interpolated attributes.

`soft_silhouette` follows SoftRas: each face covers a pixel with probability
sigmoid(-d / sigma), d the signed screen-space distance (pixels, negative inside) from the
pixel centre to the projected triangle, and a pixel's coverage is 1 - prod(1 - p) over faces.
Only (face, pixel) pairs within 4 sigma of the face's bounding box are evaluated, so the cost
follows the faces' screen area, not faces x pixels. Differentiable in the vertices: this is
where silhouette gradients come from.

`render_attributes` takes visibility from the z-buffer rasteriser (`fresnel.render.mesh`,
no gradient) and recomputes each covered pixel's perspective-correct barycentrics with
autograd from the projected vertices, so interpolated colours or normals are differentiable in
the vertex positions and the attributes (inside the silhouette; its edges come from the soft
silhouette).

Conventions of `fresnel.render.mesh`: `viewmat` world-to-camera (OpenCV axes), pixel (x, y)
sampled at its centre (x + 0.5, y + 0.5); faces with a vertex at z <= near are skipped.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fresnel.render.constants import NEAR_PLANE, PIXEL_CENTER
from fresnel.render.mesh import rasterize
from fresnel.render.projection import Camera

# (face, pixel) candidates evaluated at once by soft_silhouette.
SOFT_CHUNK = 1 << 20


def project(vertices: Tensor, camera: Camera, viewmat: Tensor) -> tuple[Tensor, Tensor]:
    """(V, 2) pixel coordinates and (V,) camera z of world-space vertices."""
    cam = vertices @ viewmat[:3, :3].T.to(vertices) + viewmat[:3, 3].to(vertices)
    z = cam[:, 2]
    safe = torch.where(z > NEAR_PLANE, z, torch.ones_like(z))
    uv = torch.stack([camera.fx * cam[:, 0] / safe + camera.cx,
                      camera.fy * cam[:, 1] / safe + camera.cy], -1)  # fmt: skip
    return uv, z


def _segment_distance(p: Tensor, a: Tensor, b: Tensor) -> Tensor:
    ab = b - a
    t = ((p - a) * ab).sum(-1) / (ab * ab).sum(-1).clamp(min=1e-12)
    closest = a + t.clamp(0, 1)[..., None] * ab
    return (p - closest).norm(dim=-1)


def _signed_distance(p: Tensor, tri: Tensor) -> Tensor:
    """Signed distance (negative inside) from points p (K, 2) to triangles tri (K, 3, 2);
    either winding counts as inside."""
    a, b, c = tri.unbind(1)
    dist = torch.stack([_segment_distance(p, a, b), _segment_distance(p, b, c),
                        _segment_distance(p, c, a)]).min(0).values  # fmt: skip

    def edge(u, v):
        return (v[:, 0] - u[:, 0]) * (p[:, 1] - u[:, 1]) - (v[:, 1] - u[:, 1]) * (p[:, 0] - u[:, 0])

    e = torch.stack([edge(a, b), edge(b, c), edge(c, a)], -1)
    inside = (e >= 0).all(-1) | (e <= 0).all(-1)
    return torch.where(inside, -dist, dist)


def soft_silhouette(vertices: Tensor, faces: Tensor, camera: Camera, viewmat: Tensor,
                    sigma: float = 0.5) -> Tensor:  # fmt: skip
    """(H, W) soft coverage in [0, 1] of the mesh; sigma in pixels."""
    uv, z = project(vertices, camera, viewmat)
    keep = (z[faces] > NEAR_PLANE).all(1)
    faces = faces[keep]
    tri = uv[faces]  # (F, 3, 2)
    margin = 4.0 * sigma
    with torch.no_grad():
        lo = (tri.min(1).values - margin - PIXEL_CENTER).ceil().long()
        hi = (tri.max(1).values + margin - PIXEL_CENTER).floor().long()
        lo[:, 0].clamp_(0, camera.width - 1)
        lo[:, 1].clamp_(0, camera.height - 1)
        hi[:, 0].clamp_(-1, camera.width - 1)
        hi[:, 1].clamp_(-1, camera.height - 1)
        size = (hi - lo + 1).clamp(min=0)
        face_ids, pix = _candidates(lo, size, camera.width)
    log_empty = uv.new_zeros(camera.height * camera.width)
    for start in range(0, len(face_ids), SOFT_CHUNK):
        f, q = face_ids[start : start + SOFT_CHUNK], pix[start : start + SOFT_CHUNK]
        centre = torch.stack([q % camera.width, q // camera.width], -1).to(uv) + PIXEL_CENTER
        d = _signed_distance(centre, tri[f])
        log_miss = torch.nn.functional.logsigmoid(d / sigma)  # log(1 - sigmoid(-d / sigma))
        log_empty = log_empty.index_add(0, q, log_miss)
    return (1 - log_empty.exp()).reshape(camera.height, camera.width)


def _candidates(lo: Tensor, size: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """(face id, flat pixel index) of every pixel in each face's box [lo, lo + size)."""
    counts = size[:, 0] * size[:, 1]
    face_ids = torch.repeat_interleave(torch.arange(len(lo)), counts)
    starts = torch.cumsum(counts, 0) - counts
    local = torch.arange(int(counts.sum())) - starts[face_ids]
    w = size[face_ids, 0].clamp(min=1)
    x = lo[face_ids, 0] + local % w
    y = lo[face_ids, 1] + local // w
    return face_ids, y * width + x


def render_attributes(vertices: Tensor, faces: Tensor, attributes: Tensor, camera: Camera,
                      viewmat: Tensor) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(H, W, C) per-vertex `attributes` (V, C) interpolated with perspective-correct
    barycentrics (zeros where no face) and the (H, W) bool coverage mask."""
    raster = rasterize(vertices.detach(), faces, camera, viewmat)
    covered = raster.face_ids >= 0
    ys, xs = torch.nonzero(covered, as_tuple=True)
    face = faces[raster.face_ids[ys, xs]]  # (P, 3)
    uv, z = project(vertices, camera, viewmat)
    p = torch.stack([xs, ys], -1).to(uv) + PIXEL_CENTER
    a, b, c = uv[face[:, 0]], uv[face[:, 1]], uv[face[:, 2]]

    def cross(u, v):
        return u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]

    area = cross(b - a, c - a)
    area = torch.where(area.abs() < 1e-12, torch.full_like(area, 1e-12), area)
    screen = torch.stack([cross(b - p, c - p), cross(c - p, a - p), cross(a - p, b - p)], -1)
    screen = screen / area[:, None]
    perspective = screen / z[face]
    weights = perspective / perspective.sum(-1, keepdim=True)
    values = (weights[..., None] * attributes[face]).sum(1)
    image = attributes.new_zeros(camera.height, camera.width, attributes.shape[-1])
    image = image.index_put((ys, xs), values)
    return image, covered
