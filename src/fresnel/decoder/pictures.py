"""The decoder's pictures: held-out renders beside their targets, each epoch of training
(renders/epoch_NNNN.png, renders.png and a TensorBoard image) and in the evaluation."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from fresnel.images import save_png


def to_image(rows: list[torch.Tensor]) -> Image.Image:
    """(3, h, w) images in [0, 1], stacked top to bottom, as one RGB picture."""
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    return Image.fromarray((grid * 255 + 0.5).astype(np.uint8))


def side_by_side(renders: torch.Tensor, targets: torch.Tensor, max_items: int = 4) -> Image.Image:
    """Rows of [render | target] for up to max_items images."""
    return to_image([torch.cat([r.clamp(0, 1), t], dim=2)
                     for r, t in zip(renders[:max_items], targets, strict=False)])  # fmt: skip


def log_renders(runlog, epoch: int, renders: torch.Tensor, targets: torch.Tensor) -> None:
    """This epoch's held-out picture into the run log's directory and TensorBoard."""
    picture = side_by_side(renders, targets)
    for path in (runlog.dir / f"renders/epoch_{epoch:04d}.png", runlog.dir / "renders.png"):
        save_png(picture, path)
    runlog.tensorboard.add_image("val/render_vs_target", np.asarray(picture), epoch,
                                 dataformats="HWC")  # fmt: skip
