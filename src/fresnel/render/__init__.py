"""Differentiable 3D Gaussian splatting: tile renderer and dense reference.

from fresnel.render import Camera, TileBasedRenderer
out = TileBasedRenderer()(means, scales, quats, opacities, colors, camera)
out.image  # (C, H, W): C = the colours' channels (RGB, or any feature width)

View-dependent colour: `fresnel.render.sh` (spherical harmonics up to degree 3); several
views of one scene: `fresnel.render.views.render_views`.

The dense reference (`fresnel.render.dense.render_dense`) is imported from its module,
never from here, so that code using the renderer does not depend on the test reference.
"""

from fresnel.render.projection import Camera, RenderOutput, inverse_2x2, project_gaussians
from fresnel.render.tile import TileBasedRenderer, build_tile_lists

__all__ = [
    "Camera",
    "RenderOutput",
    "TileBasedRenderer",
    "build_tile_lists",
    "inverse_2x2",
    "project_gaussians",
]
