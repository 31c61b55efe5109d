"""Photometric losses of the decoder: per-pixel weighted L1 + SSIM + LPIPS.

The per-pixel weight map multiplies the L1 term. It combines VLM guidance
(`(1 - w) + w * density`, density normalised to mean 1 so the loss scale does not drift with
w; `w = 0` is exactly unweighted) and Fresnel-zone boundary weights. SSIM and LPIPS come from
`fresnel.metrics`; LPIPS without its backbone file raises `metrics.MetricUnavailable`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fresnel import metrics

LPIPS_SETTING = "decoder.train.lpips_backbone"  # where a missing backbone file is set


def vlm_weight_map(density: torch.Tensor, vlm_weight: float, size: int) -> torch.Tensor:
    """(B, g, g) density -> (B, 1, size, size) pixel weights `(1 - w) + w * density / mean`."""
    if vlm_weight == 0:
        return torch.ones(density.shape[0], 1, size, size, device=density.device)
    up = F.interpolate(density[:, None].float(), size=(size, size), mode="bilinear")
    up = up.clamp_min(0)
    up = up / up.mean(dim=(2, 3), keepdim=True).clamp_min(1e-8)
    return (1 - vlm_weight) + vlm_weight * up


def weighted_l1(render: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None):
    error = (render - target).abs()
    return error.mean() if weight is None else (error * weight).mean()


class PhotometricLoss(torch.nn.Module):
    """l1 * weighted L1 + ssim * (1 - SSIM) + lpips * LPIPS; returns (total, parts)."""

    def __init__(self, l1: float = 1.0, ssim: float = 0.2, lpips: float = 0.0, lpips_file=None):
        super().__init__()
        self.weights = {"l1": l1, "ssim": ssim, "lpips": lpips}
        self.lpips = metrics.load_lpips(lpips_file, LPIPS_SETTING) if lpips > 0 else None

    def forward(self, render, target, weight=None):
        parts = {"l1": weighted_l1(render, target, weight)}
        if self.weights["ssim"] > 0:
            parts["ssim"] = 1 - metrics.ssim(render, target)
        if self.lpips is not None:
            parts["lpips"] = self.lpips(render * 2 - 1, target * 2 - 1).mean()
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
