"""NeuroPBR teacher training: overfitting, exact resume, leak-free split, schedules, inference.

All runs use the "tiny" preset on procedural datasets written by fresnel.pbr.synth.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time

import pytest
import torch

from fresnel.device import Target, TargetUnavailable, resolve
from fresnel.pbr.config import apply_overrides, get_config
from fresnel.pbr.inference import run_inference
from fresnel.pbr.losses import HybridLoss, mean_normal_angle_deg
from fresnel.pbr.maps import load_material, split_maps
from fresnel.pbr.synth import make_dataset
from fresnel.pbr.teacher import load_generator
from fresnel.pbr.train import (
    Trainer,
    TrainingDiverged,
    build_dataset,
    make_scheduler,
    train,
)
from support.workspace import tree_bytes

OVERFIT_EPOCHS = 80


def tiny(**overrides):
    cfg = get_config("tiny")
    return apply_overrides(cfg, {"training.use_tensorboard": False, **overrides})


def dataset(root, n_materials=2, samples=1, size=32, seed=0):
    make_dataset(root, n_materials, samples, size, seed)
    return root / "input", root / "output"


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    """Two materials, one sample each, no val split (two materials cannot be split and still
    be overfitted), no GAN (the adversarial term is not a reconstruction measure)."""
    root = tmp_path_factory.mktemp("overfit")
    inputs, outputs = dataset(root / "data")
    cfg = tiny(
        **{
            "data.val_ratio": 0.0,
            "model.use_gan": False,
            "training.epochs": OVERFIT_EPOCHS,
            "training.save_every_n_epochs": 40,
            "optimizer.scheduler_warmup_epochs": 0,
        }
    )
    start = time.perf_counter()
    summary = train(cfg, inputs, outputs, root / "ckpt")
    return {"summary": summary, "cfg": cfg, "root": root, "seconds": time.perf_counter() - start}


def test_overfitting_two_materials_drops_loss_10x_and_normals_under_10_degrees(overfit):
    summary, cfg, root = overfit["summary"], overfit["cfg"], overfit["root"]
    model, loaded_cfg = load_generator(root / "ckpt" / "latest.pth")
    assert loaded_cfg == cfg
    data = build_dataset(cfg, root / "data" / "input", root / "data" / "output", None)
    views = torch.stack([data[i][0] for i in range(len(data))])
    targets = torch.stack([data[i][1] for i in range(len(data))])
    with torch.no_grad():
        pred = model(views)
    final_loss, _ = HybridLoss(cfg.loss)(pred, targets)
    angle = mean_normal_angle_deg(pred["normal"], split_maps(targets)["normal"])
    ratio = summary["first_train_loss"] / float(final_loss)
    history = json.loads((root / "ckpt" / "history.json").read_text())["epochs"]
    first_angle = history[0]["train_normal_angle_deg"]
    print(
        f"overfit: loss {summary['first_train_loss']:.4f} -> {float(final_loss):.4f} "
        f"({ratio:.1f}x), normal angle {first_angle:.2f} -> {angle:.2f} deg, "
        f"{overfit['seconds']:.1f} s"
    )
    assert ratio >= 10.0
    assert angle < 10.0 and angle < first_angle / 2
    assert summary["train_materials"] == data.materials and summary["val_materials"] == []


def test_run_writes_checkpoints_history_and_curves(overfit):
    ckpt = overfit["root"] / "ckpt"
    names = {p.name for p in ckpt.iterdir()}
    assert {"checkpoint_epoch_0040.pth", "checkpoint_epoch_0080.pth", "best_model.pth"} <= names
    assert {"latest.pth", "history.json", "curves.png"} <= names
    history = json.loads((ckpt / "history.json").read_text())["epochs"]
    assert [h["epoch"] for h in history] == list(range(1, OVERFIT_EPOCHS + 1))
    assert (ckpt / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = torch.load(ckpt / "checkpoint_epoch_0040.pth", weights_only=True)
    assert state["epoch"] == 40 and isinstance(state["config"], dict)
    best = torch.load(ckpt / "best_model.pth", weights_only=True)
    losses = [h["train_loss"] for h in history]
    assert best["epoch"] == losses.index(min(losses)) + 1


def test_inference_on_a_dataset_sample_and_on_a_render_folder_agree(overfit, tmp_path):
    root = overfit["root"]
    ckpt = root / "ckpt" / "latest.pth"
    info = run_inference(ckpt, tmp_path / "sample", sample_idx=1, data_root=root / "data")
    assert info["sample"] == "sample_0001" and info["model"] == "teacher"
    renders = tmp_path / "renders"
    renders.mkdir()
    for view, name in enumerate(("a_left.png", "b_mid.png", "c_right.png")):  # sorted = 0,1,2
        shutil.copy(
            root / "data" / "input" / "clean" / "sample_0001" / f"{view}.png", renders / name
        )
    run_inference(ckpt, tmp_path / "custom", input_dir=renders)
    for name in ("albedo", "roughness", "metallic", "normal", "input_view_2"):
        a = (tmp_path / "sample" / f"{name}.png").read_bytes()
        assert a == (tmp_path / "custom" / f"{name}.png").read_bytes(), name
    pred, truth = (
        load_material(tmp_path / "sample"),
        load_material(tmp_path / "sample" / "ground_truth"),
    )
    assert mean_normal_angle_deg(pred["normal"][None], truth["normal"][None]) < 10.0
    (renders / "c_right.png").unlink()
    with pytest.raises(ValueError, match=re.escape(str(renders))):
        run_inference(ckpt, tmp_path / "bad", input_dir=renders)


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_run(tmp_path):
    inputs, outputs = dataset(tmp_path / "data", size=16)
    cfg = tiny(
        **{
            "data.image_size": 16,
            "data.val_ratio": 0.5,
            "training.epochs": 4,
            "training.gan_start_epoch": 1,
            "training.save_every_n_epochs": 2,
            "training.use_tensorboard": True,
            "training.log_images_every_n_epochs": 2,
            "optimizer.scheduler_warmup_epochs": 1,
        }
    )
    full = train(cfg, inputs, outputs, tmp_path / "full")
    resumed = train(
        None,
        inputs,
        outputs,
        tmp_path / "resumed",
        resume=tmp_path / "full" / "checkpoint_epoch_0002.pth",
    )
    a = torch.load(tmp_path / "full" / "latest.pth", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "latest.pth", weights_only=True)
    for key in ("generator_state_dict", "discriminator_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["history"][-1]["d_loss"] is not None  # the GAN really trained
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    assert full["final_val_loss"] == resumed["final_val_loss"]
    assert list((tmp_path / "full" / "logs").glob("events.out.tfevents.*"))


def test_split_in_a_training_run_has_no_material_in_train_and_val(tmp_path):
    inputs, outputs = dataset(tmp_path / "data", n_materials=4, samples=2, size=16)
    cfg = tiny(**{"data.image_size": 16, "data.val_ratio": 0.25, "training.epochs": 1})
    summary = train(cfg, inputs, outputs, tmp_path / "ckpt")
    metadata = json.loads((inputs / "render_metadata.json").read_text())
    train_mats = {metadata[s] for s in summary["train_samples"]}
    val_mats = {metadata[s] for s in summary["val_samples"]}
    assert val_mats and train_mats and not train_mats & val_mats
    assert len(summary["train_samples"]) + len(summary["val_samples"]) == 8
    split = torch.load(tmp_path / "ckpt" / "latest.pth", weights_only=True)["extra"]["split"]
    assert split == {"train": summary["train_samples"], "val": summary["val_samples"]}


def test_two_identical_runs_write_byte_identical_run_directories(tmp_path):
    """With a clock dir (the DAG's), the run directory is the same bytes on every run: epoch
    seconds and TensorBoard's events (named by time and PID) go to the clock dir, and no
    wall-clock value reaches a checkpoint."""
    inputs, outputs = dataset(tmp_path / "data", size=16)
    cfg = tiny(**{"data.image_size": 16, "data.val_ratio": 0.5, "training.epochs": 2,
                  "training.gan_start_epoch": 1, "training.save_every_n_epochs": 2})  # fmt: skip
    for run in ("a", "b"):
        train(cfg, inputs, outputs, tmp_path / run, clock_dir=tmp_path / f"{run}-clock")
    assert {"latest.pth", "best_model.pth", "history.json"} <= tree_bytes(tmp_path / "a").keys()
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    timings = json.loads((tmp_path / "a-clock" / "timings.json").read_text())["epochs"]
    assert [t["epoch"] for t in timings] == [1, 2] and all(t["seconds"] > 0 for t in timings)
    assert list((tmp_path / "a-clock" / "logs").glob("events.out.tfevents.*"))
    state = torch.load(tmp_path / "a" / "latest.pth", weights_only=True)
    assert all("seconds" not in record for record in state["history"])


def test_nan_loss_names_epoch_and_step(tmp_path):
    inputs, outputs = dataset(tmp_path / "data", size=16)
    cfg = tiny(**{"data.image_size": 16, "data.val_ratio": 0.0, "loss.w_l1": float("nan")})
    with pytest.raises(TrainingDiverged, match=r"epoch 1 step 0.*last good checkpoint: none"):
        train(cfg, inputs, outputs, tmp_path / "ckpt")


def test_explicit_unavailable_device_is_an_error_and_auto_picks_an_available_one(tmp_path):
    assert resolve("auto").name in {"cuda", "rocm", "mps", "cpu"}
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the unavailable-device path cannot be shown")
    inputs, outputs = dataset(tmp_path / "data", size=16)
    with pytest.raises(TargetUnavailable, match="cuda"):
        train(tiny(), inputs, outputs, tmp_path / "ckpt", device="cuda")


def test_legacy_use_dirty_trains_on_dirty_renders(tmp_path):
    inputs, outputs = dataset(tmp_path / "data", size=16)
    cfg = tiny(**{"data.use_dirty_renders": True})
    assert {src for _, src in build_dataset(cfg, inputs, outputs, None).entries} == {"dirty"}
    cfg = tiny(**{"data.render_curriculum": 1})
    assert len(build_dataset(cfg, inputs, outputs, None)) == 4


def _lrs(scheduler_name: str, epochs: int = 6, losses=None, **options) -> list[float]:
    cfg = tiny(**{"optimizer.scheduler": scheduler_name, "training.epochs": epochs, **options})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg, 1.0)
    lrs = []
    for epoch in range(epochs):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            sched.step(losses[epoch])
        elif sched is not None:
            sched.step()
    return lrs


def test_learning_rate_schedules():
    cosine = _lrs(
        "cosine", **{"optimizer.scheduler_warmup_epochs": 2, "optimizer.scheduler_min_lr": 0.1}
    )
    assert cosine[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert cosine[3:] == pytest.approx(
        [
            0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / 4)).item())
            for k in (1, 2, 3)
        ]
    )
    assert _lrs("step", **{"optimizer.step_size": 2, "optimizer.gamma": 0.5}) == pytest.approx(
        [1, 1, 0.5, 0.5, 0.25, 0.25]
    )
    plateau = _lrs(
        "plateau",
        losses=[1.0] * 6,
        **{"optimizer.patience": 1, "optimizer.factor": 0.5, "optimizer.scheduler_min_lr": 0.0},
    )
    assert plateau == pytest.approx([1, 1, 1, 0.5, 0.5, 0.25])
    assert _lrs("none") == [1.0] * 6


def test_autocast_gan_step_with_two_d_steps_per_g_step(tmp_path):
    """The AMP code path (bf16 autocast, run here on the CPU) with a conditional PatchGAN."""
    cfg = tiny(
        **{
            "training.use_amp": True,
            "training.gan_start_epoch": 0,
            "training.d_steps_per_g_step": 2,
            "model.discriminator_conditional": True,
        }
    )
    trainer = Trainer(cfg, Target("cpu", "cpu", "bfloat16", False), tmp_path)
    assert trainer.g_amp.enabled and trainer.d_amp.enabled
    views = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = torch.rand(2, 8, 32, 32, generator=torch.Generator().manual_seed(1))
    parts = trainer.train_step(views, targets, epoch=1)
    assert all(map(math.isfinite, (parts["total"], parts["d_loss"], parts["gan_g"])))
    d_steps = {int(s["step"]) for s in trainer.d_opt.state_dict()["state"].values()}
    g_steps = {int(s["step"]) for s in trainer.g_opt.state_dict()["state"].values()}
    assert (d_steps, g_steps) == ({2}, {1})
    assert all(p.dtype == torch.float32 for p in trainer.G.parameters())


def test_inference_runs_student_checkpoints(overfit, tmp_path):
    from fresnel.pbr.student import build_student, save_student
    from fresnel.pbr.student_config import get_student_config

    cfg = get_student_config("tiny_student")
    torch.manual_seed(0)
    path = tmp_path / "best_student.pth"
    save_student(path, build_student(cfg), cfg, epoch=1)
    renders = overfit["root"] / "data" / "input" / "clean" / "sample_0000"
    info = run_inference(path, tmp_path / "out", input_dir=renders)
    assert info["model"] == "student"
    assert info["output_size"] == cfg.data.output_size
    assert load_material(tmp_path / "out")["albedo"].shape[-1] == cfg.data.output_size


GUIDE_TEMPLATE = """from train_config import TrainConfig

def get_config():
    cfg = TrainConfig()
    cfg.model.encoder_backbone = 'resnet101'
    cfg.model.transformer_depth = 6
    cfg.model.use_gan = True

    cfg.training.epochs = 200
    cfg.training.batch_size = 8
    cfg.training.use_wandb = False

    cfg.loss.w_l1 = 1.0
    cfg.loss.w_ssim = 0.5
    cfg.loss.w_normal = 0.7

    cfg.optimizer.g_lr = 1e-4
    cfg.optimizer.d_lr = 4e-4
    cfg.optimizer.scheduler = 'cosine'
    return cfg
"""


def test_the_guides_config_template_runs_verbatim(tmp_path):
    path = tmp_path / "my_config.py"
    path.write_text(GUIDE_TEMPLATE)
    cfg = get_config(path)
    assert (cfg.model.encoder_backbone, cfg.training.epochs, cfg.optimizer.d_lr) == (
        "resnet101",
        200,
        4e-4,
    )
    assert "train_config" not in __import__("sys").modules  # the alias is not left behind
    path.write_text("from train_config import get_default_config\n"
                    "def get_config():\n    return get_default_config()\n")  # fmt: skip
    assert get_config(path).model.encoder_backbone == "resnet50"


def test_use_wandb_without_the_package_is_an_error_not_ignored(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    inputs, outputs = dataset(tmp_path / "data")
    cfg = tiny(**{"training.use_wandb": True, "training.epochs": 1, "data.val_ratio": 0.0})
    with pytest.raises(RuntimeError, match="pip install wandb"):
        train(cfg, inputs, outputs, tmp_path / "ck")
