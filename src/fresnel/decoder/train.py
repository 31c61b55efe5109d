"""Training of the Gaussian decoder from teacher shards (the guide's train_gaussian_decoder).

One epoch: stream the training shards, predict Gaussians, render each with the tile
renderer at the epoch's HFTS plan, minimise the photometric loss, then render the held-out
images with every Gaussian at full resolution and log PSNR/SSIM. Deterministic on CPU:
model init, data order and stochastic sampling all derive from the seed and the epoch, so a
resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fresnel import device as devices
from fresnel.decoder import fresnel_zones, gaussians
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.gaussians import select_per_patch
from fresnel.decoder.hfts import EpochPlan, importance_sample, plan_epoch
from fresnel.decoder.losses import PhotometricLoss, ssim_value, vlm_weight_map
from fresnel.decoder.models import build_decoder
from fresnel.io import atomic_path
from fresnel.render import Camera, TileBasedRenderer
from fresnel.data.shards import ShardStream, read_manifest

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/Inf."""


def make_model(config: TrainConfig) -> torch.nn.Module:
    torch.manual_seed(config.seed)
    return build_decoder(config.experiment, config.gaussians_per_patch, **config.model_flags())


def split_ids(shard_dir, val_fraction: float, seed: int, max_images=None) -> tuple[set, set]:
    """Deterministic train/held-out split of the shard ids (at least one held out)."""
    ids = sorted(i for s in read_manifest(shard_dir)["shards"] for i in s["ids"])
    rng = np.random.default_rng(seed)
    ids = [ids[i] for i in rng.permutation(len(ids))]
    n_val = max(1, math.ceil(val_fraction * len(ids))) if len(ids) > 1 else 0
    val, train = ids[:n_val], ids[n_val:]
    if max_images is not None:
        train = train[:max_images]
    return set(train), set(val)


def batches(stream: ShardStream, keep: set, batch_size: int):
    """Collate items of `stream` whose id is in `keep` into batches (dicts of tensors)."""
    chunk = []
    for item in stream:
        if item["id"] in keep:
            chunk.append(item)
        if len(chunk) == batch_size:
            yield _collate(chunk)
            chunk = []
    if chunk:
        yield _collate(chunk)


def _collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in items[0] if k != "id"}
    out["id"] = [it["id"] for it in items]
    return out


def camera(resolution: int) -> Camera:
    fx, fy, cx, cy = gaussians.intrinsics(resolution, resolution)
    return Camera(fx=fx, fy=fy, cx=cx, cy=cy, width=resolution, height=resolution)


def render_batch(renderer, packed, resolution, stochastic_k=None, generator=None):
    """Render (B, N, 14) packed Gaussians -> (B, 3, R, R) images."""
    cam = camera(resolution)
    images = []
    for scene in packed:
        g = gaussians.unpack(scene)
        if stochastic_k is not None:
            keep = importance_sample(
                g["opacities"], g["scales"], g["means"], stochastic_k, generator
            )
            g = {k: v[keep] for k, v in g.items()}
        images.append(renderer(**g, camera=cam).image)
    return torch.stack(images)


def resize_targets(images: torch.Tensor, resolution: int) -> torch.Tensor:
    if images.shape[-1] == resolution:
        return images
    if images.shape[-1] < resolution:
        raise ValueError(
            f"shards hold targets at {images.shape[-1]}px but training renders at {resolution}px;"
            " raise shards.resolution or lower decoder.image_size"
        )
    return F.interpolate(images, size=(resolution, resolution), mode="area")


def pixel_weights(batch: dict, config: TrainConfig, resolution: int):
    """Per-pixel loss weights (VLM guidance x Fresnel-zone boundaries), or None."""
    weight = None
    if config.use_vlm_guidance:
        if "vlm_density" not in batch:
            raise ValueError("--use_vlm_guidance needs shards packed with a VLM density")
        weight = vlm_weight_map(batch["vlm_density"], config.vlm_weight, resolution)
    if config.use_fresnel_zones and config.boundary_weight > 0:
        depth = F.interpolate(
            batch["depth"][:, None], size=(resolution, resolution), mode="bilinear"
        )
        zones = fresnel_zones.boundary_loss_weights(
            depth[:, 0], config.num_fresnel_zones, config.boundary_weight
        )[:, None]
        weight = zones if weight is None else weight * zones
    return weight


def psnr(render: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) images in [0, 1]."""
    mse = (render.clamp(0, 1) - target).square().mean(dim=(1, 2, 3)).clamp_min(1e-10)
    return -10 * torch.log10(mse)


class Trainer:
    def __init__(self, config: TrainConfig, shard_dir, output_dir, target: str = "cpu"):
        self.config = config
        self.shard_dir, self.output_dir = Path(shard_dir), Path(output_dir)
        self.target = devices.resolve(target)
        self.device = self.target.torch_device()
        self.model = make_model(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.scaler = torch.amp.GradScaler(enabled=self.target.grad_scaler)
        self.loss = PhotometricLoss(
            config.l1_weight, config.ssim_weight, config.lpips_weight, config.lpips_backbone
        ).to(self.device)
        self.renderer = TileBasedRenderer()
        self.train_ids, self.val_ids = split_ids(
            shard_dir, config.val_fraction, config.seed, config.max_images
        )
        self.stream = ShardStream(shard_dir, seed=config.seed)
        self.epoch = 0  # epochs completed
        self.history: list[dict] = []

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_path(self, epoch: int) -> Path:
        return self.output_dir / f"decoder_exp{self.config.experiment}_epoch{epoch}.pt"

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "config": asdict(self.config),
            "history": self.history,
        }

    def save(self, path: Path, state: dict | None = None) -> Path:
        with atomic_path(path) as tmp:
            torch.save(state or self.state(), tmp)
        return path

    def resume(self, path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=True)
        if state["config"]["experiment"] != self.config.experiment:
            raise ValueError(f"{path} is experiment {state['config']['experiment']}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.history = state["epoch"], state["history"]
        log.info("resumed from %s after epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ steps
    def plan(self, epoch: int) -> EpochPlan:
        c = self.config
        return plan_epoch(epoch, c.epochs, c.image_size, c.gaussians_per_patch,
                          fast_mode=c.fast_mode, train_resolution=c.train_resolution,
                          progressive=c.progressive_schedule, stochastic_k=c.stochastic_k)  # fmt: skip

    def predict(self, batch: dict, k_active: int | None = None) -> torch.Tensor:
        with self.target.autocast():
            packed = self.model(batch["dinov2"].to(self.device), batch["depth"].to(self.device))
        packed = packed.float()
        k_total = self.config.gaussians_per_patch
        if k_active is not None and k_active < k_total:
            packed = select_per_patch(packed, k_active, k_total)
        return packed

    def train_step(self, batch: dict, plan: EpochPlan, generator) -> dict:
        packed = self.predict(batch, plan.k_active)
        if not torch.isfinite(packed).all():
            raise TrainingDiverged("the decoder predicted NaN/Inf Gaussians")
        render = render_batch(self.renderer, packed, plan.resolution, plan.stochastic_k, generator)
        target = resize_targets(batch["image"].to(self.device), plan.resolution)
        total, parts = self.loss(render, target, pixel_weights(batch, self.config, plan.resolution))
        if not torch.isfinite(total):
            raise TrainingDiverged(f"loss is {float(total)}")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        if not torch.isfinite(norm) and not self.target.grad_scaler:
            raise TrainingDiverged(f"gradient norm is {float(norm)}")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {"loss": float(total.detach()), **parts}

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[dict, tuple]:
        """Held-out PSNR/SSIM with every Gaussian at full resolution (+ one picture)."""
        self.model.eval()
        psnrs, ssims, sample = [], [], None
        self.stream.set_epoch(0)
        for batch in batches(self.stream, self.val_ids, self.config.batch_size):
            render = render_batch(self.renderer, self.predict(batch), self.config.image_size)
            target = resize_targets(batch["image"].to(self.device), self.config.image_size)
            psnrs += psnr(render, target).tolist()
            ssims += [
                float(ssim_value(r[None].clamp(0, 1), t[None]))
                for r, t in zip(render, target, strict=True)
            ]
            sample = sample or (render.cpu(), target.cpu())
        self.model.train()
        return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}, sample

    def run_epoch(self, epoch: int) -> dict:
        plan = self.plan(epoch)
        self.stream.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        started = time.perf_counter()
        losses = []
        steps = batches(self.stream, self.train_ids, self.config.batch_size)
        total = math.ceil(len(self.train_ids) / self.config.batch_size)
        for batch in tqdm(steps, total=total, desc=f"epoch {epoch + 1}", leave=False):
            losses.append(self.train_step(batch, plan, generator))
        means = {f"train_{k}": float(np.mean([s[k] for s in losses])) for k in losses[0]}
        return {"epoch": epoch + 1, "resolution": plan.resolution, "k_active": plan.k_active,
                "stochastic_k": plan.stochastic_k or 0, **means,
                "epoch_seconds": time.perf_counter() - started}  # fmt: skip


def final_checkpoint(run_dir) -> Path:
    """The checkpoint of the last epoch in a training output directory."""
    found = list(Path(run_dir).glob("decoder_exp*_epoch*.pt"))
    if not found:
        raise FileNotFoundError(f"{run_dir}: no decoder_exp*_epoch*.pt checkpoint")
    return max(found, key=lambda p: int(p.stem.rsplit("epoch", 1)[1]))


def train(config: TrainConfig, shard_dir, output_dir, target="cpu", resume=None, loggers=()):
    """Train for config.epochs; returns the final metrics. See module doc."""
    trainer = Trainer(config, shard_dir, output_dir, target)
    if resume:
        trainer.resume(resume)
    last_good = copy.deepcopy(trainer.state())
    for epoch in range(trainer.epoch, config.epochs):
        try:
            metrics = trainer.run_epoch(epoch)
        except TrainingDiverged as exc:
            path = trainer.save(trainer.output_dir / f"decoder_exp{config.experiment}_last_good.pt",
                                last_good)  # fmt: skip
            raise TrainingDiverged(
                f"training diverged in epoch {epoch + 1}: {exc}; the last good weights "
                f"(after epoch {last_good['epoch']}) are in {path}; lower --lr or check the data"
            ) from exc
        val, sample = trainer.validate(epoch)
        metrics.update(val)
        trainer.epoch = epoch + 1
        trainer.history.append(metrics)
        for logger in loggers:
            logger.log_epoch(metrics, sample)
        log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        if config.save_interval and trainer.epoch % config.save_interval == 0:
            trainer.save(trainer.checkpoint_path(trainer.epoch))
        last_good = copy.deepcopy(trainer.state())
    final = trainer.save(trainer.checkpoint_path(trainer.epoch))
    return {"checkpoint": str(final), **(trainer.history[-1] if trainer.history else {})}
