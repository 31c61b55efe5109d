"""Differentiable 3D Gaussian splatting: tile renderer and dense reference.

from fresnel.render import Camera, TileBasedRenderer
out = TileBasedRenderer()(means, scales, quats, opacities, colors, camera)
out.image  # (3, H, W)
"""

from fresnel.render.dense import render_dense
from fresnel.render.projection import Camera, RenderOutput, inverse_2x2, project_gaussians
from fresnel.render.tile import TileBasedRenderer, build_tile_lists

__all__ = [
    "Camera",
    "RenderOutput",
    "TileBasedRenderer",
    "build_tile_lists",
    "inverse_2x2",
    "project_gaussians",
    "render_dense",
]
