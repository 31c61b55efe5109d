"""VPOG's Hydra configs (`fresnel/vpog/configs`, the guide's `training/config` tree).

    cfg = compose(["machine=local", "machine.num_gpus=2"])

`configs/train.yaml` composes `machine/{local,slurm}.yaml`, `data/vpog_data.yaml` and
`model/vpog.yaml`; overrides use Hydra's `key=value` grammar. The DAG hands params.yaml's
`vpog.train` section over as such overrides (`overrides_from_params`), so params.yaml stays the
one source of truth there while the YAML files keep the guide's defaults for runs by hand.
"""

from __future__ import annotations

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
        first_line = str(exc).strip().splitlines()[0]
        raise VPOGConfigError(
            f"{directory / 'train.yaml'} with overrides {list(overrides)}: {first_line}"
        ) from None
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """Reject settings that would fail deep inside training, naming the key to change."""
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


def training_datasets(cfg: DictConfig) -> list[DictConfig]:
    """The `data.dataloader.datasets` entries that `train_dataset_id` selects."""
    positions = DATASET_IDS[cfg.train_dataset_id]
    datasets = cfg.data.dataloader.datasets
    if max(positions) >= len(datasets):
        raise VPOGConfigError(
            f"train_dataset_id={cfg.train_dataset_id} needs {max(positions) + 1} entries in "
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
