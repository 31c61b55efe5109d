"""A gaze and head-pose estimator: GazeGaussian's angular loss and the judge of redirection.

`GazeEstimator` maps face images (B, 3, H, W) RGB in [0, 1] (H, W multiples of 16) to (B, 4):
gaze (pitch, yaw) then head pose (pitch, yaw), radians, in the conventions of
`fresnel.gaze.eyes`. It is differentiable in the image: GazeGaussian's angular loss
backpropagates through a frozen estimator into the generated image.

- Input normalisation is inside the model: each image is standardised by its own mean and
  standard deviation (over channels and pixels), so the output is invariant to global
  brightness and contrast by construction, for real and generated images alike.
- A strided stem and a residual stage (GroupNorm throughout: no batch statistics, so train
  and eval modes agree and batches of one are fine) give features at H/4 that feed two
  branches: "where" (K keypoint maps reduced to their expected (x, y) by a spatial soft-argmax)
  and "what" (two more residual stages to H/16, global average pool). Gaze is mostly where
  the pupil sits relative to the eye corners, a few pixels at 64 px; a global pool alone
  discards position, and the soft-argmax keeps it at sub-pixel precision at any input size.
- Training augments without changing the labels: a gamma curve and per-channel gains (skin
  tones and colour casts; brightness and contrast need nothing, the normalisation removes
  them exactly), a random channel order (skin and iris colours that no training subject has)
  and Gaussian noise. No flips or crops: they move the eyes, so they would change the gaze
  and head pose that the labels describe.

Files: `save_estimator` writes one dict (format, config, state_dict, meta) loadable with
`torch.load(weights_only=True)`; `load_estimator` returns it frozen.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from fresnel.gaze.data import GazeDataError
from fresnel.gaze.eyes import angular_error_deg
from fresnel.gaze.options import EstimatorOptions
from fresnel.io import write_bytes
from fresnel.training.checkpoint import serialize

FORMAT = "fresnel.gaze.estimator/2"
TRAIN_HINT = "train one with `fresnel train_gaze_estimator --img_dir ... --output <file>`"
KEYS = ("image", "gaze", "head_pose")
# Keypoint logits are scaled up: near-uniform softmax maps at initialisation carry almost no
# position gradient, and a small feature (a pupil) was then found only after many epochs.
KEYPOINT_SHARPNESS = 5.0
# Gamma darkens or lightens mid-tones against a fixed white and black: skin tones that no
# training subject has (without it, a dark held-out synthetic subject was judged at 31 deg).
GAMMA_RANGE = 3.0
CACHE_BYTES = 1 << 30  # training frames up to this size are read from the dataset only once


class _Residual(nn.Module):
    """(B, c_in, H, W) -> (B, c_out, H/2, W/2): two 3x3 convs beside a strided 1x1 shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(8, c_out), nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(8, c_out),
        )  # fmt: skip
        self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2), nn.GroupNorm(8, c_out))

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.body(x) + self.skip(x))


def spatial_soft_argmax(logits: Tensor) -> Tensor:
    """(B, K, h, w) logits -> (B, K, 2) expected (x, y) of each softmax map, in [-1, 1]
    (image corners; the same coordinates at any input size)."""
    b, k, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(b, k, h, w)
    xs = torch.linspace(-1, 1, w, device=logits.device, dtype=logits.dtype)
    ys = torch.linspace(-1, 1, h, device=logits.device, dtype=logits.dtype)
    return torch.stack(((prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)), -1)


class GazeEstimator(nn.Module):
    """Face images (B, 3, H, W) in [0, 1] -> (B, 4) gaze and head-pose angles (see the module
    doc); `width` channels at H/4 (keypoints), 2 * width at H/8 and H/16 (appearance)."""

    def __init__(self, width: int = 32, keypoints: int = 16):
        super().__init__()
        self.width, self.keypoints = width, keypoints
        self.early = nn.Sequential(
            nn.Conv2d(3, width, 5, stride=2, padding=2), nn.GroupNorm(8, width), nn.SiLU(),
            _Residual(width, width),
        )  # fmt: skip
        self.to_keypoints = nn.Conv2d(width, keypoints, 1)
        self.late = nn.Sequential(_Residual(width, 2 * width), _Residual(2 * width, 2 * width),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.head = nn.Sequential(nn.Linear(2 * width + 2 * keypoints, 128), nn.SiLU(),
                                  nn.Linear(128, 4))  # fmt: skip

    def config(self) -> dict:
        return {"width": self.width, "keypoints": self.keypoints}

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) RGB in [0, 1] -> (B, 4): gaze pitch, yaw, head pitch, yaw (radians)."""
        if images.ndim != 4 or images.shape[1] != 3 or any(n % 16 for n in images.shape[2:]):
            raise ValueError(f"GazeEstimator expects (B, 3, H, W) RGB with H, W multiples of "
                             f"16, got {tuple(images.shape)}")  # fmt: skip
        mean = images.mean((1, 2, 3), keepdim=True)
        std = (images.var((1, 2, 3), keepdim=True) + 1e-6).sqrt()
        features = self.early((images - mean) / std)
        where = spatial_soft_argmax(KEYPOINT_SHARPNESS * self.to_keypoints(features)).flatten(1)
        return self.head(torch.cat((self.late(features), where), 1))


def augment_colours(images: Tensor, gen: torch.Generator) -> Tensor:
    """Label-preserving colour changes of (B, 3, H, W) images in [0, 1]: a gamma in [1/3, 3]
    (log-uniform), per-channel gains in [0.7, 1.3], a random channel order and noise of std
    0.02. Random numbers come from the CPU `gen`: the same draws on every device."""
    b = len(images)
    gamma = torch.exp(math.log(GAMMA_RANGE) * (2 * torch.rand(b, 1, 1, 1, generator=gen) - 1))
    gains = 0.7 + 0.6 * torch.rand(b, 3, 1, 1, generator=gen)
    order = torch.stack([torch.randperm(3, generator=gen) for _ in range(b)])
    noise = 0.02 * torch.randn(images.shape, generator=gen)
    gamma, gains, order, noise = (t.to(images.device) for t in (gamma, gains, order, noise))
    curved = images.clamp(min=1e-4) ** gamma
    shuffled = torch.gather(curved, 1, order[:, :, None, None].expand_as(images))
    return (shuffled * gains + noise).clamp(0, 1)


class _Frames(Dataset):
    """The (image, gaze, head_pose) of `dataset` items, kept in memory after the first read
    when they fit in CACHE_BYTES (an HDF5 item also decodes masks and landmarks, which can
    cost more than the estimator's step)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.keep = len(dataset) * dataset[0]["image"].numel() * 4 <= CACHE_BYTES
        self.cache: dict[int, tuple[Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, k: int) -> tuple[Tensor, ...]:
        if k in self.cache:
            return self.cache[k]
        item = self.dataset[k]
        frame = tuple(torch.as_tensor(item[key], dtype=torch.float32) for key in KEYS)
        if self.keep:
            self.cache[k] = frame
        return frame


def _loader(frames: Dataset, batch_size: int, seed: int | None = None) -> DataLoader:
    """Batches of (images (B, 3, H, W), gaze (B, 2), head_pose (B, 2)); shuffled when seeded."""
    shuffle = seed is not None
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(frames, batch_size=batch_size, shuffle=shuffle, generator=gen)


def train_estimator(
    dataset: Dataset,
    options: EstimatorOptions | None = None,
    *,
    device: str | torch.device = "cpu",
    augment: bool = True,
    progress: bool = True,
) -> tuple[GazeEstimator, dict]:
    """Fit an estimator to `dataset` items (dicts with image (3, H, W) in [0, 1], gaze (2,)
    and head_pose (2,) radians): L1 loss on the four angles, AdamW with a cosine decay.
    Seeded (weights, order, augmentation) and deterministic on the CPU. Returns the model in
    eval mode on `device` and stats: the last epoch's loss and the errors on `dataset`
    (train_*_deg, without augmentation)."""
    options = options or EstimatorOptions()
    epochs, batch_size, lr, seed = options.epochs, options.batch_size, options.lr, options.seed
    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG untouched
        torch.manual_seed(seed)
        model = GazeEstimator().to(device)
    gen = torch.Generator().manual_seed(seed)
    frames = _Frames(dataset)
    loader = _loader(frames, batch_size, seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(loader))
    loss_value = math.nan
    for _ in tqdm(range(epochs), desc="gaze estimator", disable=not progress):
        total = 0.0
        for images, gaze, head_pose in loader:
            images = images.to(device)
            images = augment_colours(images, gen) if augment else images
            target = torch.cat([gaze, head_pose], 1).to(device)
            loss = (model(images) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(images)
        loss_value = total / len(frames)
    model.eval()
    found = evaluate_estimator(model, frames)
    stats = {"epochs": epochs, "frames": len(frames), "final_l1_rad": loss_value,
             **{f"train_{k}": v for k, v in found.items() if k.endswith("_deg")}}  # fmt: skip
    return model, stats


def _errors(model: GazeEstimator, batches) -> dict:
    device = next(model.parameters()).device
    gaze, head = [], []
    for images, gaze_true, head_true in batches:
        out = model(images.to(device)).cpu()
        gaze.append(angular_error_deg(out[:, :2], gaze_true))
        head.append(angular_error_deg(out[:, 2:], head_true))
    gaze, head = torch.cat(gaze), torch.cat(head)
    return {"gaze_error_deg": float(gaze.mean()), "gaze_median_deg": float(gaze.median()),
            "head_pose_error_deg": float(head.mean()),
            "head_pose_median_deg": float(head.median()), "frames": len(gaze)}  # fmt: skip


@torch.no_grad()
def evaluate_estimator(model: GazeEstimator, data: Dataset | Tensor, gaze: Tensor | None = None,
                       head_pose: Tensor | None = None, batch_size: int = 64) -> dict:  # fmt: skip
    """Mean and median angular errors in degrees (`angular_error_deg`) of gaze and head pose:
    on a dataset of items as in `train_estimator`, or on images (N, 3, H, W) in [0, 1] with
    gaze (N, 2) and head_pose (N, 2) radians. The model is used as it is (mode, device)."""
    if isinstance(data, Tensor):
        if gaze is None or head_pose is None or not len(data) == len(gaze) == len(head_pose):
            raise ValueError("evaluate_estimator on images (N, 3, H, W) needs gaze (N, 2) and "
                             "head_pose (N, 2)")  # fmt: skip
        parts = (t.split(batch_size) for t in (data, gaze.cpu(), head_pose.cpu()))
        batches = zip(*parts, strict=True)
        return _errors(model, batches)
    frames = data if isinstance(data, _Frames) else _Frames(data)
    return _errors(model, _loader(frames, batch_size))


def save_estimator(model: GazeEstimator, path, meta: dict | None = None) -> Path:
    """One file {format, config, state_dict (CPU), meta}, loadable with
    torch.load(weights_only=True) (so meta holds only plain values); written atomically."""
    path = Path(path)
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    state = {"format": FORMAT, "config": model.config(), "state_dict": weights,
             "meta": meta or {}}  # fmt: skip
    write_bytes(path, serialize(state))
    return path


def load_estimator(path, device: str | torch.device = "cpu") -> GazeEstimator:
    """A saved estimator on `device`, in eval mode with requires_grad False (frozen).
    GazeDataError (a ValueError; one line naming the file and the fix) when the file is
    missing, is not an estimator, or was written in another format version."""
    path = Path(path)
    if not path.is_file():
        raise GazeDataError(f"{path}: gaze estimator not found; {TRAIN_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            found = state.get("format") if isinstance(state, dict) else None
            raise ValueError(f"format {found!r}, expected {FORMAT!r}")
        model = GazeEstimator(**state["config"])
        model.load_state_dict(state["state_dict"])
    except Exception as err:  # any failure means the same thing: not a usable estimator file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GazeDataError(
            f"{path}: not a gaze estimator ({reason[:160]}); {TRAIN_HINT}"
        ) from None
    return model.to(device).eval().requires_grad_(False)


def frozen_estimator_or_unavailable(path, device: str | torch.device = "cpu"):
    """(estimator, None), or (None, "unavailable: <reason>") when no file is given or it
    cannot be loaded, as `fresnel.metrics.lpips_or_unavailable`."""
    if not path:
        return None, "unavailable: no gaze estimator weights (pass --gaze_estimator <file>)"
    try:
        return load_estimator(path, device), None
    except ValueError as err:
        return None, f"unavailable: {err}"
