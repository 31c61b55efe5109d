"""Student distillation for NeuroPBR (the guide's `student/train.py`).

The student learns from two references at once: the teacher's predictions, read from the
fp16 shards that `teacher_infer` wrote, and the ground-truth maps, read with the renders
from the PNG dataset on the fly (fresnel.pbr.student_data: inputs resized to
`data.image_size`, targets and teacher outputs to `data.output_size`). The loss is
fresnel.pbr.distill_loss.DistillationLoss.

The train/val split is by material (the guide's random split can put one material on both
sides). Each epoch logs the teacher-student L1 on the validation entries (on the training
entries when no material is held out). Checkpoints (fresnel.training's layout, components
`model_state_dict`, `optimizer_state_dict`, `scheduler_state_dict`, `scaler_state_dict`; the
split and the metrics before training in `extra`) are `latest_student.pth`,
`best_student.pth` (lowest validation loss) and `student_epoch_NNNN.pth`; the run log
(`history.json`, `curves.png`, TensorBoard scalars in `logs/`) sits beside them; with
`clock_dir` the wall-clock (epoch seconds, TensorBoard's events) goes there instead.
Deterministic on CPU: init, split and batch order derive from `training.seed`, so a resumed
run repeats an uninterrupted one, and two identical runs write byte-identical checkpoints.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fresnel import device as devices
from fresnel.images import IMAGENET_MEAN, IMAGENET_STD
from fresnel.pbr.distill_loss import DistillationLoss
from fresnel.pbr.maps import MAPS, join_maps, split_maps
from fresnel.pbr.student_data import ShardGroupedSampler, StudentShardDataset
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Panel,
    Progress,
    RunLog,
    TrainingDiverged,
    read_checkpoint,
)

log = logging.getLogger(__name__)

STUDENT_CHECKPOINTS = CheckpointNames(
    last="latest_student.pth", best="best_student.pth", periodic="student_epoch_{epoch:04d}.pth"
)
SAVE_EVERY_N_EPOCHS = 5  # and the last epoch
PANELS = (
    Panel("loss", ("train_loss", "val_loss"), log_scale=True),
    Panel("teacher-student L1", ("train_teacher_l1", "val_teacher_l1"), log_scale=True),
    Panel("learning rate", ("lr",)),
)


def predict(model, views: torch.Tensor, amp: Amp) -> dict[str, torch.Tensor]:
    with amp.autocast():
        out = model(views.to(amp.target.device))
    return {m: out[m].float() for m in MAPS}


def _check_sizes(pred: dict, reference: torch.Tensor) -> None:
    got, want = pred["albedo"].shape[-1], reference.shape[-1]
    if got != want:
        raise ValueError(
            f"the student outputs {got}px maps but data.output_size is {want}px; set "
            "data.output_size = data.image_size x model.sr_scale (or image_size without SR)"
        )


@torch.no_grad()
def evaluate_student(
    model,
    dataset,
    loss_fn: DistillationLoss,
    batch_size: int,
    device: str = "cpu",
    use_amp: bool = False,
    num_workers: int = 0,
) -> dict:
    """Mean loss, teacher-student L1 and student-ground-truth L1 (all 8 channels) on dataset."""
    amp = Amp(devices.resolve(device), use_amp)
    was_training = model.training
    model.eval()
    sums, count = {}, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for views, targets, teacher in loader:
        pred = predict(model, views, amp)
        _check_sizes(pred, targets)
        targets, teacher = targets.to(amp.target.device), teacher.to(amp.target.device)
        _, parts = loss_fn(pred, split_maps(teacher), split_maps(targets))
        packed = join_maps(pred)
        parts["teacher_l1"] = float((packed - teacher).abs().mean())
        parts["target_l1"] = float((packed - targets).abs().mean())
        for k, v in parts.items():
            sums[k] = sums.get(k, 0.0) + v * len(views)
        count += len(views)
    model.train(was_training)
    return {k: v / count for k, v in sums.items()}


def cosine_lambda(total_steps: int, min_ratio: float):
    """LR factor per optimiser step: cosine from 1 to min_ratio over total_steps."""

    def factor(step: int) -> float:
        progress = min(step, total_steps) / max(total_steps, 1)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


class StudentTrainer:
    """Model, optimiser, schedule, data and progress of one distillation run."""

    def __init__(
        self,
        cfg,
        shards_dir,
        input_dir,
        output_dir,
        checkpoint_dir,
        device="cpu",
        metadata_path=None,
        num_workers: int = 0,
    ):
        from fresnel.pbr.data import split_by_material
        from fresnel.pbr.student import PBRStudent

        self.cfg, t = cfg, cfg.training
        self.target = devices.resolve(device)
        self.checkpoint_dir = Path(checkpoint_dir)
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        full = self._dataset(shards_dir, input_dir, output_dir, metadata_path, None, True)
        train, val = split_by_material(full.samples, full.material_of, t.val_ratio, t.seed)
        self.split = {"train": train, "val": val}  # saved: evaluation picks unseen materials
        self.val_on = "val" if val else "train"
        if not val:
            log.warning(
                "no material held out (val_ratio=%s, %d materials): validation metrics "
                "are computed on the training entries",
                t.val_ratio,
                len({full.material_of(s) for s in full.samples}),
            )
        self.train_set = self._dataset(shards_dir, input_dir, output_dir, metadata_path, train)
        self.val_set = (
            self._dataset(shards_dir, input_dir, output_dir, metadata_path, val)
            if val
            else self.train_set
        )
        if full.manifest["output_size"] != cfg.data.output_size:
            log.info(
                "shards hold %dpx teacher maps; resized to data.output_size=%d on the fly",
                full.manifest["output_size"],
                cfg.data.output_size,
            )
        torch.manual_seed(t.seed)
        self.model = PBRStudent(cfg.model).to(self.target.device)
        self.loss = DistillationLoss.from_config(cfg)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay
        )
        self.sampler = ShardGroupedSampler(self.train_set, t.seed)
        if len(self.train_set) < 2:
            raise ValueError(
                f"{shards_dir}: {len(self.train_set)} training entry; BatchNorm "
                "needs at least 2: add materials or lower training.val_ratio"
            )
        # A lone last item is dropped: BatchNorm cannot train on a batch of one.
        lone_last = len(self.train_set) % t.batch_size == 1
        self.loader = DataLoader(
            self.train_set,
            batch_size=t.batch_size,
            sampler=self.sampler,
            drop_last=lone_last,
            num_workers=num_workers,
        )
        self.num_workers = num_workers
        min_ratio = float(getattr(t, "min_lr", 0.0)) / t.lr
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, cosine_lambda(max(t.epochs * len(self.loader), 1), min_ratio)
        )
        self.amp = Amp(self.target, t.use_amp)
        self.checkpoints = Checkpointer(
            self.checkpoint_dir,
            STUDENT_CHECKPOINTS,
            model_state_dict=self.model,
            optimizer_state_dict=self.optimizer,
            scheduler_state_dict=self.scheduler,
            scaler_state_dict=self.amp.scaler,
        )
        self.progress = Progress()
        self.initial: dict = {}
        self.last_good: Path | None = None  # the checkpoint a diverged run can resume from

    def _dataset(self, shards_dir, input_dir, output_dir, metadata_path, samples, check=False):
        data, transform = self.cfg.data, getattr(self.cfg, "transform", None)
        return StudentShardDataset(
            shards_dir,
            input_dir,
            output_dir,
            data.image_size,
            data.output_size,
            metadata_path,
            samples,
            transform_mean=tuple(transform.mean) if transform else IMAGENET_MEAN,
            transform_std=tuple(transform.std) if transform else IMAGENET_STD,
            check_fingerprint=check,
        )

    @property
    def epoch(self) -> int:
        return self.progress.epoch

    @property
    def extra(self) -> dict:
        return {"split": self.split, "initial": self.initial, "val_on": self.val_on}

    def resume(self, path) -> None:
        state = read_checkpoint(path, self.target.device)
        if state["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"{path}: its model section differs from the config given; "
                "resume with the config it was trained with"
            )
        self.progress, extra = self.checkpoints.restore(state, path)
        self.initial = extra.get("initial", {})
        self.last_good = Path(path)
        log.info("resumed from %s after epoch %d", path, self.epoch)

    def save_epoch(self, improved: bool) -> dict[str, Path]:
        epoch, epochs = self.epoch, self.cfg.training.epochs
        periodic = epoch % SAVE_EVERY_N_EPOCHS == 0 or epoch == epochs
        written = self.checkpoints.save_epoch(
            self.progress, self.cfg.to_dict(), improved=improved, periodic=periodic,
            extra=self.extra,
        )  # fmt: skip
        self.last_good = written["last"]
        return written

    # ------------------------------------------------------------------ steps
    def train_step(self, views, targets, teacher) -> dict:
        clip = self.cfg.training.grad_clip_norm
        pred = predict(self.model, views, self.amp)
        _check_sizes(pred, targets)
        targets, teacher = targets.to(self.target.device), teacher.to(self.target.device)
        total, parts = self.loss(pred, split_maps(teacher), split_maps(targets))
        self.amp.step(
            total, self.optimizer, self.model.parameters(), clip if clip and clip > 0 else None
        )
        self.scheduler.step()
        parts["teacher_l1"] = float((join_maps(pred).detach() - teacher).abs().mean())
        return parts

    def train_epoch(self) -> dict:
        self.sampler.set_epoch(self.epoch)
        self.model.train()
        started, steps = time.perf_counter(), []
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.loader, desc=f"student epoch {self.epoch + 1}", leave=False)
        try:
            for views, targets, teacher in bar:
                steps.append(self.train_step(views, targets, teacher))
                bar.set_postfix(loss=f"{steps[-1]['loss']:.4f}")
        except TrainingDiverged as exc:
            raise TrainingDiverged(
                f"epoch {self.epoch + 1}: {exc}; lower training.lr or check the shards "
                f"(last good checkpoint: {self.last_good or 'none, diverged in epoch 1'})"
            ) from None
        means = {f"train_{k}": float(np.mean([s[k] for s in steps])) for k in steps[0]}
        return {
            "epoch": self.epoch + 1,
            "lr": lr,
            **means,
            "epoch_seconds": time.perf_counter() - started,
        }

    def validate(self) -> dict:
        t = self.cfg.training
        metrics = evaluate_student(
            self.model,
            self.val_set,
            self.loss,
            t.batch_size,
            self.target.name,
            self.amp.enabled,
            self.num_workers,
        )
        return {f"val_{k}": v for k, v in metrics.items()}


def train_student(
    cfg,
    shards_dir,
    input_dir,
    output_dir,
    checkpoint_dir,
    resume=None,
    device: str = "cpu",
    metadata_path=None,
    num_workers: int = 0,
    clock_dir=None,
) -> dict:
    """Distil the teacher in `shards_dir` into `PBRStudent(cfg.model)`; returns a summary.

    `num_workers` processes decode the PNGs (each keeps its own one-shard cache)."""
    trainer = StudentTrainer(
        cfg, shards_dir, input_dir, output_dir, checkpoint_dir, device, metadata_path, num_workers
    )
    if resume:
        trainer.resume(resume)
    else:
        trainer.initial = trainer.validate()
        log.info("before training: %s", _rounded(trainer.initial))
    runlog = RunLog(
        trainer.checkpoint_dir, resume_epoch=trainer.epoch, panels=PANELS,
        tensorboard_dir=Path(clock_dir or trainer.checkpoint_dir) / "logs", clock_dir=clock_dir,
        meta={"initial": trainer.initial, "val_on": trainer.val_on},
    )  # fmt: skip
    started = time.perf_counter()
    try:  # the run log closes (curves of the finished epochs) also after an interruption
        for _ in tqdm(range(trainer.epoch, cfg.training.epochs), desc="student", unit="epoch"):
            record = trainer.train_epoch()
            record.update(trainer.validate())
            improved = trainer.progress.finish_epoch(record, monitored=record["val_loss"])
            runlog.epoch(record)
            log.info("epoch %d: %s", trainer.epoch, _rounded(record))
            written = trainer.save_epoch(improved)
            if "best" in written:
                log.info("Saved best model: %s", written["best"])
    finally:
        runlog.close()
    history = trainer.progress.history
    return {
        "epochs": trainer.epoch,
        "best_epoch": trainer.progress.best_epoch,
        "best_val_loss": trainer.progress.best_metric,
        "val_on": trainer.val_on,
        "train_entries": len(trainer.train_set),
        "val_entries": len(trainer.val_set),
        "initial": trainer.initial,
        "final": history[-1] if history else {},
        "seconds": time.perf_counter() - started,
        "checkpoint_dir": str(trainer.checkpoint_dir),
    }


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
