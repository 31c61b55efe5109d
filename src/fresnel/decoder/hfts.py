"""HFTS, the guide's Hybrid Fast Training System: what to render at each epoch.

- multi-resolution: train at `train_resolution` (64 with --fast_mode) instead of image_size;
- progressive growing: 1 -> 2 -> K Gaussians per patch over the first half of training;
- stochastic rendering: an importance-sampled subset of `stochastic_k` Gaussians per step.
The final 25% of epochs always use full resolution and every Gaussian, as the guide says.

Stochastic rendering is biased: under alpha compositing the render of a subset is not an
unbiased estimate of the full render (dropping a front Gaussian uncovers what is behind it),
and no reweighting fixes that. benchmarks/hfts_bias.py measures the bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

FINAL_FULL_FRACTION = 0.25  # last quarter: full resolution, all Gaussians
FAST_MODE_RESOLUTION = 64
FAST_MODE_STOCHASTIC_K = 256
PROGRESSIVE_STEPS = (1, 2, 4)  # Gaussians per patch in each third of the growing phase


@dataclass(frozen=True)
class EpochPlan:
    resolution: int
    k_active: int  # Gaussians per patch rendered
    stochastic_k: int | None  # Gaussians sampled per render, None = all


def plan_epoch(epoch: int, epochs: int, image_size: int, k_total: int, *, fast_mode=False,
               train_resolution=None, progressive=False, stochastic_k=None) -> EpochPlan:  # fmt: skip
    """The rendering plan for 0-based `epoch` of `epochs`."""
    if fast_mode:
        train_resolution = train_resolution or FAST_MODE_RESOLUTION
        progressive = True
        stochastic_k = stochastic_k or FAST_MODE_STOCHASTIC_K
    if epoch >= epochs * (1 - FINAL_FULL_FRACTION):
        return EpochPlan(image_size, k_total, None)
    k_active = k_total
    if progressive:
        stage = int(3 * epoch / (epochs * (1 - FINAL_FULL_FRACTION)))
        k_active = min(k_total, PROGRESSIVE_STEPS[min(stage, 2)])
    return EpochPlan(min(train_resolution or image_size, image_size), k_active, stochastic_k)


def importance_sample(
    opacities: torch.Tensor, scales: torch.Tensor, means: torch.Tensor, k: int, generator
) -> torch.Tensor:
    """Indices of k Gaussians drawn without replacement, with probability proportional to
    opacity times projected area (mean scale^2 / z^2): the ones that cover most pixels."""
    n = opacities.shape[0]
    if k >= n:
        return torch.arange(n, device=opacities.device)
    with torch.no_grad():
        area = scales.mean(dim=-1).square() / means[:, 2].clamp_min(1e-3).square()
        weights = (opacities * area).clamp_min(1e-12)
        return torch.multinomial(weights.cpu(), k, replacement=False, generator=generator).to(
            opacities.device
        )
