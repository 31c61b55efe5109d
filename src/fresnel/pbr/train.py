"""Training loop of the NeuroPBR teacher (the guide's `train.py`).

One run: split the samples by material (seeded: no material in both train and val), train
`MultiViewPBRGenerator` with `HybridLoss`, switch the PatchGAN on after `gan_start_epoch`
reconstruction-only epochs (`d_steps_per_g_step` discriminator updates per generator update),
validate every epoch, and write to the checkpoint dir (fresnel.training's checkpoint layout
and run log, with the guide's names and component keys):
    checkpoint_epoch_NNNN.pth (every save_every_n_epochs, unless save_best_only),
    best_model.pth (lowest validation loss; training loss when there is no val split),
    latest.pth (every epoch, what --resume continues from), history.json, curves.png,
    logs/ (TensorBoard scalars and image grids; log_dir overrides).
With `clock_dir`, the wall-clock (epoch seconds, TensorBoard's events) goes there instead, and
the checkpoint dir is the same bytes on every run (the DAG's tracked output).
Checkpoints hold plain dicts and tensors only (they load with torch.load(weights_only=True))
and nothing wall-clock: two identical runs write byte-identical files.

Determinism: the model is initialised from the seed and every epoch reseeds torch and draws
its own shuffle from (seed, epoch), so a run resumed from a checkpoint ends with exactly the
weights of an uninterrupted run on the CPU (tested). AMP (fresnel.training.Amp) follows
fresnel.device's policy for the target (bf16 or fp16 + GradScaler on CUDA, fp16 on MPS, off
on the CPU).
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fresnel import device as devices
from fresnel import metrics
from fresnel.pbr.config import TrainConfig
from fresnel.pbr.data import PBRDataset, check_no_material_leak, split_by_material
from fresnel.pbr.discriminator import build_discriminator, d_loss, discriminator_input
from fresnel.pbr.losses import HybridLoss, normal_angles_deg
from fresnel.pbr.maps import MAPS, encode_normal, split_maps
from fresnel.pbr.teacher import MultiViewPBRGenerator
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Panel,
    Progress,
    RunLog,
    TrainingDiverged,
    epoch_generator,
    epoch_seed,
    read_checkpoint,
)
from fresnel.training.runlog import CURVES, HISTORY

log = logging.getLogger(__name__)

TEACHER_CHECKPOINTS = CheckpointNames(
    last="latest.pth", best="best_model.pth", periodic="checkpoint_epoch_{epoch:04d}.pth"
)
PANELS = (Panel("loss", ("train_loss", "val_loss", "d_loss"), log_scale=True),)


def say(line: str) -> None:
    """A console line of the guide's (also in the log)."""
    tqdm.write(line)
    log.info(line)


def build_dataset(cfg: TrainConfig, input_dir, output_dir, metadata_path, samples=None):
    return PBRDataset(
        input_dir,
        output_dir,
        metadata_path,
        transform_mean=cfg.transform.mean,
        transform_std=cfg.transform.std,
        image_size=cfg.data.image_size,
        output_size=cfg.output_size,
        curriculum_mode=cfg.curriculum,
        samples=samples,
    )


def split_samples(cfg: TrainConfig, dataset: PBRDataset) -> tuple[list[str], list[str]]:
    train, val = split_by_material(
        dataset.samples, dataset.material_of, cfg.data.val_ratio, cfg.training.seed
    )
    check_no_material_leak(train, val, dataset.material_of)
    return train, val


def make_scheduler(optimizer, cfg: TrainConfig, base_lr: float):
    """Per-epoch LR schedule: cosine with linear warm-up, step, plateau, or None."""
    o, epochs = cfg.optimizer, cfg.training.epochs
    if o.scheduler == "cosine":
        warm, floor = o.scheduler_warmup_epochs, min(1.0, o.scheduler_min_lr / base_lr)

        def factor(done: int) -> float:  # `done` = epochs completed before this one
            if done < warm:
                return (done + 1) / (warm + 1)
            progress = min(1.0, (done - warm) / max(1, epochs - warm))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, o.step_size, o.gamma)
    if o.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=o.factor, patience=o.patience, min_lr=o.scheduler_min_lr
        )
    return None


def _move(batch, device):
    views, targets = batch
    return views.to(device, non_blocking=True), targets.to(device, non_blocking=True)


class Trainer:
    """Holds the models, optimisers and progress of one training run."""

    def __init__(self, cfg: TrainConfig, target: devices.Target, checkpoint_dir: Path):
        self.cfg, self.target, self.dir = cfg, target, checkpoint_dir
        self.device = target.torch_device()
        torch.manual_seed(cfg.training.seed)
        self.G = MultiViewPBRGenerator(cfg.model).to(self.device)
        self.D = build_discriminator(cfg).to(self.device) if cfg.model.use_gan else None
        o = cfg.optimizer
        trainable = [p for p in self.G.parameters() if p.requires_grad]
        self.g_opt = torch.optim.AdamW(
            trainable, lr=o.g_lr, betas=tuple(o.g_betas), weight_decay=o.g_weight_decay
        )
        self.g_sched = make_scheduler(self.g_opt, cfg, o.g_lr)
        self.g_amp = Amp(target, cfg.training.use_amp)
        components = {
            "generator_state_dict": self.G,
            "g_optimizer_state_dict": self.g_opt,
            "g_scheduler_state_dict": self.g_sched,
            "g_scaler_state_dict": self.g_amp.scaler,
        }
        self.d_opt = self.d_sched = self.d_amp = None
        if self.D is not None:
            self.d_opt = torch.optim.AdamW(
                self.D.parameters(),
                lr=o.d_lr,
                betas=tuple(o.d_betas),
                weight_decay=o.d_weight_decay,
            )
            self.d_sched = make_scheduler(self.d_opt, cfg, o.d_lr)
            self.d_amp = Amp(target, cfg.training.use_amp)
            components.update(
                discriminator_state_dict=self.D,
                d_optimizer_state_dict=self.d_opt,
                d_scheduler_state_dict=self.d_sched,
                d_scaler_state_dict=self.d_amp.scaler,
            )
        self.loss = HybridLoss(
            cfg.loss,
            cfg.model.use_gan,
            cfg.training.gan_start_epoch,
            cfg.model.discriminator_use_sigmoid,
        )
        self.checkpoints = Checkpointer(checkpoint_dir, TEACHER_CHECKPOINTS, **components)
        self.progress = Progress()
        self.split: dict[str, list[str]] = {"train": [], "val": []}
        self.last_good: Path | None = None  # the checkpoint a diverged run can resume from

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.progress.epoch

    # --- state -----------------------------------------------------------------------------
    def save_epoch(self, improved: bool, periodic: bool) -> dict[str, Path]:
        written = self.checkpoints.save_epoch(
            self.progress, self.cfg.to_dict(), improved=improved, periodic=periodic,
            extra={"split": self.split},
        )  # fmt: skip
        self.last_good = written["last"]
        return written

    def load(self, path: str | os.PathLike) -> None:
        state = read_checkpoint(path, self.device)
        if state["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"{path}: its model options differ from this run's config; resume with the "
                "checkpoint's config (pass cfg=None) or start a new run"
            )
        self.progress, extra = self.checkpoints.restore(state, path)
        self.split = extra["split"]
        self.last_good = Path(path)

    # --- steps -----------------------------------------------------------------------------
    def gan_on(self, epoch: int) -> bool:
        return self.D is not None and epoch > self.cfg.training.gan_start_epoch

    def _step(self, amp: Amp, loss, optimizer, params, which: str, components=None) -> None:
        """Amp.step, with the epoch, step and last good checkpoint named when it diverges."""
        try:
            amp.step(loss, optimizer, params, self.cfg.training.grad_clip_norm, f"{which} loss")
        except TrainingDiverged as exc:
            epoch, step = self._where
            raise TrainingDiverged(
                f"epoch {epoch} step {step}: {exc}"
                + (f" (components {components})" if components else "")
                + "; lower optimizer.g_lr/d_lr, tighten training.grad_clip_norm or turn AMP "
                f"off; last good checkpoint: {self.last_good or 'none (no epoch finished)'}"
            ) from None

    def d_step(self, pred: dict, target: torch.Tensor, views: torch.Tensor) -> float:
        cond = views if self.cfg.model.discriminator_conditional else None
        real = discriminator_input(split_maps(target), cond)
        fake = discriminator_input({k: v.detach() for k, v in pred.items()}, cond)
        with self.d_amp.autocast():
            real_scores, fake_scores = self.D(real), self.D(fake)
        loss = d_loss(
            real_scores,
            fake_scores,
            self.cfg.loss.gan_loss_type,
            self.cfg.model.discriminator_use_sigmoid,
        )
        self._step(self.d_amp, loss, self.d_opt, self.D.parameters(), "discriminator")
        return float(loss.detach())

    def train_step(self, views, target, epoch: int) -> dict:
        self._where = (epoch, self.progress.global_step)
        with self.g_amp.autocast():
            pred = self.G(views)
        parts = {}
        if self.gan_on(epoch):
            for _ in range(self.cfg.training.d_steps_per_g_step):
                parts["d_loss"] = self.d_step(pred, target, views)
        d_fake = None
        if self.gan_on(epoch) and self.loss.gan_active(epoch):
            cond = views if self.cfg.model.discriminator_conditional else None
            self.D.requires_grad_(False)
            with self.g_amp.autocast():
                d_fake = self.D(discriminator_input(pred, cond))
            self.D.requires_grad_(True)
        loss, components = self.loss(pred, target, d_fake)
        self._step(self.g_amp, loss, self.g_opt, self.G.parameters(), "generator", components)
        self.progress.global_step += 1
        return {**components, **parts}

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[dict, tuple | None]:
        """Mean reconstruction loss and map metrics over `loader`; the first batch for images."""
        self.G.eval()
        sums: dict[str, float] = {}
        angles, count, first = [], 0, None
        for views, target in loader:
            views, target = _move((views, target), self.device)
            with self.g_amp.autocast():
                pred = self.G(views)
            pred = {k: v.float() for k, v in pred.items()}
            _, comp = self.loss(pred, target)
            values = {"loss": comp["total"], **map_metrics(pred, split_maps(target))}
            n = views.shape[0]
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + value * n
            angles.append(normal_angles_deg(pred["normal"], split_maps(target)["normal"]).flatten())
            count += n
            first = first or (views.cpu(), {k: v.cpu() for k, v in pred.items()}, target.cpu())
        self.G.train()
        out = {k: v / count for k, v in sums.items()}
        out["normal_angle_median"] = float(torch.cat(angles).median())
        return out, first


def map_metrics(pred: dict, target: dict) -> dict:
    """Per-map PSNR (fresnel.metrics, mean over images) and MAE (normals in their [0,1]
    encoding), albedo SSIM, mean normal angle."""
    out = {}
    for name in MAPS:
        p, t = pred[name], target[name]
        if name == "normal":
            p, t = encode_normal(p), encode_normal(t)
        out[f"psnr_{name}"] = float(metrics.psnr(p, t).mean())
        out[f"mae_{name}"] = float((p.float() - t.float()).abs().mean())
    out["ssim_albedo"] = float(metrics.ssim(pred["albedo"], target["albedo"]))
    out["normal_angle_mean"] = float(normal_angles_deg(pred["normal"], target["normal"]).mean())
    return out


def _loader(dataset, cfg: TrainConfig, order=None) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.training.batch_size,
        sampler=order,
        shuffle=False,
        num_workers=cfg.data.num_workers,
        pin_memory=False,
    )


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()


def log_step(runlog: RunLog, cfg: TrainConfig, step: int, parts: dict, lr: float) -> None:
    if not cfg.training.use_tensorboard or step % cfg.training.log_every_n_steps:
        return
    values = {"G_loss": parts["total"]}
    if "d_loss" in parts:
        values["D_loss"] = parts["d_loss"]
    values.update({f"l1_{name}": parts[f"l1_{name}"] for name in MAPS})
    values.update(ssim_albedo=parts["ssim"], normal_angle_deg=parts["normal_angle_deg"])
    values.update(gan_g=parts["gan_g"], lr=lr)
    runlog.scalars(step, values, prefix="train/")


def log_images(writer, cfg: TrainConfig, epoch: int, views, pred: dict, target) -> None:
    """Prediction / ground truth / error grid of the first item, and its input views."""
    from torchvision.utils import make_grid

    from fresnel.pbr.data import denormalize_views

    tgt = split_maps(target)
    rows = []
    for name in MAPS:
        p, t = _displayable(name, pred[name][0]), _displayable(name, tgt[name][0])
        err = (p - t).abs().mean(0, keepdim=True).expand(3, -1, -1)
        rows += [p, t, (err * 4).clamp(0, 1)]  # x4: small errors stay visible
    writer.add_image("maps/pred_gt_error", make_grid(rows, nrow=3, padding=2), epoch)
    shown = denormalize_views(views[0], cfg.transform.mean, cfg.transform.std)
    writer.add_image("inputs/views", make_grid(list(shown.clamp(0, 1)), nrow=3), epoch)


def _displayable(name: str, image: torch.Tensor) -> torch.Tensor:
    image = encode_normal(image) if name == "normal" else image
    return image.float().clamp(0, 1).expand(3, -1, -1)


def _mean(dicts: list[dict], key: str) -> float | None:
    values = [d[key] for d in dicts if key in d]
    return sum(values) / len(values) if values else None


def resolve_run_config(cfg: TrainConfig | None, resume) -> TrainConfig:
    if cfg is not None:
        return cfg.validate()
    if resume is None:
        raise ValueError("train() needs a config, or a checkpoint to resume whose config it uses")
    return TrainConfig.from_dict(read_checkpoint(resume)["config"])


def train(
    cfg: TrainConfig | None,
    input_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    device: str | None = None,
    metadata_path: str | os.PathLike | None = None,
    log_dir: str | os.PathLike | None = None,
    clock_dir: str | os.PathLike | None = None,
) -> dict:
    """Train the teacher; return a summary dict (see module docstring for what is written).

    `cfg=None` with `resume` uses the checkpoint's config. `device` overrides
    cfg.training.device ("auto" = the GPU this torch sees, else the CPU); an explicit device
    that is unavailable is an error.
    """
    start = time.perf_counter()
    cfg = resolve_run_config(cfg, resume)
    target = devices.resolve(device or cfg.training.device)
    ckpt_dir = Path(checkpoint_dir or cfg.training.checkpoint_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, target, ckpt_dir)
    if resume:
        trainer.load(resume)
        log.info("resumed from %s after epoch %d", resume, trainer.epoch)
    else:
        full = build_dataset(cfg, input_dir, output_dir, metadata_path)
        train_s, val_s = split_samples(cfg, full)
        trainer.split = {"train": train_s, "val": val_s}
    train_set = build_dataset(cfg, input_dir, output_dir, metadata_path, trainer.split["train"])
    val_set = (
        build_dataset(cfg, input_dir, output_dir, metadata_path, trainer.split["val"])
        if trainer.split["val"]
        else None
    )
    t = cfg.training
    wandb = {"project": t.wandb_project, "config": cfg.to_dict()} if t.use_wandb else None
    runlog = RunLog(
        ckpt_dir, resume_epoch=trainer.epoch, panels=PANELS,
        tensorboard_dir=log_dir or Path(clock_dir or ckpt_dir) / "logs", wandb=wandb,
        clock_dir=clock_dir,
    )  # fmt: skip
    say(
        f"[Data] {len(train_set)} train entries ({len(train_set.materials)} materials), "
        f"{len(val_set) if val_set else 0} val entries "
        f"({len(val_set.materials) if val_set else 0} materials); curriculum {cfg.curriculum}; "
        f"device {target.name}, AMP {trainer.g_amp.describe()}"
    )
    try:
        for epoch in range(trainer.epoch + 1, cfg.training.epochs + 1):
            run_epoch(trainer, epoch, train_set, val_set, runlog)
    finally:
        runlog.close()
    return summarise(trainer, train_set, val_set, ckpt_dir, time.perf_counter() - start)


def run_epoch(trainer: Trainer, epoch: int, train_set, val_set, runlog: RunLog) -> None:
    cfg, t0 = trainer.cfg, time.perf_counter()
    torch.manual_seed(epoch_seed(cfg.training.seed, epoch))
    trainer.G.train()
    if trainer.D is not None:
        trainer.D.train()
    order = epoch_order(len(train_set), cfg.training.seed, epoch)
    bar = tqdm(_loader(train_set, cfg, order), desc=f"Epoch {epoch}", leave=False)
    steps = []
    for batch in bar:
        views, target = _move(batch, trainer.device)
        parts = trainer.train_step(views, target, epoch)
        steps.append(parts)
        lr = trainer.g_opt.param_groups[0]["lr"]
        log_step(runlog, cfg, trainer.progress.global_step, parts, lr)
        postfix = {"G_loss": f"{parts['total']:.3f}"}
        if "d_loss" in parts:
            postfix["D_loss"] = f"{parts['d_loss']:.3f}"
        bar.set_postfix(postfix)
    bar.close()
    record = {
        "epoch": epoch,
        "train_loss": _mean(steps, "total"),
        "d_loss": _mean(steps, "d_loss"),
        "train_normal_angle_deg": _mean(steps, "normal_angle_deg"),
        "lr": trainer.g_opt.param_groups[0]["lr"],
        "gan": trainer.gan_on(epoch),
    }
    say(f"Epoch {epoch} Summary:\n  Generator Loss: {record['train_loss']:.4f}")
    if record["d_loss"] is not None:
        say(f"  Discriminator Loss: {record['d_loss']:.4f}")
    sample = None
    if val_set is not None:
        values, sample = trainer.evaluate(_loader(val_set, cfg))
        record.update({"val_loss": values["loss"]}, **{f"val_{k}": v for k, v in values.items()})
        say(f"[Validation] Epoch {epoch} - Loss: {values['loss']:.4f}")
    record["seconds"] = round(time.perf_counter() - t0, 3)
    finish_epoch(trainer, record, sample, train_set, runlog)


def finish_epoch(trainer: Trainer, record: dict, sample, train_set, runlog: RunLog) -> None:
    cfg, epoch = trainer.cfg, record["epoch"]
    monitored = record.get("val_loss", record["train_loss"])
    with warnings.catch_warnings():
        # D's schedule advances by epoch even before the GAN starts (no D step taken yet)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for sched in (trainer.g_sched, trainer.d_sched):
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(monitored)
            elif sched is not None:
                sched.step()
    improved = trainer.progress.finish_epoch(record, monitored)
    every = cfg.training.log_images_every_n_epochs
    if cfg.training.use_tensorboard and every and epoch % every == 0:
        if sample is None:  # no val split: show a training sample
            _, sample = trainer.evaluate(_loader(train_set, cfg, [0]))
        log_images(runlog.tensorboard, cfg, epoch, *sample)
    runlog.epoch(record)
    periodic = epoch % cfg.training.save_every_n_epochs == 0 and not cfg.training.save_best_only
    written = trainer.save_epoch(improved, periodic)
    if "periodic" in written:
        say(f"Saved checkpoint: {written['periodic']}")
    if improved:
        say(f"Saved best model: {written['best']}")


def summarise(trainer: Trainer, train_set, val_set, ckpt_dir: Path, seconds: float) -> dict:
    history, progress = trainer.progress.history, trainer.progress
    last = history[-1] if history else {}
    names = trainer.checkpoints.names
    return {
        "epochs_completed": trainer.epoch,
        "device": trainer.target.name,
        "amp": trainer.g_amp.enabled,
        "monitor": "val_loss" if val_set is not None else "train_loss",
        "best_loss": progress.best_metric,
        "best_epoch": progress.best_epoch,
        "first_train_loss": history[0]["train_loss"] if history else None,
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "final_val_metrics": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "train_samples": trainer.split["train"],
        "val_samples": trainer.split["val"],
        "train_materials": train_set.materials,
        "val_materials": val_set.materials if val_set is not None else [],
        "checkpoint_dir": str(ckpt_dir),
        "latest": str(ckpt_dir / names.last),
        "best": str(ckpt_dir / names.best),
        "history": str(ckpt_dir / HISTORY),
        "curves": str(ckpt_dir / CURVES),
        "seconds": round(seconds, 3),
    }
