"""Dense reference rasteriser: every Gaussian against every pixel, plain autograd.

For tests and benchmarks only: cost O(N x H x W); memory O(N x W x rows per block), as the
image is done in blocks of rows, each recomputed in backward. It shares the projection and the
per-pixel falloff with the tile renderer but blends independently (one global depth sort,
a cumulative product over all N Gaussians), so the two check each other, including the tile
renderer's hand-written backward pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from fresnel.render.constants import TRANSMITTANCE_MIN
from fresnel.render.projection import (
    Camera,
    RenderOutput,
    below,
    finish,
    gaussian_power,
    pixel_centers,
    project_gaussians,
    splat_alpha,
    validate_inputs,
)

# Gaussians x pixels evaluated at once; larger images are done in pixel blocks, each
# recomputed in backward (activation checkpointing) so memory stays bounded.
DENSE_BLOCK_ELEMENTS = 2**23


def render_dense(
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    opacities: Tensor,
    colors: Tensor,
    camera: Camera,
    viewmat: Tensor | None = None,
    background: Tensor | None = None,
) -> RenderOutput:
    """Reference renderer with the same signature and output as TileBasedRenderer.render; for
    tests and benchmarks only (all N Gaussians against all H x W pixels)."""
    validate_inputs(means, scales, quats, opacities, colors)
    proj = project_gaussians(means, scales, quats, camera, viewmat)
    order = torch.argsort(proj.depths.detach(), stable=True)
    visible = proj.radii[order] > 0
    opacity = torch.where(visible, opacities[order], torch.zeros_like(opacities[order]))
    features = torch.cat((colors, proj.depths.unsqueeze(-1)), -1)[order]
    gaussians = (proj.means2d[order], proj.conics[order], opacity, features)
    rows = pixel_centers(camera.height, means)
    block = max(1, DENSE_BLOCK_ELEMENTS // max(len(means) * camera.width, 1))
    blocks = rows.split(block)
    recompute = len(blocks) > 1 and torch.is_grad_enabled()
    cols = pixel_centers(camera.width, means)
    outs = [
        checkpoint(_blend, cols, y, *gaussians, use_reentrant=False)
        if recompute
        else _blend(cols, y, *gaussians)
        for y in blocks
    ]
    blended = torch.cat([o[0] for o in outs]).T.reshape(-1, camera.height, camera.width)
    trans = torch.cat([o[1] for o in outs]).reshape(camera.height, camera.width)
    return finish(blended[:-1], blended[-1], trans, background, proj.means2d, proj.radii)


def _blend(cols, rows, means2d, conics, opacities, features) -> tuple[Tensor, Tensor]:
    """Depth-sorted Gaussians against a block of pixel rows (layout (pixels, Gaussians)) ->
    blended features (P, F) and final transmittance (P,), P = len(rows) * len(cols)."""
    dx = (cols[:, None] - means2d[:, 0])[None]  # (1, W, N)
    dy = (rows[:, None] - means2d[:, 1])[:, None]  # (h, 1, N)
    power = gaussian_power(dx, dy, conics).flatten(0, 1)
    alpha, _ = splat_alpha(power, opacities)
    ones = alpha.new_ones(len(alpha), 1)
    trans = torch.cumprod(torch.cat((ones, 1 - alpha), 1), 1)  # trans[:, i]: before Gaussian i
    # transmittance after each Gaussian if it is included (that stays >= TRANSMITTANCE_MIN;
    # a prefix, as transmittance never increases), else 0
    after = F.threshold(trans[:, 1:], below(TRANSMITTANCE_MIN, trans.dtype), 0.0)
    weights = after * (alpha / (1 - alpha))  # = alpha_i * T_i for included Gaussians
    count = torch.sign(after).sum(1, keepdim=True).long()
    return weights @ features, trans.gather(1, count).squeeze(1)
