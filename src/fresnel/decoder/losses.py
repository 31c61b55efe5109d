"""Photometric losses of the decoder: per-pixel weighted L1 + SSIM + LPIPS.

The per-pixel weight map multiplies the L1 term. It combines VLM guidance
(`(1 - w) + w * density`, density normalised to mean 1 so the loss scale does not drift with
w; `w = 0` is exactly unweighted) and Fresnel-zone boundary weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pytorch_msssim import ssim


class LossConfigError(ValueError):
    """A loss was asked for whose weights cannot be had."""


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


def ssim_window(size: int) -> int:
    """The largest odd window up to 11 that fits the image (pytorch_msssim needs win <= size)."""
    return max(3, min(11, size if size % 2 else size - 1))


def ssim_value(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of (B, 3, H, W) images in [0, 1]."""
    return ssim(
        render, target, data_range=1.0, size_average=True, win_size=ssim_window(render.shape[-1])
    )


def load_lpips(weights_file: str | None):
    """LPIPS (AlexNet) with its backbone from `weights_file` (torchvision's alexnet state dict).

    The lpips wheel ships only the linear heads; its backbone would be downloaded at run
    time, which fails offline. So the backbone is always loaded from a file, never fetched.
    """
    if not weights_file or not Path(weights_file).is_file():
        raise LossConfigError(
            f"LPIPS needs AlexNet backbone weights, but {weights_file or '(no file set)'} does "
            "not exist; set decoder.lpips_backbone to torchvision's alexnet-owt-7be5be79.pth, "
            "or set decoder.lpips_weight to 0"
        )
    import lpips
    import torchvision

    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    features = torchvision.models.alexnet().features
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                              if k.startswith("features.")})  # fmt: skip
    for stage in model.net.children():
        for index, layer in stage.named_children():
            layer.load_state_dict(features[int(index)].state_dict())
    return model.eval().requires_grad_(False)


class PhotometricLoss(torch.nn.Module):
    """l1 * weighted L1 + ssim * (1 - SSIM) + lpips * LPIPS; returns (total, parts)."""

    def __init__(self, l1: float = 1.0, ssim: float = 0.2, lpips: float = 0.0, lpips_file=None):
        super().__init__()
        self.weights = {"l1": l1, "ssim": ssim, "lpips": lpips}
        self.lpips = load_lpips(lpips_file) if lpips > 0 else None

    def forward(self, render, target, weight=None):
        parts = {"l1": weighted_l1(render, target, weight)}
        if self.weights["ssim"] > 0:
            parts["ssim"] = 1 - ssim_value(render, target)
        if self.lpips is not None:
            parts["lpips"] = self.lpips(render * 2 - 1, target * 2 - 1).mean()
        total = sum(self.weights[k] * v for k, v in parts.items())
        return total, {k: float(v.detach()) for k, v in parts.items()}
