"""Flow as colour (HSV) and the debug pictures of a VPOG batch.

Flow colours: hue is the flow's direction (0 = +u, right, red; +v, down, is a quarter of the
way round the wheel, yellow-green), saturation its magnitude over `max_magnitude` (clipped at
1), value 1; pixels without a flow (invalid or NaN) are black. Zero flow is white.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fresnel.vpog.flow import BACKGROUND


def flow_to_rgb(flow: Tensor, valid: Tensor | None = None, max_magnitude: float | None = None):
    """uint8 (H, W, 3) picture of a (H, W, 2) flow; see the module docstring."""
    flow = torch.as_tensor(flow, dtype=torch.float64)
    ok = torch.isfinite(flow).all(-1)
    if valid is not None:
        ok &= torch.as_tensor(valid, dtype=torch.bool)
    flow = torch.where(ok[..., None], flow, 0.0)
    magnitude = flow.norm(dim=-1)
    if max_magnitude is None:
        max_magnitude = float(magnitude[ok].max()) if ok.any() else 1.0
    hue = (torch.atan2(flow[..., 1], flow[..., 0]) / (2 * math.pi)) % 1.0
    saturation = (magnitude / max(max_magnitude, 1e-12)).clamp(0, 1)
    rgb = hsv_to_rgb(hue, saturation, torch.ones_like(hue))
    rgb = torch.where(ok[..., None], rgb, 0.0)
    return (rgb * 255).round().to(torch.uint8).numpy()


def hsv_to_rgb(h: Tensor, s: Tensor, v: Tensor) -> Tensor:
    """(..., 3) RGB in [0, 1] of hue, saturation and value in [0, 1]."""
    k = torch.stack([(n + h * 6) % 6 for n in (5.0, 3.0, 1.0)], -1)
    ramp = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[..., None] - v[..., None] * s[..., None] * ramp


def label_picture(labels: Tensor, predicted: Tensor, patch_size: int):
    """uint8 (H, W, 3): per query patch green = right buddy / unseen, red = wrong, grey =
    background, each patch a ps x ps block."""
    colours = torch.tensor([[110, 110, 110], [40, 170, 60], [200, 40, 40]], dtype=torch.uint8)
    state = torch.where(labels == BACKGROUND, 0, torch.where(predicted == labels, 1, 2))
    return blocks(colours[state], patch_size).numpy()


def blocks(grid: Tensor, patch_size: int) -> Tensor:
    """A per-patch (Hp, Wp, ...) map blown up to pixels: each entry a ps x ps block."""
    return grid.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)


def save_batch_figure(batch, predicted: Tensor, path: str | Path, sample: int = 0) -> Path:
    """A PNG: for one sample of a `VPOGBatch`, one row per template with the query, the
    template, the ground-truth patch flow (HSV) and which query patches the model matched.
    `predicted` is [B, S, N] predicted classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = batch.images[sample].detach().cpu()
    templates = images.shape[0] - 1
    ps = images.shape[-1] // batch.labels.shape[-1]
    fig, axes = plt.subplots(templates, 4, figsize=(8, 2 * templates), squeeze=False)
    for s in range(templates):
        labels = batch.labels[sample, s].cpu()
        flow = blocks(batch.flows[sample, s].cpu(), ps)
        valid = blocks(batch.flow_valid[sample, s].cpu(), ps)
        guess = predicted[sample, s].detach().cpu().reshape(labels.shape)
        kind = "positive" if bool(batch.is_positive[sample, s]) else "negative"
        panels = (
            (_to_hwc(images[0]), "query"),
            (_to_hwc(images[s + 1]), f"template {int(batch.template_indices[sample, s])} ({kind})"),
            (flow_to_rgb(flow, valid), "flow (HSV)"),
            (label_picture(labels, guess, ps), "matched patches"),
        )
        for ax, (picture, title) in zip(axes[s], panels, strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _to_hwc(image: Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).clamp(0, 1).numpy()
