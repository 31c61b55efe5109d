"""One scene rendered from several views: the training batch of multi-view methods
(GaussianAvatars, GazeGaussian). Colours are fixed (N, C) or spherical-harmonics
coefficients (N, K, C) evaluated per view (fresnel.render.sh)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fresnel.render import sh
from fresnel.render.projection import Camera, RenderOutput


@dataclass
class Views:
    """The outputs of V views stacked: images (V, C, H, W), alphas and depths (V, H, W),
    radii (V, N); means2d keeps one (N, 2) tensor per view (each has its own .grad)."""

    images: Tensor
    alphas: Tensor
    depths: Tensor
    radii: Tensor
    means2d: list[Tensor]


def render_views(
    render: Callable[..., RenderOutput],
    means: Tensor,
    scales: Tensor,
    quats: Tensor,
    opacities: Tensor,
    colors: Tensor,
    cameras: Sequence[Camera],
    viewmats: Tensor,
    background: Tensor | None = None,
    sh_degree: int | None = None,
) -> Views:
    """Render world-space Gaussians from V cameras (`viewmats` (V, 4, 4) world-to-camera).
    With `sh_degree`, `colors` are SH coefficients (N, K, C) evaluated for each view;
    cameras of one batch must share the image size."""
    if len(cameras) != len(viewmats):
        raise ValueError(f"{len(cameras)} cameras but {len(viewmats)} view matrices")
    if len({(c.width, c.height) for c in cameras}) > 1:
        raise ValueError("the cameras of one batch must share width and height")
    outs = []
    for camera, viewmat in zip(cameras, viewmats, strict=True):
        view = colors if sh_degree is None else sh.view_colors(means, colors, sh_degree, viewmat)
        outs.append(render(means, scales, quats, opacities, view, camera, viewmat, background))
    return Views(
        images=torch.stack([o.image for o in outs]),
        alphas=torch.stack([o.alpha for o in outs]),
        depths=torch.stack([o.depth for o in outs]),
        radii=torch.stack([o.radii for o in outs]),
        means2d=[o.means2d for o in outs],
    )
