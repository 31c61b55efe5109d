"""HFTS, the guide's Hybrid Fast Training System: what to render at each epoch.

- multi-resolution: train at `train_resolution` (64 with --fast_mode) instead of image_size;
- progressive growing: 1 -> 2 -> K Gaussians per patch over the first half of training;
- region sampling (`--stochastic_k K`): each image renders one random square region sized so
  that about K Gaussians touch it, with *every* Gaussian that touches it, and the loss sees
  only that region.
The final 25% of epochs always use full resolution and every Gaussian, as the guide says.

Why regions and not a subset of Gaussians (the guide's first design): under alpha compositing
the render of a random subset is not an unbiased estimate of the full render (dropping a front
Gaussian uncovers what is behind it; measured: the subset render was mostly background), so it
trained against a different image than it evaluated. A region rendered with all the Gaussians
touching it is exactly the full render's pixels there (tests compare them), so the loss is the
full loss restricted to a random window: cheaper, and unbiased over windows. The decoder's own
forward/backward does not shrink, which bounds the speed-up: benchmarks/README.md measures it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fresnel.decoder.gaussians import GRID
from fresnel.render.constants import TILE_SIZE

FINAL_FULL_FRACTION = 0.25  # last quarter: full resolution, all Gaussians
FAST_MODE_RESOLUTION = 64
FAST_MODE_STOCHASTIC_K = 256
PROGRESSIVE_STEPS = (1, 2, 4)  # Gaussians per patch in each third of the growing phase
MIN_REGION = 2 * TILE_SIZE  # smallest region side in px: room for the SSIM window


@dataclass(frozen=True)
class EpochPlan:
    resolution: int
    k_active: int  # Gaussians per patch rendered
    region: int | None = None  # side in px of the region rendered per image, None = whole image


def region_side(resolution: int, stochastic_k: int, gaussians: int) -> int | None:
    """Side of a square region that about `stochastic_k` of `gaussians` (spread over the
    image, as the decoder's patch grid is) touch; None when that is the whole image."""
    side = math.ceil(resolution * math.sqrt(stochastic_k / gaussians))
    side = max(MIN_REGION, math.ceil(side / TILE_SIZE) * TILE_SIZE)
    return None if side >= resolution else side


def plan_epoch(epoch: int, epochs: int, image_size: int, k_total: int, *, fast_mode=False,
               train_resolution=None, progressive=False, stochastic_k=None) -> EpochPlan:  # fmt: skip
    """The rendering plan for 0-based `epoch` of `epochs`."""
    if fast_mode:
        train_resolution = train_resolution or FAST_MODE_RESOLUTION
        progressive = True
        stochastic_k = stochastic_k or FAST_MODE_STOCHASTIC_K
    if epoch >= epochs * (1 - FINAL_FULL_FRACTION):
        return EpochPlan(image_size, k_total)
    k_active = k_total
    if progressive:
        stage = int(3 * epoch / (epochs * (1 - FINAL_FULL_FRACTION)))
        k_active = min(k_total, PROGRESSIVE_STEPS[min(stage, 2)])
    resolution = min(train_resolution or image_size, image_size)
    region = None
    if stochastic_k:
        region = region_side(resolution, stochastic_k, k_active * GRID * GRID)
    return EpochPlan(resolution, k_active, region)


def sample_regions(count: int, resolution: int, side: int, generator) -> list[tuple[int, int]]:
    """`count` random (x0, y0) origins of side x side regions inside the image."""
    origins = torch.randint(0, resolution - side + 1, (count, 2), generator=generator)
    return [(int(x), int(y)) for x, y in origins]
