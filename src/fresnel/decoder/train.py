"""Training of the Gaussian decoder from teacher shards (the guide's train_gaussian_decoder).

One epoch: stream the training shards, predict Gaussians, render each with the tile
renderer at the epoch's HFTS plan, minimise the photometric loss, then render the held-out
images with every Gaussian at full resolution and log PSNR/SSIM. Deterministic on CPU:
model init, data order and sampled regions all derive from the seed and the epoch, so a
resumed run reproduces an uninterrupted one exactly.

AMP, checkpoints, seeding and the run log are `fresnel.training`'s. Every epoch writes
decoder_expN_last.pt (a finished run's final weights), a better held-out PSNR
decoder_expN_best.pt, and every save_interval-th and the last epoch decoder_expN_epochE.pt;
checkpoints hold no wall-clock values (two identical runs write identical bytes). The run
directory also gets history.json, curves.png, tensorboard/, dvclive/ and the held-out
pictures renders.png and renders/epoch_NNNN.png; with `clock_dir` (the DAG's rule) the
TensorBoard events and epoch seconds go there instead, and the run directory's bytes are
the same on every run.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fresnel import device as devices
from fresnel import metrics
from fresnel.config import to_dict
from fresnel.data.shards import ShardStream, read_manifest
from fresnel.decoder import fresnel_zones, gaussians
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.gaussians import select_per_patch
from fresnel.decoder.hfts import EpochPlan, plan_epoch, sample_regions
from fresnel.decoder.losses import PhotometricLoss, vlm_weight_map
from fresnel.decoder.models import build_decoder
from fresnel.decoder.pictures import log_renders
from fresnel.render import Camera, TileBasedRenderer
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Panel,
    Progress,
    RunLog,
    TrainingDiverged,
    World,
    distributed,
    epoch_generator,
    final_checkpoint,
    read_checkpoint,
)
from fresnel.training.checkpoint import CheckpointError
from fresnel.training.distributed import ShareSum, rank_device

log = logging.getLogger(__name__)

PANELS = (
    Panel("training loss", ("train_loss",), log_scale=True),
    Panel("held-out PSNR (dB)", ("val_psnr",)),
    Panel("held-out SSIM", ("val_ssim",)),
)


def checkpoint_names(experiment: int) -> CheckpointNames:
    """The checkpoint files of decoder experiment N (the guide's decoder_expN_epochE.pt)."""
    stem = f"decoder_exp{experiment}"
    return CheckpointNames(last=f"{stem}_last.pt", best=f"{stem}_best.pt",
                           periodic=f"{stem}_epoch{{epoch}}.pt")  # fmt: skip


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


def render_batch(renderer, packed, resolution, regions=None):
    """Render (B, N, 14) packed Gaussians -> (B, 3, R, R) images; with one (x0, y0, side)
    region per scene, only those regions (B, 3, side, side), each with every Gaussian that
    touches it, so its pixels are the full render's there."""
    cam = camera(resolution)
    images = []
    for i, scene in enumerate(packed):
        view = cam if regions is None else cam.cropped(*regions[i])
        images.append(renderer(**gaussians.unpack(scene), camera=view).image)
    return torch.stack(images)


def crop(images: torch.Tensor | None, regions) -> torch.Tensor | None:
    """(B, C, R, R) -> (B, C, side, side): each image's (x0, y0, side) region."""
    if images is None or regions is None:
        return images
    return torch.stack(
        [im[..., y : y + s, x : x + s] for im, (x, y, s) in zip(images, regions, strict=True)]
    )


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


class Trainer:
    def __init__(self, config: TrainConfig, shard_dir, output_dir, target: str = "cpu",
                 world: World | None = None):  # fmt: skip
        self.config = config
        self.shard_dir, self.output_dir = Path(shard_dir), Path(output_dir)
        self.target = devices.resolve(target)
        self.world = world or World()
        self.device = rank_device(self.target.torch_device(), self.world)
        self.model = make_model(config).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.amp = Amp(self.target, enabled=config.use_amp)
        self.loss = PhotometricLoss(
            config.l1_weight, config.ssim_weight, config.lpips_weight, config.lpips_backbone
        ).to(self.device)
        self.renderer = TileBasedRenderer()
        self.train_ids, self.val_ids = split_ids(
            shard_dir, config.val_fraction, config.seed, config.max_images
        )
        self.stream = ShardStream(shard_dir, seed=config.seed)
        self.checkpoints = Checkpointer(self.output_dir, checkpoint_names(config.experiment),
                                        model=self.model, optimizer=self.optimizer,
                                        scaler=self.amp.scaler)  # fmt: skip
        self.progress = Progress()  # progress.epoch: epochs completed
        self.last_good: Path | None = None  # the checkpoint of the last completed epoch

    # ------------------------------------------------------------------ checkpoints
    def resume(self, path) -> None:
        state = read_checkpoint(path, map_location=self.device)
        experiment = state["config"].get("experiment")
        if experiment != self.config.experiment:
            raise CheckpointError(
                f"{path}: a checkpoint of decoder experiment {experiment}, not {self.config.experiment}"
            )
        self.progress, _ = self.checkpoints.restore(state, path)
        self.last_good = Path(path)
        log.info("resumed from %s after epoch %d", path, self.progress.epoch)

    def save_epoch(self, record: dict) -> None:
        """Count the epoch done and write its checkpoints (see module doc)."""
        improved = self.progress.finish_epoch(record, monitored=-record["val_psnr"])
        epoch, every = self.progress.epoch, self.config.save_interval
        periodic = epoch == self.config.epochs or bool(every and epoch % every == 0)
        written = self.checkpoints.save_epoch(self.progress, to_dict(self.config),
                                              improved=improved, periodic=periodic)  # fmt: skip
        self.last_good = written["last"]

    def diverged(self, epoch: int, exc: TrainingDiverged) -> TrainingDiverged:
        if self.last_good is None:
            where = "no epoch had completed, so there is no last good checkpoint yet"
        else:
            where = (f"the last good weights (after epoch {self.progress.epoch}) are in "
                     f"{self.last_good}")  # fmt: skip
        return TrainingDiverged(f"training diverged in epoch {epoch + 1}: {exc}; {where}; "
                                "lower --lr or check the data")  # fmt: skip

    # ------------------------------------------------------------------ steps
    def plan(self, epoch: int) -> EpochPlan:
        c = self.config
        return plan_epoch(epoch, c.epochs, c.image_size, c.gaussians_per_patch,
                          fast_mode=c.fast_mode, train_resolution=c.train_resolution,
                          progressive=c.progressive_schedule, stochastic_k=c.stochastic_k)  # fmt: skip

    def predict(self, batch: dict, k_active: int | None = None) -> torch.Tensor:
        with self.amp.autocast():
            packed = self.model(batch["dinov2"].to(self.device), batch["depth"].to(self.device))
        packed = packed.float()
        k_total = self.config.gaussians_per_patch
        if k_active is not None and k_active < k_total:
            packed = select_per_patch(packed, k_active, k_total)
        return packed

    def train_step(self, batch: dict, plan: EpochPlan, generator) -> dict:
        """One optimiser step on a global batch, of which this rank computes its share
        (all of it in a world of one; see fresnel.training.distributed)."""
        n = len(batch["id"])
        regions = None
        if plan.region is not None:
            origins = sample_regions(n, plan.resolution, plan.region, generator)
            regions = [(x, y, plan.region) for x, y in origins]
        params = list(self.model.parameters())
        ranks = self.world.ranks_here()  # this rank, or every rank of an EmulatedWorld
        emulated = ShareSum(params)
        for rank in ranks:
            mine = rank.share(n)
            share = (mine.stop - mine.start) / n
            if share == 0:  # fewer items than ranks: compute on one, counted zero times
                mine = slice(0, 1)
            part = {k: v[mine] for k, v in batch.items()}
            total, parts = self.loss_of(part, plan, regions[mine] if regions else None)
            values = {"loss": float(total.detach()), **parts}
            if len(ranks) == 1:
                reduce = functools.partial(self.world.reduce_gradients, params, share)
                self.amp.backward(total, self.optimizer, reduce=reduce)
                logged = self.world.weighted_sum(values, share)
            else:
                self.amp.backward(total, self.optimizer)
                emulated.add(share, values)
        if len(ranks) > 1:
            logged = emulated.assign()
        self.amp.apply(self.optimizer, params, clip=self.config.grad_clip)
        self.progress.global_step += 1
        return logged

    def loss_of(self, batch: dict, plan: EpochPlan, regions) -> tuple[torch.Tensor, dict]:
        packed = self.predict(batch, plan.k_active)
        if not torch.isfinite(packed).all():
            raise TrainingDiverged("the decoder predicted NaN/Inf Gaussians")
        render = render_batch(self.renderer, packed, plan.resolution, regions)
        target = crop(resize_targets(batch["image"].to(self.device), plan.resolution), regions)
        weight = crop(pixel_weights(batch, self.config, plan.resolution), regions)
        return self.loss(render, target, weight)

    @torch.no_grad()
    def validate(self, epoch: int) -> tuple[dict, tuple]:
        """Held-out PSNR/SSIM with every Gaussian at full resolution (+ one picture)."""
        self.model.eval()
        psnrs, ssims, sample = [], [], None
        self.stream.set_epoch(0)
        for batch in batches(self.stream, self.val_ids, self.config.batch_size):
            render = render_batch(self.renderer, self.predict(batch), self.config.image_size)
            target = resize_targets(batch["image"].to(self.device), self.config.image_size)
            psnrs += metrics.psnr(render, target).tolist()
            ssims += metrics.ssim(render.clamp(0, 1), target, per_item=True).tolist()
            sample = sample or (render.cpu(), target.cpu())
        self.model.train()
        return {"val_psnr": float(np.mean(psnrs)), "val_ssim": float(np.mean(ssims))}, sample

    def run_epoch(self, epoch: int) -> dict:
        plan = self.plan(epoch)
        self.stream.set_epoch(epoch)
        generator = epoch_generator(self.config.seed, epoch)
        started = time.perf_counter()
        losses = []
        steps = batches(self.stream, self.train_ids, self.config.batch_size)
        total = math.ceil(len(self.train_ids) / self.config.batch_size)
        for batch in tqdm(steps, total=total, desc=f"epoch {epoch + 1}", leave=False,
                          disable=not self.world.main):  # fmt: skip
            losses.append(self.train_step(batch, plan, generator))
        means = {f"train_{k}": float(np.mean([s[k] for s in losses])) for k in losses[0]}
        return {"epoch": epoch + 1, "resolution": plan.resolution, "k_active": plan.k_active,
                "region": plan.region or 0, **means,
                "epoch_seconds": time.perf_counter() - started}  # fmt: skip


def train(config: TrainConfig, shard_dir, output_dir, target="cpu", resume=None,
          world: World | None = None, clock_dir=None) -> dict:  # fmt: skip
    """Train for config.epochs (continuing `resume`, a checkpoint, when given); returns the
    final checkpoint's path and the last epoch's record. Under torchrun/srun every rank
    calls this with its `world`; rank 0 validates, logs and writes. See module doc."""
    world = world or World()
    trainer = Trainer(config, shard_dir, output_dir, target, world)
    if resume:
        trainer.resume(resume)
    runlog = None
    if world.main:
        runlog = RunLog(trainer.output_dir, resume_epoch=trainer.progress.epoch, panels=PANELS,
                        dvclive=True, clock_dir=clock_dir)  # fmt: skip
    try:
        for epoch in range(trainer.progress.epoch, config.epochs):
            try:
                record = trainer.run_epoch(epoch)
            except TrainingDiverged as exc:
                raise trainer.diverged(epoch, exc) from exc
            if world.main:
                finish_epoch(trainer, runlog, epoch, record)
            world.barrier()  # the epoch's checkpoint is written before any rank goes on
    finally:
        if runlog is not None:
            runlog.close()
    digest = world.check_same_weights(trainer.model)
    if world.size > 1:
        log.info("rank %d: weights identical on all %d ranks (sha256 %s)", world.rank,
                 world.size, digest[:16])  # fmt: skip
    last = (runlog.records[-1:] if runlog else []) or trainer.progress.history[-1:]
    checkpoint = final_checkpoint(trainer.output_dir, trainer.checkpoints.names)
    return {"checkpoint": str(checkpoint), **(last[0] if last else {})}


def train_rank(config: dict, shard_dir: str, output_dir: str, target: str,
               resume: str | None = None, clock_dir: str | None = None) -> dict | None:  # fmt: skip
    """One rank of a run that `fresnel.training.launch.run_ranks` started (the training
    rules with tasks > 1): joins the process group; rank 0 returns `train`'s stats."""
    world = distributed.init(devices.resolve(target).torch_device())
    try:
        stats = train(TrainConfig.from_dict(config), shard_dir, output_dir, target, resume, world,
                      clock_dir)  # fmt: skip
    finally:
        world.close()
    return stats if world.main else None


def finish_epoch(trainer: Trainer, runlog: RunLog, epoch: int, record: dict) -> None:
    """Validate, log and checkpoint the finished epoch (rank 0's part)."""
    val, sample = trainer.validate(epoch)
    record.update(val)
    if sample is not None:
        log_renders(runlog, epoch + 1, *sample)
    runlog.epoch(record)
    log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in record.items()})
    trainer.save_epoch(record)
