"""Training logs: TensorBoard scalars/images, dvclive metrics (for `dvc plots`) and a
picture of held-out renders beside their targets every epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fresnel.io import atomic_path


def side_by_side(renders: torch.Tensor, targets: torch.Tensor, max_items: int = 4) -> Image.Image:
    """Rows of [render | target] for up to max_items images, as one RGB picture."""
    rows = [
        torch.cat([r.clamp(0, 1), t], dim=2)
        for r, t in zip(renders[:max_items], targets, strict=False)
    ]
    grid = torch.cat(rows, dim=1).permute(1, 2, 0).numpy()
    return Image.fromarray((grid * 255 + 0.5).astype(np.uint8))


class RunLogger:
    """Writes under output_dir: tensorboard/, dvclive/, renders/epoch_NNN.png, renders.png."""

    def __init__(self, output_dir, resume: bool = False):
        from dvclive import Live
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(output_dir)
        (self.dir / "renders").mkdir(parents=True, exist_ok=True)
        self.tensorboard = SummaryWriter(str(self.dir / "tensorboard"))
        self.live = Live(str(self.dir / "dvclive"), resume=resume, save_dvc_exp=False,
                         dvcyaml=None, report=None)  # fmt: skip
        self.history: list[dict] = []

    def log_epoch(self, metrics: dict, sample) -> None:
        self.history.append(metrics)
        epoch = metrics["epoch"]
        for name, value in metrics.items():
            if name != "epoch":
                self.tensorboard.add_scalar(name, value, epoch)
                self.live.log_metric(name, value)
        if sample is not None:
            picture = side_by_side(*sample)
            for path in (self.dir / f"renders/epoch_{epoch:04d}.png", self.dir / "renders.png"):
                with atomic_path(path) as tmp:
                    picture.save(tmp, format="PNG")
            self.tensorboard.add_image("val/render_vs_target", np.asarray(picture), epoch,
                                       dataformats="HWC")  # fmt: skip
        self.live.next_step()

    def close(self) -> None:
        self.tensorboard.close()
        self.live.end()
        if self.history:
            plot_curves(self.history, self.dir / "curves.png")


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and held-out PSNR per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [m["epoch"] for m in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3))
    left.plot(epochs, [m["train_loss"] for m in history], marker="o")
    left.set(xlabel="epoch", ylabel="training loss", yscale="log")
    right.plot(epochs, [m["val_psnr"] for m in history], marker="o", color="tab:green")
    right.set(xlabel="epoch", ylabel="held-out PSNR (dB)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
