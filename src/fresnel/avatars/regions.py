"""Per-pixel facial-region weights for GaussianAvatars' region-adaptive loss.

The guide weighs the photometric loss more on the eyes, nose and mouth. Where those are in an
image comes from the driving head mesh: its per-face region labels (`face_regions`, indices
into `fresnel.avatars.head.REGIONS`) rasterised with a z-buffer from the training camera, so
the weights follow the mesh through every pose and expression. The rasteriser itself is
`fresnel.render.mesh`, shared with the other families.

Conventions are those of `fresnel.render.projection`: `viewmat` is world-to-camera with OpenCV
axes (x right, y down, z forward), u = fx X / Z + cx, v = fy Y / Z + cy, and pixel (x, y) is
sampled at its centre (x + 0.5, y + 0.5).
"""

from __future__ import annotations

import torch
from torch import Tensor

from fresnel.avatars.head import REGION_INDEX, REGIONS
from fresnel.render.constants import NEAR_PLANE
from fresnel.render.mesh import BACKGROUND, CHUNK_CANDIDATES, rasterize
from fresnel.render.projection import Camera


def rasterize_faces(
    vertices: Tensor,
    faces: Tensor,
    camera: Camera,
    viewmat: Tensor,
    *,
    near: float = NEAR_PLANE,
    chunk_candidates: int = CHUNK_CANDIDATES,
) -> Tensor:
    """`(H, W)` long: the nearest triangle whose projection covers each pixel centre, -1
    (BACKGROUND) where none does; `fresnel.render.mesh.rasterize`'s face ids (its docstring
    has the rules: both windings, perspective-correct depth, ties to the lower face id, faces
    through the near plane skipped, timings)."""
    return rasterize(
        vertices, faces, camera, viewmat, near=near, chunk_candidates=chunk_candidates
    ).face_ids


def region_map(face_ids: Tensor, face_regions: Tensor) -> Tensor:
    """`(H, W)` long: the region (index into REGIONS) of each pixel's face, -1 on background."""
    covered = face_ids >= 0
    regions = face_regions.to(face_ids.device)[face_ids.clamp(min=0)]
    return torch.where(covered, regions, BACKGROUND)


def region_weight_map(face_ids: Tensor, face_regions: Tensor, weights: Tensor) -> Tensor:
    """`(H, W)` float: the loss weight of each pixel's region (`weights` indexed by region);
    background pixels (face id -1) weigh 1.0."""
    regions = region_map(face_ids, face_regions)
    weights = weights.to(face_ids.device)
    pixel_weights = weights[regions.clamp(min=0)]
    return torch.where(regions >= 0, pixel_weights, torch.ones_like(pixel_weights))


def region_weights(eyes: float, mouth: float, nose: float) -> Tensor:
    """`(len(REGIONS),)` weights in REGIONS order; skin (and every other region) weighs 1.0."""
    weights = torch.ones(len(REGIONS))
    for name, value in (("eyes", eyes), ("mouth", mouth), ("nose", nose)):
        weights[REGION_INDEX[name]] = value
    return weights
