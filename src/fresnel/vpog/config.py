"""VPOG's Hydra configs (`fresnel/vpog/configs`, the guide's `training/config` tree).

    cfg = compose(["machine=local", "machine.num_gpus=2"])

`configs/train.yaml` composes `machine/{local,slurm}.yaml`, `data/vpog_data.yaml` and
`model/vpog.yaml`; overrides use Hydra's `key=value` grammar. The DAG hands params.yaml's
`vpog.train` section over as such overrides (`overrides_from_params`), so params.yaml stays the
one source of truth there while the YAML files keep the guide's defaults for runs by hand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).parent / "configs"
# train_dataset_id -> positions in data.dataloader.datasets (the guide: 0 GSO, 1 ShapeNet, 2 both)
DATASET_IDS = {0: (0,), 1: (1,), 2: (0, 1)}


class VPOGConfigError(ValueError):
    """A VPOG config or override that cannot work; the message says what to change."""


def compose(overrides: Sequence[str] = (), config_dir: str | Path | None = None) -> DictConfig:
    """The composed, resolved training config (`train.yaml` plus `overrides`)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = Path(config_dir or CONFIG_DIR).resolve()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name="train", overrides=list(overrides))
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as exc:
        message = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
        raise VPOGConfigError(
            f"{directory / 'train.yaml'} with overrides {list(overrides)}: {message}"
        ) from None
    check(cfg)
    return cfg


# (key, lowest allowed value): whole numbers below it would fail deep inside training or, for
# max_epochs = -1, train forever (Lightning's "no limit")
AT_LEAST = (
    ("max_epochs", 1), ("seed", 0), ("machine.batch_size", 1), ("machine.num_workers", 0),
    ("machine.num_gpus", 1), ("machine.num_nodes", 1), ("machine.accumulate_grad_batches", 1),
    ("data.dataloader.image_size", 1), ("data.dataloader.patch_size", 1),
    ("data.dataloader.num_positive_templates", 1), ("data.dataloader.num_negative_templates", 0),
    ("data.dataloader.min_foreground_patches", 0), ("model.embed_dim", 1),
    ("model.encoder_depth", 1), ("model.num_heads", 1), ("model.cross_depth", 0),
    ("model.flow_hidden", 1), ("loss.pose_samples", 1), ("log_every_n_steps", 1),
)  # fmt: skip
# keys that must be finite numbers > 0 (or >= 0 when the flag says so)
POSITIVE = (("optimizer.lr", False), ("optimizer.weight_decay", True),
            ("optimizer.clip_grad", True), ("loss.huber_delta", False),
            ("loss.classification", True), ("loss.flow", True), ("loss.pose", True))  # fmt: skip


def check(cfg: DictConfig) -> None:
    """Reject settings that would fail deep inside training, naming the key to change."""
    for key, lowest in AT_LEAST:
        value = OmegaConf.select(cfg, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise VPOGConfigError(f"{key}={value}: must be a whole number >= {lowest}")
    for key, zero_allowed in POSITIVE:
        value = OmegaConf.select(cfg, key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            bound = ">= 0" if zero_allowed else "> 0"
            raise VPOGConfigError(f"{key}={value}: must be a finite number {bound}")
    loader = cfg.data.dataloader
    if cfg.train_dataset_id not in DATASET_IDS:
        raise VPOGConfigError(f"train_dataset_id={cfg.train_dataset_id}: use 0, 1 or 2")
    if loader.image_size % loader.patch_size:
        raise VPOGConfigError(
            f"data.dataloader.image_size={loader.image_size} is not a multiple of "
            f"patch_size={loader.patch_size}: num_patches = image_size // patch_size"
        )
    if cfg.model.embed_dim % cfg.model.num_heads:
        raise VPOGConfigError(
            f"model.embed_dim={cfg.model.embed_dim} must be divisible by "
            f"model.num_heads={cfg.model.num_heads}"
        )
    _check_encoder_weights(cfg.model.encoder_weights)


def _check_encoder_weights(path) -> None:
    if path is None:
        return
    if not Path(path).is_file():
        raise VPOGConfigError(
            f"model.encoder_weights={path}: no such file; give a CroCo or DINOv2 PyTorch "
            "checkpoint, or model.encoder_weights=null to train from random init"
        )
    if Path(path).suffix == ".onnx":
        raise VPOGConfigError(
            f"model.encoder_weights={path}: an ONNX export has no trainable weights; give the "
            "PyTorch checkpoint (CroCo's .pth or DINOv2's) it was exported from"
        )


def check_accelerator(cfg: DictConfig) -> None:
    """A GPU machine config on a machine whose torch sees no GPU, said before Lightning is."""
    import torch

    if cfg.machine.accelerator == "gpu" and not torch.cuda.is_available():
        raise VPOGConfigError(
            f"machine={cfg.machine.name} trains on GPUs (machine.accelerator=gpu) but torch "
            "sees none here; on this machine use machine=local machine.accelerator=cpu"
        )


def training_datasets(cfg: DictConfig) -> list[DictConfig]:
    """The `data.dataloader.datasets` entries that `train_dataset_id` selects."""
    return select_datasets(cfg.data.dataloader.datasets, cfg.train_dataset_id)


def select_datasets(datasets: Sequence, train_dataset_id: int) -> list:
    """The entries of `datasets` that `train_dataset_id` picks (0 GSO, 1 ShapeNet, 2 both)."""
    positions = DATASET_IDS[train_dataset_id]
    if max(positions) >= len(datasets):
        raise VPOGConfigError(
            f"train_dataset_id={train_dataset_id} needs {max(positions) + 1} entries in "
            f"data.dataloader.datasets, which has {len(datasets)}"
        )
    return [datasets[i] for i in positions]


def world_size(cfg: DictConfig) -> int:
    return int(cfg.machine.num_gpus) * int(cfg.machine.num_nodes)


def trainer_kwargs(cfg: DictConfig) -> dict:
    """Lightning `Trainer` arguments of the machine config and the debugging switches."""
    machine = cfg.machine
    strategy = machine.strategy
    if strategy == "auto" and world_size(cfg) > 1:
        strategy = "ddp"
    return dict(
        accelerator=machine.accelerator,
        devices=int(machine.num_gpus),
        num_nodes=int(machine.num_nodes),
        strategy=strategy,
        precision=machine.precision,
        sync_batchnorm=bool(machine.sync_batchnorm),
        accumulate_grad_batches=int(machine.accumulate_grad_batches),
        max_epochs=int(cfg.max_epochs),
        gradient_clip_val=cfg.optimizer.clip_grad,
        fast_dev_run=cfg.fast_dev_run,
        limit_train_batches=cfg.limit_train_batches,
        limit_val_batches=cfg.limit_val_batches,
        check_val_every_n_epoch=int(cfg.check_val_every_n_epoch),
        log_every_n_steps=int(cfg.log_every_n_steps),
        deterministic=True,
    )


def overrides_from_params(section: Mapping, prefix: str = "") -> list[str]:
    """Hydra overrides `a.b=value` for every leaf of a params.yaml section (lists as YAML)."""
    overrides = []
    for key, value in section.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            overrides += overrides_from_params(value, f"{name}.")
        else:
            overrides.append(f"{name}={hydra_value(value)}")
    return overrides


def hydra_value(value) -> str:
    """`value` in Hydra's override grammar (strings always quoted: paths may hold anything)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return str(value)


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
