"""`fresnel vpog_test_training_setup [key=value ...]`: the guide's test_training_setup.py.

Checks, in order, what a training run needs and prints one line per check: the config composes,
the datasets and templates are where the config says, one batch loads with the guide's shapes,
the model's losses are finite and give gradients, and the machine has the devices asked for.
Stops at the first failure with what to do; returns whether everything passed.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence

import torch

CheckResult = str  # a one-line description of what was found


def run_checks(overrides: Sequence[str], echo: Callable[[str], None] = print) -> bool:
    from fresnel.vpog.config import compose

    state: dict = {}
    checks = (
        ("config", lambda: _config(compose(overrides), state)),
        ("data", lambda: _data(state)),
        ("batch", lambda: _batch(state)),
        ("model", lambda: _model(state)),
        ("devices", lambda: _devices(state)),
    )
    for name, check in checks:
        try:
            echo(f"[ok]   {name}: {check()}")
        except Exception as exc:  # every failure, whatever its kind, is the report's last line
            echo(f"[FAIL] {name}: {type(exc).__name__}: {exc}")
            return False
    echo("training setup looks complete: fresnel vpog_train " + shlex.join(overrides))
    return True


def _config(cfg, state: dict) -> CheckResult:
    state["cfg"] = cfg
    loader = cfg.data.dataloader
    grid = loader.image_size // loader.patch_size
    return (f"machine={cfg.machine.name}, train_dataset_id={cfg.train_dataset_id}, "
            f"S_p={loader.num_positive_templates}, S_n={loader.num_negative_templates}, "
            f"{loader.image_size} px = {grid}x{grid} patches of {loader.patch_size}")  # fmt: skip


def _data(state: dict) -> CheckResult:
    from fresnel.vpog.train import VPOGDataModule

    data = VPOGDataModule(state["cfg"])
    data.setup("fit")
    state["data"] = data
    if len(data.train_set) == 0:
        raise ValueError("the training shards hold no sample")
    val = 0 if data.val_set is None else len(data.val_set)
    return f"{len(data.train_set)} training samples, {val} validation samples"


def _batch(state: dict) -> CheckResult:
    from fresnel.vpog.dataset import NoneFilteringDataLoader

    cfg = state["cfg"]
    loader = NoneFilteringDataLoader(
        state["data"].train_set, batch_size=int(cfg.machine.batch_size)
    )
    batch = next(iter(loader), None)
    if batch is None:
        raise ValueError("every sample of the first batches was dropped; see the warnings above")
    state["batch"] = batch
    B, S1, C, H, W = batch.images.shape
    return (f"images [B, S+1, C, H, W] = {[B, S1, C, H, W]}, d_ref {list(batch.d_ref.shape)}, "
            f"flows {list(batch.flows.shape)}, labelled patches "
            f"{int((batch.labels >= 0).sum())}")  # fmt: skip


def _model(state: dict) -> CheckResult:
    from omegaconf import OmegaConf

    from fresnel.vpog.lightning_module import VPOGModule

    module = VPOGModule(OmegaConf.to_container(state["cfg"], resolve=True))
    losses = module.losses(state["batch"])
    if not all(torch.isfinite(v) for v in losses.values()):
        raise ValueError(f"non-finite losses { ({k: float(v) for k, v in losses.items()}) }")
    losses["total"].backward()
    with_grad = sum(p.grad is not None for p in module.parameters())
    parts = ", ".join(f"{k} {float(v.detach()):.3f}" for k, v in losses.items())
    return f"{parts}; gradients on {with_grad} tensors; encoder {module.model.encoder_source}"


def _devices(state: dict) -> CheckResult:
    machine = state["cfg"].machine
    wanted = int(machine.num_gpus)
    if machine.accelerator in ("gpu", "cuda") and torch.cuda.device_count() < wanted:
        raise RuntimeError(f"machine.num_gpus={wanted} but {torch.cuda.device_count()} GPU(s) "
                           "are visible; lower it or use machine.accelerator=cpu")  # fmt: skip
    found = torch.cuda.device_count()
    return f"accelerator={machine.accelerator}, {wanted} process(es) per node, {found} GPU(s) seen"
