"""RGB, depth and mask of a textured mesh at a pose: VPOG's CPU renderer for templates and queries.

Built on `fresnel.render.mesh` (z-buffered rasterisation with perspective-correct barycentrics),
so it runs anywhere torch does, without OpenGL.

Conventions (those of `fresnel.vpog.flow`)
- `pose` (4x4) maps object into camera coordinates, X_cam = R X_obj + t, OpenCV camera axes
  (x right, y down, z forward); K (3, 3) is a pinhole without skew: u = fx X / Z + cx.
- Pixel (row i, col j) has its centre at (u, v) = (j + 0.5, i + 0.5): K is used as given.
- Depth is the camera-frame Z of the surface (not the length of the ray); 0 on background.
- UVs are OBJ's: u to the right, v *up*, so v = 0 is the bottom row of the texture; texel
  (row r, col c) has its centre at ((c + 0.5) / Tw, 1 - (r + 0.5) / Th). Sampling is bilinear
  and clamps to the edge: UVs outside [0, 1] take the border texels (no wrapping).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fresnel.render.mesh import interpolate, rasterize
from fresnel.render.projection import Camera


@dataclass(frozen=True)
class MeshRender:
    """One view: rgb (3, H, W) with the background where no face, depth (H, W) camera z (0 on
    background), mask (H, W) bool (the pixels the mesh covers)."""

    rgb: Tensor
    depth: Tensor
    mask: Tensor


def camera_from_intrinsics(K: Tensor, width: int, height: int) -> Camera:
    """The `fresnel.render` camera of a skew-free pinhole K for an image of width x height."""
    K = torch.as_tensor(K, dtype=torch.float64)
    if K.shape != (3, 3) or float(K[0, 1]) != 0.0:
        raise ValueError(f"K must be a (3, 3) pinhole without skew, got {K.tolist()}")
    fx, fy, cx, cy = (float(K[i, j]) for i, j in ((0, 0), (1, 1), (0, 2), (1, 2)))
    return Camera(fx, fy, cx, cy, width, height)


def render_mesh(
    vertices: Tensor,
    faces: Tensor,
    K: Tensor,
    pose: Tensor,
    width: int,
    height: int,
    *,
    vertex_colors: Tensor | None = None,
    uv: Tensor | None = None,
    texture: Tensor | None = None,
    background: float | Sequence[float] = 0.0,
) -> MeshRender:
    """Render `faces` (F, 3) of `vertices` (V, 3, object frame) seen from `pose`.

    Colour comes from `vertex_colors` (V, 3), or from `texture` (3, Th, Tw) sampled at the
    per-corner `uv` (F, 3, 2); with neither the mesh is white (1.0). `background` is one value
    or an RGB triple. rgb has the colours' dtype, depth the vertices' floating dtype.
    """
    if (uv is None) != (texture is None):
        raise ValueError("uv and texture go together: pass both or neither")
    if vertex_colors is not None and texture is not None:
        raise ValueError("pass vertex_colors or uv + texture, not both")
    camera = camera_from_intrinsics(K, width, height)
    faces = torch.as_tensor(faces, dtype=torch.long)
    raster = rasterize(vertices, faces, camera, torch.as_tensor(pose))
    mask = raster.mask
    if texture is not None:
        colours = sample_texture(texture, interpolate(raster, uv, faces))
    elif vertex_colors is not None:
        colours = interpolate(raster, vertex_colors, faces).to(vertex_colors.dtype)
    else:
        colours = torch.ones(height, width, 3)
    fill = torch.as_tensor(background, dtype=colours.dtype).expand(3)
    rgb = torch.where(mask[..., None], colours, fill).permute(2, 0, 1)
    return MeshRender(rgb.contiguous(), raster.depth, mask)


def sample_texture(texture: Tensor, uv: Tensor) -> Tensor:
    """`(..., C)`: the (C, Th, Tw) `texture` sampled bilinearly at `uv` (..., 2), OBJ's v-up
    UVs clamped to the edge texels (module docstring). Differentiable in the texture."""
    channels, rows, cols = texture.shape
    flat = uv.reshape(-1, 2).to(torch.float64)
    x = (flat[:, 0] * cols - 0.5).clamp(0, cols - 1)
    y = ((1.0 - flat[:, 1]) * rows - 0.5).clamp(0, rows - 1)
    x0, y0 = x.floor().long(), y.floor().long()
    x1, y1 = (x0 + 1).clamp(max=cols - 1), (y0 + 1).clamp(max=rows - 1)
    wx, wy = (x - x0).to(texture.dtype), (y - y0).to(texture.dtype)
    top = texture[:, y0, x0] * (1 - wx) + texture[:, y0, x1] * wx
    bottom = texture[:, y1, x0] * (1 - wx) + texture[:, y1, x1] * wx
    values = top * (1 - wy) + bottom * wy  # (C, N)
    return values.T.reshape(*uv.shape[:-1], channels)
