"""VPOG's training loop: Lightning fast_dev_run, 2-process gloo DDP, overfitting one batch,
resume, the setup check and the debug pictures, on tiny synthetic data."""

import csv
import os
import signal
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from fresnel.vpog.config import compose
from fresnel.vpog.dataset import NoneFilteringDataLoader
from fresnel.vpog.lightning_module import VPOGModule, object_coordinates, sample_bilinear
from fresnel.vpog.setup_check import run_checks
from fresnel.vpog.synthetic import render_object_templates, write_synthetic_split
from fresnel.vpog.train import LAST_CHECKPOINT, METRICS_CSV, make_dataset, train

IMAGE, PATCH = 32, 8


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vpog")
    render_object_templates(["box"], root / "templates", level=1, image_size=IMAGE)
    write_synthetic_split(["box"], root / "train_pbr_web", "train", {"train": 12},
                          image_size=IMAGE)  # fmt: skip
    return root


def tiny_overrides(data, save_dir, *extra) -> list[str]:
    dataset = f"{{name:synthetic,web_dir:'{data / 'train_pbr_web'}',templates_dir:'{data / 'templates'}'}}"
    return [
        f"data.dataloader.datasets=[{dataset}]", f"save_dir={save_dir}",
        f"data.dataloader.image_size={IMAGE}", f"data.dataloader.patch_size={PATCH}",
        "data.dataloader.num_positive_templates=2", "data.dataloader.num_negative_templates=1",
        "model.embed_dim=32", "model.encoder_depth=1", "model.num_heads=2", "model.cross_depth=1",
        "model.flow_hidden=32", "machine.batch_size=4", "machine.num_workers=0",
        "machine.accelerator=cpu", "loss.pose_samples=16", "log_every_n_steps=1", *extra,
    ]  # fmt: skip


def test_fast_dev_run_on_the_cpu(tiny_data, tmp_path):
    stats = train(compose(tiny_overrides(tiny_data, tmp_path, "fast_dev_run=true")), progress=False)
    assert stats["global_step"] == 1
    assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if k.startswith("train/"))
    assert stats["encoder"] == "random init"


def test_overfitting_one_batch_lowers_classification_and_flow_loss(tiny_data, tmp_path):
    cfg = compose(tiny_overrides(tiny_data, tmp_path, "optimizer.lr=3e-3"))
    torch.manual_seed(0)
    module = VPOGModule(OmegaConf.to_container(cfg))
    batch = next(iter(NoneFilteringDataLoader(make_dataset(cfg, *_dirs(tiny_data)), batch_size=4)))
    optimizer = module.configure_optimizers()
    history = []
    for _ in range(150):
        losses = module.losses(batch)
        optimizer.zero_grad()
        losses["total"].backward()
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in losses.items()})
    first, last = history[0], history[-1]
    assert last["classification"] < 0.5 * first["classification"], (first, last)
    assert last["flow"] < 0.7 * first["flow"], (first, last)  # measured: 0.56x
    assert last["pose"] < first["pose"], (first, last)
    assert last["accuracy"] > first["accuracy"] + 0.3, (first, last)


def _dirs(data):
    return str(data / "train_pbr_web"), str(data / "templates")


def test_two_process_gloo_ddp_through_lightning(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, tmp_path, "machine=local", "machine.num_gpus=2",
                               "max_epochs=1", "limit_train_batches=2")  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([sys.executable, "-m", "fresnel.cli", "vpog_train", "--quiet", *overrides],
                            capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "'world_size': 2" in result.stdout
    assert (tmp_path / LAST_CHECKPOINT).is_file()


def test_a_rerun_resumes_from_the_last_checkpoint(tiny_data, tmp_path):
    first = train(compose(tiny_overrides(tiny_data, tmp_path, "max_epochs=1")), progress=False)
    second = train(compose(tiny_overrides(tiny_data, tmp_path, "max_epochs=2")), progress=False)
    assert second["global_step"] == 2 * first["global_step"]
    assert (tmp_path / "curves.png").stat().st_size > 5_000
    assert "train_dataset_id: 0" in (tmp_path / "config.yaml").read_text()


KILLED_IN_EPOCH_2 = """
import os, signal, sys
from lightning.pytorch.callbacks import ModelCheckpoint
from fresnel.vpog.config import compose
from fresnel.vpog.train import train

after_batch = ModelCheckpoint.on_train_batch_end

def killed_in_epoch_2(self, trainer, module, outputs, batch, batch_idx):
    after_batch(self, trainer, module, outputs, batch, batch_idx)
    if trainer.current_epoch == 2 and batch_idx == 1:  # rows of epoch 2 are on disk by now
        os.kill(os.getpid(), signal.SIGKILL)

ModelCheckpoint.on_train_batch_end = killed_in_epoch_2
train(compose(sys.argv[1:]), progress=False)
"""


def test_a_run_killed_after_an_epoch_resumes_to_the_uninterrupted_metrics_row_for_row(
    tiny_data, tmp_path
):
    epochs = 4
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    train(compose(tiny_overrides(tiny_data, whole, f"max_epochs={epochs}")), progress=False)
    overrides = tiny_overrides(tiny_data, killed, f"max_epochs={epochs}")
    run = subprocess.run([sys.executable, "-c", KILLED_IN_EPOCH_2, *overrides],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == -signal.SIGKILL, run.stderr[-2000:]
    assert torch.load(killed / LAST_CHECKPOINT, weights_only=False)["epoch"] == 1
    train(compose(overrides), progress=False)
    assert (killed / METRICS_CSV).read_text() == (whole / METRICS_CSV).read_text()
    with (whole / METRICS_CSV).open(newline="") as file:
        assert {row["epoch"] for row in csv.DictReader(file)} == {str(e) for e in range(epochs)}


def test_visualization_writes_the_debug_pictures(tiny_data, tmp_path):
    overrides = tiny_overrides(tiny_data, tmp_path, "fast_dev_run=true",
                               "visualization.enabled=true", "visualization.save_frequency=1")  # fmt: skip
    train(compose(overrides), progress=False)
    pictures = list((tmp_path / "visualizations").glob("step_*.png"))
    assert pictures and pictures[0].stat().st_size > 5_000


def test_the_setup_check_passes_on_good_data_and_names_the_missing_folder(tiny_data, tmp_path):
    lines = []
    assert run_checks(tiny_overrides(tiny_data, tmp_path), echo=lines.append)
    assert [line.split(":")[0] for line in lines[:5]] == [
        "[ok]   config", "[ok]   data", "[ok]   batch", "[ok]   model", "[ok]   devices"]  # fmt: skip
    lines.clear()
    bad = tiny_overrides(tiny_data, tmp_path)
    bad[0] = "data.dataloader.datasets=[{name:x,web_dir:/nonexistent/web,templates_dir:/nope}]"
    assert not run_checks(bad, echo=lines.append)
    assert lines[-1].startswith("[FAIL] data") and "/nonexistent/web" in lines[-1]


def test_template_object_coordinates_map_back_to_the_template_pixels():
    """object_coordinates, then the template pose and K, lands on each pixel's centre."""
    from fresnel.vpog.geometry import template_poses

    K = torch.tensor([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]], dtype=torch.float64)
    pose = template_poses(1, radius=0.5)[7]
    depth = torch.full((1, 32, 32), 0.5, dtype=torch.float64)
    xyz = object_coordinates(depth, torch.ones(1, 32, 32, dtype=torch.bool), K[None], pose[None])
    camera = xyz[0] @ pose[:3, :3].T + pose[:3, 3]
    uv = camera @ K.T
    uv = uv[..., :2] / uv[..., 2:]
    assert torch.allclose(uv[5, 9], torch.tensor([9.5, 5.5], dtype=torch.float64))
    sampled = sample_bilinear(xyz, torch.tensor([[[9.5, 5.5]]], dtype=torch.float64))
    assert torch.allclose(sampled[0, 0], xyz[0, 5, 9])
