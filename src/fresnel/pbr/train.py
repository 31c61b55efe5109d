"""Training loop of the NeuroPBR teacher (the guide's `train.py`).

One run: split the samples by material (seeded: no material in both train and val), train
`MultiViewPBRGenerator` with `HybridLoss`, switch the PatchGAN on after `gan_start_epoch`
reconstruction-only epochs (`d_steps_per_g_step` discriminator updates per generator update),
validate every epoch, and write to the checkpoint dir:
    checkpoint_epoch_NNNN.pth (every save_every_n_epochs, unless save_best_only),
    best_model.pth (lowest validation loss; training loss when there is no val split),
    latest.pth (every epoch, what --resume continues from), history.json, curves.png,
    logs/ (TensorBoard scalars and image grids; log_dir overrides).
Checkpoints hold plain dicts and tensors only: they load with torch.load(weights_only=True).

Determinism: the model is initialised from the seed and every epoch reseeds torch and draws
its own shuffle from (seed, epoch), so a run resumed from a checkpoint ends with exactly the
weights of an uninterrupted run on the CPU (tested). AMP follows fresnel.device's policy for
the target (bf16 or fp16 + GradScaler on CUDA, fp16 on MPS, off on the CPU).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fresnel import device as devices
from fresnel.io import atomic_path, write_json
from fresnel.pbr.config import TrainConfig
from fresnel.pbr.data import PBRDataset, check_no_material_leak, split_by_material
from fresnel.pbr.discriminator import build_discriminator, d_loss, discriminator_input
from fresnel.pbr.losses import HybridLoss, normal_angles_deg, psnr, ssim_value
from fresnel.pbr.maps import MAPS, encode_normal, split_maps
from fresnel.pbr.teacher import MultiViewPBRGenerator, read_checkpoint

log = logging.getLogger(__name__)

LATEST, BEST = "latest.pth", "best_model.pth"


class TrainingDiverged(RuntimeError):
    """A loss became NaN or infinite."""


def pick_target(requested: str) -> devices.Target:
    """'auto' = first available of CUDA (or ROCm), MPS, CPU; an explicit name must work here."""
    if requested != "auto":
        return devices.resolve(requested)
    for name in ("cuda", "rocm", "mps"):
        with contextlib.suppress(devices.TargetUnavailable):
            return devices.resolve(name)
    return devices.resolve("cpu")


def periodic_name(epoch: int) -> str:
    return f"checkpoint_epoch_{epoch:04d}.pth"


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


def _grad_scaler(target: devices.Target, use_amp: bool):
    enabled = use_amp and target.grad_scaler
    return torch.amp.GradScaler(target.torch_device().type, enabled=enabled)


def _move(batch, device):
    views, targets = batch
    return views.to(device, non_blocking=True), targets.to(device, non_blocking=True)


class Trainer:
    """Holds the models, optimisers and state of one training run."""

    def __init__(self, cfg: TrainConfig, target: devices.Target, checkpoint_dir: Path):
        self.cfg, self.target, self.dir = cfg, target, checkpoint_dir
        self.device = target.torch_device()
        self.amp = cfg.training.use_amp and target.amp_dtype is not None
        torch.manual_seed(cfg.training.seed)
        self.G = MultiViewPBRGenerator(cfg.model).to(self.device)
        self.D = build_discriminator(cfg).to(self.device) if cfg.model.use_gan else None
        o = cfg.optimizer
        trainable = [p for p in self.G.parameters() if p.requires_grad]
        self.g_opt = torch.optim.AdamW(
            trainable, lr=o.g_lr, betas=tuple(o.g_betas), weight_decay=o.g_weight_decay
        )
        self.g_sched = make_scheduler(self.g_opt, cfg, o.g_lr)
        self.g_scaler = _grad_scaler(target, cfg.training.use_amp)
        if self.D is not None:
            self.d_opt = torch.optim.AdamW(
                self.D.parameters(),
                lr=o.d_lr,
                betas=tuple(o.d_betas),
                weight_decay=o.d_weight_decay,
            )
            self.d_sched = make_scheduler(self.d_opt, cfg, o.d_lr)
            self.d_scaler = _grad_scaler(target, cfg.training.use_amp)
        self.loss = HybridLoss(
            cfg.loss,
            cfg.model.use_gan,
            cfg.training.gan_start_epoch,
            cfg.model.discriminator_use_sigmoid,
        )
        self.epoch = 0  # epochs completed
        self.global_step = 0
        self.best = math.inf
        self.best_epoch = 0
        self.history: list[dict] = []
        self.split: dict[str, list[str]] = {"train": [], "val": []}

    def autocast(self):
        return self.target.autocast() if self.amp else contextlib.nullcontext()

    # --- state -----------------------------------------------------------------------------
    def state(self) -> dict:
        state = {
            "generator_state_dict": self.G.state_dict(),
            "g_optimizer_state_dict": self.g_opt.state_dict(),
            "g_scheduler_state_dict": self.g_sched.state_dict() if self.g_sched else None,
            "g_scaler_state_dict": self.g_scaler.state_dict(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best_val_loss": self.best,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "split": self.split,
        }
        if self.D is not None:
            state.update(
                discriminator_state_dict=self.D.state_dict(),
                d_optimizer_state_dict=self.d_opt.state_dict(),
                d_scheduler_state_dict=self.d_sched.state_dict() if self.d_sched else None,
                d_scaler_state_dict=self.d_scaler.state_dict(),
            )
        return state

    def save(self, name: str) -> Path:
        path = self.dir / name
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        return path

    def load(self, path: str | os.PathLike) -> None:
        ckpt = read_checkpoint(path, self.device)
        if ckpt["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"{path}: its model options differ from this run's config; resume with the "
                "checkpoint's config (pass cfg=None) or start a new run"
            )
        self.G.load_state_dict(ckpt["generator_state_dict"])
        self.g_opt.load_state_dict(ckpt["g_optimizer_state_dict"])
        if self.g_sched and ckpt.get("g_scheduler_state_dict"):
            self.g_sched.load_state_dict(ckpt["g_scheduler_state_dict"])
        self.g_scaler.load_state_dict(ckpt["g_scaler_state_dict"])
        if self.D is not None:
            self.D.load_state_dict(ckpt["discriminator_state_dict"])
            self.d_opt.load_state_dict(ckpt["d_optimizer_state_dict"])
            if self.d_sched and ckpt.get("d_scheduler_state_dict"):
                self.d_sched.load_state_dict(ckpt["d_scheduler_state_dict"])
            self.d_scaler.load_state_dict(ckpt["d_scaler_state_dict"])
        self.epoch, self.global_step = int(ckpt["epoch"]), int(ckpt["global_step"])
        self.best, self.best_epoch = float(ckpt["best_val_loss"]), int(ckpt["best_epoch"])
        self.history = list(ckpt["history"])
        self.split = ckpt["split"]

    # --- steps -----------------------------------------------------------------------------
    def gan_on(self, epoch: int) -> bool:
        return self.D is not None and epoch > self.cfg.training.gan_start_epoch

    def _clip_and_step(self, loss, optimizer, scaler, params) -> None:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if self.cfg.training.grad_clip_norm:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, self.cfg.training.grad_clip_norm)
        scaler.step(optimizer)
        scaler.update()

    def d_step(self, pred: dict, target: torch.Tensor, views: torch.Tensor) -> float:
        cond = views if self.cfg.model.discriminator_conditional else None
        real = discriminator_input(split_maps(target), cond)
        fake = discriminator_input({k: v.detach() for k, v in pred.items()}, cond)
        with self.autocast():
            real_scores, fake_scores = self.D(real), self.D(fake)
        loss = d_loss(
            real_scores,
            fake_scores,
            self.cfg.loss.gan_loss_type,
            self.cfg.model.discriminator_use_sigmoid,
        )
        self._check_finite(loss, "discriminator")
        self._clip_and_step(loss, self.d_opt, self.d_scaler, self.D.parameters())
        return float(loss.detach())

    def train_step(self, views, target, epoch: int) -> dict:
        self._where = (epoch, self.global_step)
        with self.autocast():
            pred = self.G(views)
        parts = {}
        if self.gan_on(epoch):
            for _ in range(self.cfg.training.d_steps_per_g_step):
                parts["d_loss"] = self.d_step(pred, target, views)
        d_fake = None
        if self.gan_on(epoch) and self.loss.gan_active(epoch):
            cond = views if self.cfg.model.discriminator_conditional else None
            self.D.requires_grad_(False)
            with self.autocast():
                d_fake = self.D(discriminator_input(pred, cond))
            self.D.requires_grad_(True)
        loss, components = self.loss(pred, target, d_fake)
        self._check_finite(loss, "generator", components)
        self._clip_and_step(loss, self.g_opt, self.g_scaler, self.G.parameters())
        self.global_step += 1
        return {**components, **parts}

    def _check_finite(self, loss: torch.Tensor, which: str, components: dict | None = None):
        if not torch.isfinite(loss.detach()).all():
            epoch, step = self._where
            raise TrainingDiverged(
                f"epoch {epoch} step {step}: the {which} loss is {float(loss.detach())}"
                + (f" (components {components})" if components else "")
                + "; lower optimizer.g_lr/d_lr, tighten training.grad_clip_norm or turn AMP off"
            )

    @torch.no_grad()
    def evaluate(self, loader) -> tuple[dict, tuple | None]:
        """Mean reconstruction loss and map metrics over `loader`; the first batch for images."""
        self.G.eval()
        sums: dict[str, float] = {}
        angles, count, first = [], 0, None
        for views, target in loader:
            views, target = _move((views, target), self.device)
            with self.autocast():
                pred = self.G(views)
            pred = {k: v.float() for k, v in pred.items()}
            _, comp = self.loss(pred, target)
            metrics = {"loss": comp["total"], **map_metrics(pred, split_maps(target))}
            n = views.shape[0]
            for key, value in metrics.items():
                sums[key] = sums.get(key, 0.0) + value * n
            angles.append(normal_angles_deg(pred["normal"], split_maps(target)["normal"]).flatten())
            count += n
            first = first or (views.cpu(), {k: v.cpu() for k, v in pred.items()}, target.cpu())
        self.G.train()
        out = {k: v / count for k, v in sums.items()}
        out["normal_angle_median"] = float(torch.cat(angles).median())
        return out, first


def map_metrics(pred: dict, target: dict) -> dict:
    """Per-map PSNR and MAE (normals in their [0,1] encoding), albedo SSIM, mean normal angle."""
    out = {}
    for name in MAPS:
        p, t = pred[name], target[name]
        if name == "normal":
            p, t = encode_normal(p), encode_normal(t)
        out[f"psnr_{name}"] = min(psnr(p, t), 100.0)
        out[f"mae_{name}"] = float((p.float() - t.float()).abs().mean())
    out["ssim_albedo"] = float(ssim_value(pred["albedo"], target["albedo"]))
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
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


class Logger:
    """TensorBoard scalars/images (optional), console lines, history.json and curves.png."""

    def __init__(self, cfg: TrainConfig, checkpoint_dir: Path, log_dir: Path | None):
        self.cfg, self.dir = cfg, checkpoint_dir
        self.writer = None
        if cfg.training.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir or checkpoint_dir / "logs"))

    def say(self, line: str) -> None:
        tqdm.write(line)
        log.info(line)

    def step(self, step: int, parts: dict, lr: float) -> None:
        if self.writer is None or step % self.cfg.training.log_every_n_steps:
            return
        w = self.writer
        w.add_scalar("train/G_loss", parts["total"], step)
        if "d_loss" in parts:
            w.add_scalar("train/D_loss", parts["d_loss"], step)
        for name in MAPS:
            w.add_scalar(f"train/l1_{name}", parts[f"l1_{name}"], step)
        w.add_scalar("train/ssim_albedo", parts["ssim"], step)
        w.add_scalar("train/normal_angle_deg", parts["normal_angle_deg"], step)
        w.add_scalar("train/gan_g", parts["gan_g"], step)
        w.add_scalar("train/lr", lr, step)

    def epoch(self, epoch: int, metrics: dict, sample) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        every = self.cfg.training.log_images_every_n_epochs
        if sample is not None and every and epoch % every == 0:
            self.images(epoch, *sample)
        self.writer.flush()

    def images(self, epoch: int, views, pred: dict, target: torch.Tensor) -> None:
        from torchvision.utils import make_grid

        from fresnel.pbr.data import denormalize_views

        tgt = split_maps(target)
        rows = []
        for name in MAPS:
            p, t = _displayable(name, pred[name][0]), _displayable(name, tgt[name][0])
            err = (p - t).abs().mean(0, keepdim=True).expand(3, -1, -1)
            rows += [p, t, (err * 4).clamp(0, 1)]  # x4: small errors stay visible
        self.writer.add_image("maps/pred_gt_error", make_grid(rows, nrow=3, padding=2), epoch)
        shown = denormalize_views(views[0], self.cfg.transform.mean, self.cfg.transform.std)
        self.writer.add_image("inputs/views", make_grid(list(shown.clamp(0, 1)), nrow=3), epoch)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _displayable(name: str, image: torch.Tensor) -> torch.Tensor:
    image = encode_normal(image) if name == "normal" else image
    return image.float().clamp(0, 1).expand(3, -1, -1)


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    val = [(h["epoch"], h["val_loss"]) for h in history if h.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val, strict=True), label="val loss")
    if any(h.get("d_loss") is not None for h in history):
        d = [(h["epoch"], h["d_loss"]) for h in history if h.get("d_loss") is not None]
        ax.plot(*zip(*d, strict=True), label="D loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


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
) -> dict:
    """Train the teacher; return a summary dict (see module docstring for what is written).

    `cfg=None` with `resume` uses the checkpoint's config. `device` overrides
    cfg.training.device; an explicit device that is unavailable is an error.
    """
    start = time.perf_counter()
    cfg = resolve_run_config(cfg, resume)
    target = pick_target(device or cfg.training.device)
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
    logger = Logger(cfg, ckpt_dir, Path(log_dir) if log_dir else None)
    logger.say(
        f"[Data] {len(train_set)} train entries ({len(train_set.materials)} materials), "
        f"{len(val_set) if val_set else 0} val entries "
        f"({len(val_set.materials) if val_set else 0} materials); curriculum {cfg.curriculum}; "
        f"device {target.name}, AMP {'on (' + target.amp_dtype + ')' if trainer.amp else 'off'}"
    )
    try:
        for epoch in range(trainer.epoch + 1, cfg.training.epochs + 1):
            run_epoch(trainer, epoch, train_set, val_set, logger)
    finally:
        logger.close()
    return summarise(trainer, train_set, val_set, ckpt_dir, time.perf_counter() - start)


def run_epoch(trainer: Trainer, epoch: int, train_set, val_set, logger: Logger) -> None:
    cfg, t0 = trainer.cfg, time.perf_counter()
    torch.manual_seed(cfg.training.seed * 100_003 + epoch)
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
        logger.step(trainer.global_step, parts, trainer.g_opt.param_groups[0]["lr"])
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
    logger.say(f"Epoch {epoch} Summary:\n  Generator Loss: {record['train_loss']:.4f}")
    if record["d_loss"] is not None:
        logger.say(f"  Discriminator Loss: {record['d_loss']:.4f}")
    sample = None
    if val_set is not None:
        metrics, sample = trainer.evaluate(_loader(val_set, cfg))
        record.update({"val_loss": metrics["loss"]}, **{f"val_{k}": v for k, v in metrics.items()})
        logger.say(f"[Validation] Epoch {epoch} - Loss: {metrics['loss']:.4f}")
    record["seconds"] = round(time.perf_counter() - t0, 3)
    finish_epoch(trainer, record, sample, train_set, logger)


def finish_epoch(trainer: Trainer, record: dict, sample, train_set, logger: Logger) -> None:
    cfg, epoch = trainer.cfg, record["epoch"]
    monitored = record.get("val_loss", record["train_loss"])
    with warnings.catch_warnings():
        # D's schedule advances by epoch even before the GAN starts (no D step taken yet)
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        for sched in (trainer.g_sched, getattr(trainer, "d_sched", None)):
            if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
                sched.step(monitored)
            elif sched is not None:
                sched.step()
    trainer.epoch = epoch
    trainer.history.append(record)
    if sample is None and cfg.training.use_tensorboard:
        every = cfg.training.log_images_every_n_epochs
        if every and epoch % every == 0:  # no val split: show a training sample
            _, sample = trainer.evaluate(_loader(train_set, cfg, [0]))
    logger.epoch(epoch, {k: v for k, v in record.items() if k != "epoch"}, sample)
    improved = monitored < trainer.best
    if improved:
        trainer.best, trainer.best_epoch = monitored, epoch
    periodic = epoch % cfg.training.save_every_n_epochs == 0
    latest = trainer.save(LATEST)  # the others are byte copies of it: pickle once per epoch
    if periodic and not cfg.training.save_best_only:
        logger.say(f"Saved checkpoint: {copy_file(latest, trainer.dir / periodic_name(epoch))}")
    if improved:
        logger.say(f"Saved best model: {copy_file(latest, trainer.dir / BEST)}")
    write_json(trainer.dir / "history.json", trainer.history)
    if periodic:
        plot_curves(trainer.history, trainer.dir / "curves.png")


def copy_file(src: Path, dst: Path) -> Path:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst


def summarise(trainer: Trainer, train_set, val_set, ckpt_dir: Path, seconds: float) -> dict:
    last = trainer.history[-1] if trainer.history else {}
    if trainer.history:
        plot_curves(trainer.history, ckpt_dir / "curves.png")
    return {
        "epochs_completed": trainer.epoch,
        "device": trainer.target.name,
        "amp": trainer.amp,
        "monitor": "val_loss" if val_set is not None else "train_loss",
        "best_loss": trainer.best,
        "best_epoch": trainer.best_epoch,
        "first_train_loss": trainer.history[0]["train_loss"] if trainer.history else None,
        "final_train_loss": last.get("train_loss"),
        "final_val_loss": last.get("val_loss"),
        "final_val_metrics": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "train_samples": trainer.split["train"],
        "val_samples": trainer.split["val"],
        "train_materials": train_set.materials,
        "val_materials": val_set.materials if val_set is not None else [],
        "checkpoint_dir": str(ckpt_dir),
        "latest": str(ckpt_dir / LATEST),
        "best": str(ckpt_dir / BEST),
        "history": str(ckpt_dir / "history.json"),
        "curves": str(ckpt_dir / "curves.png"),
        "seconds": round(seconds, 3),
    }
