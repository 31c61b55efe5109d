"""A gaze and head-pose estimator: GazeGaussian's angular loss and the judge of redirection.

`GazeEstimator` maps face images (B, 3, H, W) RGB in [0, 1] (H, W multiples of 16) to (B, 4):
gaze (pitch, yaw) then head pose (pitch, yaw), radians (conventions of `fresnel.gaze.eyes`).
Each image is standardised per channel inside the model, so skin tone and exposure matter
less; the convolutional trunk keeps a 4 x 4 spatial grid (not a global pool), because gaze
is where the pupil sits, not only what is in the picture. It is differentiable in the image:
the angular loss backpropagates through a frozen estimator into the generated image.

Training augments without changing labels (per-channel gains, a random channel order, noise);
no flips or crops, which would change the geometry that the labels describe.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fresnel.gaze.data import GazeDataError
from fresnel.gaze.eyes import angular_error_deg
from fresnel.io import write_bytes
from fresnel.training.checkpoint import serialize

FORMAT = "fresnel.gaze.estimator/1"


def _stage(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
        nn.Conv2d(c_out, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
    )  # fmt: skip


class GazeEstimator(nn.Module):
    def __init__(self, width: int = 32, image_size: int = 64):
        super().__init__()
        self.width, self.image_size = width, image_size
        self.trunk = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.SiLU(),
            _stage(width, width), _stage(width, 2 * width), _stage(2 * width, 2 * width),
            nn.AdaptiveAvgPool2d(4),
        )  # fmt: skip
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.SiLU(),
                                  nn.Linear(128, 4))  # fmt: skip

    def config(self) -> dict:
        return {"width": self.width, "image_size": self.image_size}

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 4): gaze pitch, yaw, head pitch, yaw (radians)."""
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[-1] % 16:
            raise ValueError(f"GazeEstimator expects (B, 3, H, W) RGB with H, W multiples of "
                             f"16, got {tuple(images.shape)}")  # fmt: skip
        mean = images.mean((2, 3), keepdim=True)
        std = images.std((2, 3), keepdim=True).clamp(min=1e-3)
        return self.head(self.trunk((images - mean) / std))


def augment(images: Tensor, gen: torch.Generator) -> Tensor:
    """Label-preserving colour changes: channel gains, a random channel order, noise."""
    b = len(images)
    gains = 0.7 + 0.6 * torch.rand(b, 3, 1, 1, generator=gen)
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])
    shuffled = torch.gather(images, 1, order[:, :, None, None].expand_as(images))
    noise = 0.02 * torch.randn(images.shape, generator=gen)
    return (shuffled * gains + noise).clamp(0, 1)


def _targets(batch: dict) -> Tensor:
    return torch.cat([batch["gaze"], batch["head_pose"]], 1)


def _collate(samples: list[dict]) -> dict:
    return {k: torch.stack([s[k] for s in samples]) for k in ("image", "gaze", "head_pose")}


def train_estimator(dataset: Dataset, *, epochs: int = 20, batch_size: int = 16,
                    lr: float = 1e-3, seed: int = 0, augment_images: bool = True,
                    progress: bool = True) -> tuple[GazeEstimator, dict]:  # fmt: skip
    """Fit an estimator to `dataset` items (image, gaze, head_pose) with an L1 loss on the
    angles and a cosine learning-rate decay; seeded and deterministic on the CPU."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = GazeEstimator(image_size=int(dataset[0]["image"].shape[-1]))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=_collate,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    loss_value = math.nan
    for _ in tqdm(range(epochs), desc="gaze estimator", disable=not progress):
        total, count = 0.0, 0
        for batch in loader:
            images = augment(batch["image"], gen) if augment_images else batch["image"]
            loss = (model(images) - _targets(batch)).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(images), count + len(images)
        loss_value = total / count
    model.eval()
    stats = {"epochs": epochs, "frames": len(dataset), "final_l1_rad": loss_value,
             **evaluate_estimator(model, dataset)}  # fmt: skip
    return model, {f"train_{k}" if k.endswith("_deg") else k: v for k, v in stats.items()}


@torch.no_grad()
def evaluate_estimator(model: GazeEstimator, dataset: Dataset, batch_size: int = 64) -> dict:
    """Mean / median angular errors (degrees) of gaze and head pose on `dataset`."""
    gaze, head = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=_collate):
        out = model(batch["image"])
        gaze.append(angular_error_deg(out[:, :2], batch["gaze"]))
        head.append(angular_error_deg(out[:, 2:], batch["head_pose"]))
    gaze, head = torch.cat(gaze), torch.cat(head)
    return {"gaze_error_deg": float(gaze.mean()), "gaze_median_deg": float(gaze.median()),
            "head_pose_error_deg": float(head.mean())}  # fmt: skip


def save_estimator(model: GazeEstimator, path, meta: dict | None = None) -> Path:
    """One file, loadable with torch.load(weights_only=True); written atomically."""
    path = Path(path)
    state = {"format": FORMAT, "config": model.config(), "state_dict": model.state_dict(),
             "meta": meta or {}}  # fmt: skip
    write_bytes(path, serialize(state))
    return path


def load_estimator(path) -> GazeEstimator:
    """A saved estimator in eval mode with requires_grad False (frozen); GazeDataError (one
    line naming the file) when it is missing or not an estimator."""
    path = Path(path)
    fix = "train one with `fresnel train_gaze_estimator --img_dir ... --output <file>`"
    if not path.is_file():
        raise GazeDataError(f"{path}: gaze estimator not found; {fix}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError("not a gaze estimator file")
        model = GazeEstimator(**state["config"])
        model.load_state_dict(state["state_dict"])
    except Exception as err:  # any failure means the same thing: not an estimator file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GazeDataError(f"{path}: not a gaze estimator ({reason[:160]}); {fix}") from None
    return model.eval().requires_grad_(False)


def frozen_estimator_or_unavailable(path) -> tuple[GazeEstimator | None, str | None]:
    """(estimator, None), or (None, "unavailable: ...") when no file is given or it is wrong."""
    if not path:
        return None, "unavailable: no gaze estimator weights (pass --gaze_estimator)"
    try:
        return load_estimator(path), None
    except ValueError as err:
        return None, f"unavailable: {err}"
