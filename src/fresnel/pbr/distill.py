"""Student distillation for NeuroPBR (the guide's `student/train.py`).

The student learns from two references at once: the teacher's predictions, read from the
fp16 shards that `teacher_infer` wrote, and the ground-truth maps, read with the renders
from the PNG dataset on the fly (inputs resized to `data.image_size`, targets and teacher
outputs to `data.output_size`). The loss is

    alpha * L(student, teacher) + (1 - alpha) * L(student, ground truth)

with L the teacher's reconstruction loss: per-map weighted L1 (w_l1 x w_albedo, ...),
1 - SSIM on albedo (w_ssim) and 1 - cos between normals (w_normal; the cosine of the
angular error, which has a finite gradient where the angle is 0).

Temperature is the regression analogue of Hinton et al.'s: there, teacher and student
logits are divided by T before the softmax so the soft targets carry more of the "dark
knowledge" in small probabilities. Our albedo/roughness/metallic maps are sigmoids, so both
sides of the teacher term pass through p -> sigmoid(logit(p) / T), which pulls values
towards 0.5 and evens out the gradient between saturated and mid-range pixels. Softening
the student too (as Hinton does) keeps the optimum at student == teacher; softening only the
teacher would train the student to reproduce a flattened teacher. T = 1 is the identity;
normals (unit vectors, not probabilities) are never softened.

The train/val split is by material (the guide's random split can put one material on both
sides). Each epoch logs the teacher-student L1 on the validation entries (on the training
entries when no material is held out). Checkpoints `latest_student.pth`, `best_student.pth`
(lowest validation loss) and `student_epoch_NNNN.pth` are plain dicts loadable with
`torch.load(weights_only=True)`; `history.json`, `curves.png` and TensorBoard scalars
(`logs/`) sit beside them. Deterministic on CPU: init, split and batch order derive from
`training.seed`, so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from fresnel import device as devices
from fresnel.io import atomic_path, sha256_file, write_json
from fresnel.pbr.data import IMAGENET_MEAN, IMAGENET_STD
from fresnel.pbr.losses import normal_cosine, ssim_value
from fresnel.pbr.maps import MAPS, join_maps, split_maps
from fresnel.pbr.teacher_shards import (
    MANIFEST,
    TeacherShardError,
    dataset_fingerprint,
    load_teacher_shard,
    read_manifest,
    resize_maps,
)

log = logging.getLogger(__name__)

SCALAR_MAPS = ("albedo", "roughness", "metallic")  # sigmoid outputs: softened by temperature
MAP_WEIGHT_FIELDS = {
    "albedo": "w_albedo",
    "roughness": "w_roughness",
    "metallic": "w_metallic",
    "normal": "w_normal_map",
}


# ============================================================================ data
class StudentShardDataset(Dataset):
    """(inputs [3,3,image_size²], targets [8,S,S], teacher [8,S,S]) per shard entry.

    Entries are those of the shards' manifest (optionally only `samples`), matched to the
    PNG dataset by (sample, source). S = output_size; teacher maps stored at another size
    are resized (area/bilinear, normals renormalised).
    """

    def __init__(
        self,
        shards_dir,
        input_dir,
        output_dir,
        image_size: int,
        output_size: int,
        metadata_path=None,
        samples=None,
        transform_mean=IMAGENET_MEAN,
        transform_std=IMAGENET_STD,
        check_fingerprint: bool = True,
    ):
        from fresnel.pbr.data import PBRDataset

        self.shards_dir = Path(shards_dir)
        self.manifest = read_manifest(shards_dir)
        self.output_size = int(output_size)
        self.images = PBRDataset(
            input_dir,
            output_dir,
            metadata_path,
            transform_mean=transform_mean,
            transform_std=transform_std,
            image_size=image_size,
            output_size=output_size,
            curriculum_mode=self.manifest["render_curriculum"],
        )
        if check_fingerprint:
            check_dataset_matches(self.manifest, self.images, input_dir, self.shards_dir)
        keep = None if samples is None else set(samples)
        entries = [e for e in self.manifest["entries"] if keep is None or e["sample"] in keep]
        self.entries = entries
        self.image_index = _match_entries(entries, self.images, input_dir, self.shards_dir)
        self.locations = [_locate(self.manifest, e["index"]) for e in entries]
        self._cached: tuple[str | None, dict | None] = (None, None)
        self._verified: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def samples(self) -> list[str]:
        return sorted({e["sample"] for e in self.entries})

    def material_of(self, sample: str) -> str:
        return next(e["material"] for e in self.entries if e["sample"] == sample)

    def shard_of(self, i: int) -> int:
        return self.locations[i][0]

    def _shard(self, shard_idx: int) -> dict:
        """One shard in memory at a time (ShardGroupedSampler reads each once per epoch)."""
        info = self.manifest["shards"][shard_idx]
        if self._cached[0] != info["file"]:
            path = self.shards_dir / info["file"]
            if info["file"] not in self._verified:
                if sha256_file(path) != info["sha256"]:
                    raise TeacherShardError(f"{path}: sha256 differs from {MANIFEST}; regenerate")
                self._verified.add(info["file"])
            data = load_teacher_shard(path)
            want = list(range(info["first"], info["first"] + info["count"]))
            if data["indices"].tolist() != want:
                raise TeacherShardError(f"{path}: indices do not match {MANIFEST}; regenerate")
            self._cached = (info["file"], data)
        return self._cached[1]

    def teacher(self, i: int) -> torch.Tensor:
        """The teacher's packed maps [8,S,S] (float32) for item i."""
        shard_idx, row = self.locations[i]
        outputs = self._shard(shard_idx)["teacher_outputs"]
        maps = {m: outputs[m][row : row + 1].float() for m in MAPS}
        return join_maps(resize_maps(maps, self.output_size))[0]

    def __getitem__(self, i: int):
        inputs, targets = self.images[self.image_index[i]]
        return inputs, targets, self.teacher(i)


def check_dataset_matches(manifest: dict, images, input_dir, shards_dir) -> None:
    """The renders (and their materials) must be those the teacher saw."""
    entries = [
        {"sample": e["sample"], "source": e["source"], "material": images.material_of(e["sample"])}
        for e in manifest["entries"]
    ]
    if dataset_fingerprint(input_dir, entries) != manifest["dataset_fingerprint"]:
        raise TeacherShardError(
            f"{input_dir}: renders or render_metadata.json differ from those the shards in "
            f"{shards_dir} were made from; rerun teacher_infer on this dataset"
        )


def _match_entries(entries: list[dict], images, input_dir, shards_dir) -> list[int]:
    where = {tuple(e): i for i, e in enumerate(images.entries)}
    missing = [
        f"{e['sample']} ({e['source']})" for e in entries if (e["sample"], e["source"]) not in where
    ]
    if missing:
        raise TeacherShardError(
            f"{input_dir}: lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            f"listed in {Path(shards_dir) / MANIFEST}; point --input-dir at the dataset the "
            "shards were made from, or rerun teacher_infer"
        )
    return [where[(e["sample"], e["source"])] for e in entries]


def _locate(manifest: dict, index: int) -> tuple[int, int]:
    shard_idx = index // manifest["shard_size"]
    info = manifest["shards"][shard_idx]
    return shard_idx, index - info["first"]


class ShardGroupedSampler(Sampler):
    """Shuffles shard order, then items within each shard: each shard is read once an epoch."""

    def __init__(self, dataset: StudentShardDataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        groups: dict[int, list[int]] = {}
        for i in range(len(self.dataset)):
            groups.setdefault(self.dataset.shard_of(i), []).append(i)
        keys = sorted(groups)
        if not self.shuffle:
            return iter([i for k in keys for i in groups[k]])
        rng = np.random.default_rng([self.seed, self.epoch])
        order = []
        for k in rng.permutation(len(keys)):
            members = groups[keys[k]]
            order += [members[j] for j in rng.permutation(len(members))]
        return iter(order)


# ============================================================================ loss
def soften(maps: dict[str, torch.Tensor], temperature: float, eps: float = 1e-6) -> dict:
    """p -> sigmoid(logit(p) / T) on albedo/roughness/metallic; normals unchanged."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = dict(maps)
    for name in SCALAR_MAPS:
        out[name] = torch.sigmoid(torch.logit(maps[name].clamp(eps, 1 - eps)) / temperature)
    return out


def reconstruction_loss(
    pred: dict,
    ref: dict,
    w_l1: float,
    w_ssim: float,
    w_normal: float,
    map_weights: dict[str, float],
) -> tuple[torch.Tensor, dict]:
    """Weighted per-map L1 + w_ssim (1 - SSIM(albedo)) + w_normal mean(1 - cos(normals)),
    the teacher's HybridLoss terms (fresnel.pbr.losses) without its GAN term."""
    l1 = {m: (pred[m] - ref[m]).abs().mean() for m in MAPS}
    l1_total = sum(map_weights[m] * l1[m] for m in MAPS)
    ssim_term = 1 - ssim_value(pred["albedo"], ref["albedo"])
    normal_term = (1 - normal_cosine(pred["normal"], ref["normal"])).mean()
    total = w_l1 * l1_total + w_ssim * ssim_term + w_normal * normal_term
    parts = {"l1": l1_total, "ssim": ssim_term, "normal": normal_term}
    return total, {k: float(v.detach()) for k, v in parts.items()}


class DistillationLoss(torch.nn.Module):
    """alpha * L(student, teacher; softened by T) + (1 - alpha) * L(student, ground truth).

    A term whose weight is 0 is not computed at all, so alpha = 0 never looks at the teacher.
    """

    def __init__(
        self,
        alpha: float,
        temperature: float = 1.0,
        w_l1: float = 1.0,
        w_ssim: float = 0.3,
        w_normal: float = 0.5,
        map_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.weights = (w_l1, w_ssim, w_normal)
        self.map_weights = {m: 1.0 for m in MAPS} | dict(map_weights or {})

    @classmethod
    def from_config(cls, cfg) -> DistillationLoss:
        loss, training = cfg.loss, cfg.training
        weights = {m: float(getattr(loss, f, 1.0)) for m, f in MAP_WEIGHT_FIELDS.items()}
        return cls(
            training.alpha, training.temperature, loss.w_l1, loss.w_ssim, loss.w_normal, weights
        )

    def _term(self, pred: dict, ref: dict):
        return reconstruction_loss(pred, ref, *self.weights, self.map_weights)

    def forward(self, pred: dict, teacher: dict, target: dict) -> tuple[torch.Tensor, dict]:
        total, parts = pred["albedo"].new_zeros(()), {}
        if self.alpha > 0:
            soft_loss, _ = self._term(
                soften(pred, self.temperature), soften(teacher, self.temperature)
            )
            total = total + self.alpha * soft_loss
            parts["teacher_loss"] = float(soft_loss.detach())
        if self.alpha < 1:
            hard_loss, _ = self._term(pred, target)
            total = total + (1 - self.alpha) * hard_loss
            parts["hard_loss"] = float(hard_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts


# ============================================================================ training
def _amp(target, enabled: bool):
    return target.autocast() if enabled else contextlib.nullcontext()


def predict(model, views: torch.Tensor, target, use_amp: bool) -> dict[str, torch.Tensor]:
    with _amp(target, use_amp):
        out = model(views.to(target.device))
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
    target = devices.resolve(device)
    was_training = model.training
    model.eval()
    sums, count = {}, 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    for views, targets, teacher in loader:
        pred = predict(model, views, target, use_amp)
        _check_sizes(pred, targets)
        targets, teacher = targets.to(target.device), teacher.to(target.device)
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
    """Model, optimiser, schedule, data and history of one distillation run."""

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
        self.use_amp = bool(t.use_amp) and self.target.amp_dtype is not None
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
        self.scaler = torch.amp.GradScaler(
            self.target.device.split(":")[0], enabled=self.use_amp and self.target.grad_scaler
        )
        self.epoch, self.best_val_loss, self.best_epoch = 0, math.inf, 0
        self.history: list[dict] = []
        self.initial: dict = {}

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

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        return {
            "model_state_dict": self.model.state_dict(),
            "config": self.cfg.to_dict(),
            "epoch": self.epoch,
            "optimizer_state_dict": self.optimizer.state_dict(),
            "scheduler_state_dict": self.scheduler.state_dict(),
            "scaler_state_dict": self.scaler.state_dict(),
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "history": self.history,
            "initial": self.initial,
            "split": self.split,
        }

    def save(self, name: str) -> Path:
        path = self.checkpoint_dir / name
        with atomic_path(path) as tmp:
            torch.save(self.state(), tmp)
        return path

    def resume(self, path) -> None:
        state = torch.load(path, map_location=self.target.device, weights_only=True)
        if state["config"]["model"] != self.cfg.to_dict()["model"]:
            raise ValueError(
                f"{path}: its model section differs from the config given; "
                "resume with the config it was trained with"
            )
        self.model.load_state_dict(state["model_state_dict"])
        self.optimizer.load_state_dict(state["optimizer_state_dict"])
        self.scheduler.load_state_dict(state["scheduler_state_dict"])
        self.scaler.load_state_dict(state["scaler_state_dict"])
        self.epoch, self.history = state["epoch"], state["history"]
        self.best_val_loss, self.best_epoch = state["best_val_loss"], state["best_epoch"]
        self.initial = state.get("initial", {})
        log.info("resumed from %s after epoch %d", path, self.epoch)

    # ------------------------------------------------------------------ steps
    def train_step(self, views, targets, teacher) -> dict:
        t = self.cfg.training
        pred = predict(self.model, views, self.target, self.use_amp)
        _check_sizes(pred, targets)
        targets, teacher = targets.to(self.target.device), teacher.to(self.target.device)
        total, parts = self.loss(pred, split_maps(teacher), split_maps(targets))
        if not torch.isfinite(total):
            raise RuntimeError(
                f"epoch {self.epoch + 1}: loss is {float(total)}; lower "
                "training.lr or check the shards"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if t.grad_clip_norm and t.grad_clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        parts["teacher_l1"] = float((join_maps(pred).detach() - teacher).abs().mean())
        return parts

    def train_epoch(self) -> dict:
        self.sampler.set_epoch(self.epoch)
        self.model.train()
        started, steps = time.perf_counter(), []
        lr = self.optimizer.param_groups[0]["lr"]
        bar = tqdm(self.loader, desc=f"student epoch {self.epoch + 1}", leave=False)
        for views, targets, teacher in bar:
            steps.append(self.train_step(views, targets, teacher))
            bar.set_postfix(loss=f"{steps[-1]['loss']:.4f}")
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
            self.use_amp,
            self.num_workers,
        )
        return {f"val_{k}": v for k, v in metrics.items()}


# ============================================================================ logging
def plot_curves(history: list[dict], path: Path, val_on: str = "val") -> None:
    """Loss, teacher-student L1 and learning rate per epoch (train mode vs evaluation)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, label in (
        (axes[0], "loss", "loss"),
        (axes[1], "teacher_l1", "teacher-student L1"),
    ):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], marker="o", label="train (running)")
        val_label = "val" if val_on == "val" else "eval on training entries"
        ax.plot(epochs, [h[f"val_{key}"] for h in history], marker="o", label=val_label)
        ax.set(xlabel="epoch", ylabel=label, yscale="log")
        ax.legend()
    axes[2].plot(epochs, [h["lr"] for h in history], marker="o", color="tab:gray")
    axes[2].set(xlabel="epoch", ylabel="learning rate")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _log_scalars(writer, metrics: dict) -> None:
    for key, value in metrics.items():
        if key != "epoch" and isinstance(value, (int, float)):
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "val") else key
            writer.add_scalar(tag, value, metrics["epoch"])


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
) -> dict:
    """Distil the teacher in `shards_dir` into `PBRStudent(cfg.model)`; returns a summary.

    `num_workers` processes decode the PNGs (each keeps its own one-shard cache)."""
    from torch.utils.tensorboard import SummaryWriter

    trainer = StudentTrainer(
        cfg, shards_dir, input_dir, output_dir, checkpoint_dir, device, metadata_path, num_workers
    )
    if resume:
        trainer.resume(resume)
    else:
        trainer.initial = trainer.validate()
        log.info("before training: %s", _rounded(trainer.initial))
    writer = SummaryWriter(str(trainer.checkpoint_dir / "logs"))
    save_every = int(getattr(cfg.training, "save_every_n_epochs", 5) or 0)
    started = time.perf_counter()
    try:
        for _ in tqdm(range(trainer.epoch, cfg.training.epochs), desc="student", unit="epoch"):
            metrics = trainer.train_epoch()
            metrics.update(trainer.validate())
            trainer.epoch = metrics["epoch"]
            trainer.history.append(metrics)
            _log_scalars(writer, metrics)
            log.info("epoch %d: %s", trainer.epoch, _rounded(metrics))
            if metrics["val_loss"] < trainer.best_val_loss:
                trainer.best_val_loss, trainer.best_epoch = metrics["val_loss"], trainer.epoch
                trainer.save("best_student.pth")
            if (
                save_every and trainer.epoch % save_every == 0
            ) or trainer.epoch == cfg.training.epochs:
                trainer.save(f"student_epoch_{trainer.epoch:04d}.pth")
            trainer.save("latest_student.pth")
            write_json(
                trainer.checkpoint_dir / "history.json",
                {"initial": trainer.initial, "val_on": trainer.val_on, "epochs": trainer.history},
            )
    finally:  # also after an interruption: curves of the epochs that finished
        writer.close()
        if trainer.history:
            plot_curves(trainer.history, trainer.checkpoint_dir / "curves.png", trainer.val_on)
    return {
        "epochs": trainer.epoch,
        "best_epoch": trainer.best_epoch,
        "best_val_loss": trainer.best_val_loss,
        "val_on": trainer.val_on,
        "train_entries": len(trainer.train_set),
        "val_entries": len(trainer.val_set),
        "initial": trainer.initial,
        "final": trainer.history[-1] if trainer.history else {},
        "seconds": time.perf_counter() - started,
        "checkpoint_dir": str(trainer.checkpoint_dir),
    }


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
