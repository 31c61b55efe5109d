"""`fresnel vpog_train [key=value ...]`: VPOG training with Lightning on a composed Hydra config.

    fresnel vpog_train                                  # configs/train.yaml as it is
    fresnel vpog_train machine=local machine.num_gpus=2 # DDP on two GPUs
    fresnel vpog_train machine=local machine.accelerator=cpu machine.num_gpus=2   # gloo DDP

Everything lands in `save_dir`: `config.yaml` (the resolved config), `checkpoints/last.ckpt`
(every epoch; a rerun of the same command resumes from it), `logs/` (Lightning's CSV log),
`curves.png`, and `visualizations/` when `visualization.enabled`.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, DistributedSampler

from fresnel.vpog.config import (
    check_accelerator,
    hydra_value,
    overrides_from_params,
    to_yaml,
    trainer_kwargs,
    training_datasets,
)
from fresnel.vpog.dataset import NoneFilteringDataLoader, VPOGDataset, VPOGTrainDataset

log = logging.getLogger("fresnel.vpog")
LAST_CHECKPOINT = "checkpoints/last.ckpt"
METRICS_CSV = "logs/version_0/metrics.csv"


ACCELERATORS = {"cpu": "cpu", "cuda": "gpu", "rocm": "gpu", "mps": "mps"}


def dag_overrides(section: dict, queries: str, templates: str, save_dir, target: str) -> list[str]:
    """Hydra overrides of a DAG job: params.yaml `vpog.train`, then the stage's own data, its
    work folder and the profile's device. The DAG job is one process; scale out with
    `fresnel vpog_slurm_scripts` or `machine.num_gpus` by hand."""
    dataset = {"name": "synthetic", "web_dir": str(queries), "templates_dir": str(templates)}
    return [
        *overrides_from_params(section),
        "train_dataset_id=0",
        f"data.dataloader.datasets=[{hydra_value(dataset)}]",
        f"save_dir={hydra_value(str(save_dir))}",
        f"machine.accelerator={ACCELERATORS.get(target, 'cpu')}",
    ]


def make_dataset(cfg: DictConfig, web_dir: str, templates_dir: str) -> VPOGDataset:
    """One VPOGDataset with the config's options, as `instantiate(cfg.data.dataloader)` builds
    each of its datasets."""
    dataset = {"web_dir": str(web_dir), "templates_dir": str(templates_dir)}
    return train_dataset(cfg, datasets=[dataset], train_dataset_id=0)


def train_dataset(cfg: DictConfig, **changes) -> VPOGDataset | ConcatDataset:
    """What `instantiate(cfg.data.dataloader).web_dataloader.datapipeline` gives, built here
    rather than through Hydra, which would wrap a missing folder's one-line error."""
    options = OmegaConf.to_container(cfg.data.dataloader, resolve=True)
    del options["_target_"]
    return VPOGTrainDataset(**{**options, **changes}).web_dataloader.datapipeline


class VPOGDataModule(L.LightningDataModule):
    """Training shards of the datasets `train_dataset_id` picks; validation shards when
    `data.dataloader.val_web_dir` is set (with the first dataset's templates)."""

    def __init__(self, cfg: DictConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.train_set = self.val_set = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        entries = training_datasets(self.cfg)
        self.train_set = train_dataset(self.cfg)
        val_dir = self.cfg.data.dataloader.val_web_dir
        if val_dir:
            self.val_set = make_dataset(self.cfg, val_dir, entries[0].templates_dir)

    def set_epoch(self, epoch: int) -> None:
        sets = getattr(self.train_set, "datasets", [self.train_set])
        for dataset in sets:
            dataset.set_epoch(epoch)

    def _loader(self, dataset, shuffle: bool) -> NoneFilteringDataLoader:
        # Our own sampler (Lightning's is off): the loader's None filtering survives DDP.
        sampler = DistributedSampler(
            dataset,
            num_replicas=self.trainer.world_size,
            rank=self.trainer.global_rank,
            shuffle=shuffle,
            seed=int(self.cfg.seed),
        )
        if shuffle:
            sampler.set_epoch(self.trainer.current_epoch)
        machine = self.cfg.machine
        return NoneFilteringDataLoader(dataset, batch_size=int(machine.batch_size),
                                       num_workers=int(machine.num_workers), sampler=sampler)  # fmt: skip

    def train_dataloader(self):
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self):
        return [] if self.val_set is None else self._loader(self.val_set, shuffle=False)


def train(cfg: DictConfig, progress: bool = True) -> dict:
    """Train to `cfg.max_epochs` (resuming from `save_dir`'s last checkpoint); the stats."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from fresnel.vpog.lightning_module import VPOGModule

    check_accelerator(cfg)
    save_dir = Path(cfg.save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    (save_dir / "config.yaml").write_text(to_yaml(cfg))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    torch.use_deterministic_algorithms(True, warn_only=True)
    module = VPOGModule(OmegaConf.to_container(cfg, resolve=True))
    log.info("VPOG encoder: %s", module.model.encoder_source)
    last = save_dir / LAST_CHECKPOINT
    resume = last if last.exists() and not cfg.fast_dev_run else None
    if resume:
        log.info("resuming from %s", resume)
    checkpoints = ModelCheckpoint(dirpath=save_dir / "checkpoints", save_last=True,
                                  filename="epoch{epoch:03d}", auto_insert_metric_name=False)  # fmt: skip
    kwargs = trainer_kwargs(cfg)
    if not cfg.data.dataloader.val_web_dir:
        kwargs["limit_val_batches"] = 0  # no validation shards: no validation loop
    trainer = L.Trainer(
        **kwargs,
        default_root_dir=save_dir,
        logger=history_logger(save_dir, resume),
        callbacks=[checkpoints],
        use_distributed_sampler=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=VPOGDataModule(cfg), ckpt_path=resume)
    stats = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    stats.update(epochs=int(trainer.current_epoch), global_step=int(trainer.global_step),
                 encoder=module.model.encoder_source, world_size=int(trainer.world_size))  # fmt: skip
    if trainer.global_rank == 0 and not cfg.fast_dev_run:
        plot_metrics(save_dir / METRICS_CSV, save_dir / "curves.png")
    return stats


def history_logger(save_dir: Path, resume: Path | None):
    """Lightning's CSV log, holding on a resume the rows of the epochs the checkpoint
    finished (CSVLogger deletes an existing metrics.csv as it starts; rows that a killed run
    logged after its last checkpoint are dropped, as the resumed run logs them again)."""
    import csv

    from lightning.pytorch.loggers import CSVLogger

    metrics = save_dir / METRICS_CSV
    kept, columns = [], []
    if resume is not None and metrics.is_file():
        checkpoint = torch.load(resume, map_location="cpu", weights_only=False, mmap=True)
        finished = int(checkpoint["epoch"])
        with metrics.open(newline="") as file:
            reader = csv.DictReader(file)
            columns = list(reader.fieldnames or [])
            kept = [row for row in reader if int(float(row["epoch"])) <= finished]
    # every row on disk as it is logged, so a killed run keeps what its checkpoint covers
    logger = CSVLogger(save_dir, name="logs", version=0, flush_logs_every_n_steps=1)
    if kept:
        writer = logger.experiment  # made now: it deletes the old file, then keeps these rows
        writer.metrics_keys, writer.metrics = columns, kept
    return logger


def plot_metrics(metrics_csv: Path, path: Path) -> None:
    """curves.png: the per-epoch losses and patch accuracy of Lightning's CSV log."""
    import pandas as pd

    from fresnel.training import Panel, plot_curves

    if not metrics_csv.exists():
        return
    table = pd.read_csv(metrics_csv)
    epoch_columns = [c for c in table.columns if c.endswith("_epoch") or c.startswith("val/")]
    rows = table.dropna(subset=epoch_columns, how="all").groupby("epoch").last().reset_index()
    records = [
        {key.replace("_epoch", ""): value for key, value in row.items() if key in epoch_columns}
        | {"epoch": int(row["epoch"]) + 1}
        for _, row in rows.iterrows()
    ]
    panels = (
        Panel("loss", ("train/total", "train/classification", "train/flow", "val/total"), True),
        Panel("patch accuracy", ("train/accuracy", "val/accuracy")),
    )
    plot_curves(records, path, panels)
