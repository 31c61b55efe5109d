"""fresnel.training, fresnel.metrics and fresnel.config: the floors every family trains on."""

import json
import math
import pickle
from dataclasses import dataclass, field

import pytest
import torch

from fresnel import metrics
from fresnel.config import ConfigError, apply_overrides, get_config
from fresnel.device import Target
from fresnel.training import (
    Amp,
    Checkpointer,
    CheckpointNames,
    Progress,
    RunLog,
    TrainingDiverged,  # fmt: skip
    epoch_seed,
    final_checkpoint,
    read_checkpoint,
)
from fresnel.training.checkpoint import CheckpointError

CPU = Target("cpu", "cpu", None, False)
CPU_FP16_SCALED = Target("cpu", "cpu", "bfloat16", True)  # a GradScaler on the CPU


def toy():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), x, y


def test_amp_is_off_on_cpu_and_follows_use_amp():
    assert not Amp(CPU).enabled and Amp(CPU).describe() == "off"
    assert Amp(CPU_FP16_SCALED).describe() == "bfloat16 + GradScaler"
    assert not Amp(CPU_FP16_SCALED, enabled=False).scaler.is_enabled()


def test_gradients_are_unscaled_before_anyone_reads_them():
    """The GaussianAvatars fork read statistics from scaled gradients (65536x too large)."""
    model, opt, x, y = toy()
    ((model(x) - y) ** 2).mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model, opt, x, y = toy()
    amp = Amp(CPU_FP16_SCALED)
    assert amp.scaler.get_scale() == 2.0**16
    amp.backward(((model(x) - y) ** 2).mean(), opt)
    for got, want in zip((p.grad for p in model.parameters()), plain, strict=True):
        torch.testing.assert_close(got, want)


def test_a_non_finite_loss_or_gradient_is_training_diverged():
    model, opt, x, _ = toy()
    with pytest.raises(TrainingDiverged, match="the loss is nan"):
        Amp(CPU).step(model(x).sum() * math.nan, opt, model.parameters(), clip=1.0)
    finite_loss_inf_grad = torch.sqrt(model.weight - model.weight.detach()).sum()  # d/dw at 0
    with pytest.raises(TrainingDiverged, match="gradient norm is inf"):
        Amp(CPU).step(finite_loss_inf_grad, opt, model.parameters(), clip=1.0)


def test_epoch_seeds_are_distinct_and_stable():
    seeds = {epoch_seed(s, e) for s in range(3) for e in range(1000)}
    assert len(seeds) == 3000 and epoch_seed(1, 2) == 100_005


def test_checkpoint_round_trip_restores_every_component(tmp_path):
    model, opt, x, y = toy()
    Amp(CPU).step(((model(x) - y) ** 2).mean(), opt)
    progress = Progress()
    assert progress.finish_epoch({"epoch": 1, "train_loss": 0.5, "seconds": 3.0}, monitored=0.5)
    ckpt = Checkpointer(tmp_path, CheckpointNames(), model=model, optimizer=opt, absent=None)
    written = ckpt.save_epoch(progress, {"lr": 0.1}, improved=True, periodic=True,
                              extra={"split": ["a"]})  # fmt: skip
    assert sorted(p.name for p in written.values()) == ["best.pt", "epoch_1.pt", "last.pt"]
    fresh, fresh_opt, _, _ = toy()
    loaded, extra = Checkpointer(tmp_path, model=fresh, optimizer=fresh_opt).load(written["last"])
    assert loaded == progress and extra == {"split": ["a"]}
    assert loaded.history == [{"epoch": 1, "train_loss": 0.5}]  # no wall clock inside
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    assert final_checkpoint(tmp_path) == written["last"]


def test_checkpoint_errors_name_the_file_and_never_suggest_unsafe_loading(tmp_path):
    with pytest.raises(CheckpointError, match=r"no last\.pt; train the run first"):
        final_checkpoint(tmp_path)
    unsafe = tmp_path / "unsafe.pt"
    unsafe.write_bytes(pickle.dumps({"config": {}, "x": Target}))
    with pytest.raises(CheckpointError, match="refused") as err:
        read_checkpoint(unsafe)
    assert "weights_only=False" not in str(err.value)
    torch.save({"config": {}, "epoch": 0}, tmp_path / "other.pt")
    model, *_ = toy()
    with pytest.raises(CheckpointError, match="has no model"):
        Checkpointer(tmp_path, model=model).load(tmp_path / "other.pt")


def test_run_log_keeps_earlier_epochs_on_resume_and_draws_curves(tmp_path):
    log = RunLog(tmp_path, meta={"val_on": "val"})
    for epoch in (1, 2, 3):
        log.epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "seconds": 0.1})
    log.close()
    resumed = RunLog(tmp_path, resume_epoch=2)
    resumed.epoch({"epoch": 3, "train_loss": 0.3})
    resumed.close()
    history = json.loads((tmp_path / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2, 3]
    assert history["epochs"][2]["train_loss"] == 0.3
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_with_a_clock_dir_the_run_directory_is_the_same_bytes_on_every_run(tmp_path):
    """Wall-clock values and TensorBoard's events (named by time, host and PID) go to
    clock_dir, where timings.json keeps every epoch's seconds across a resume."""

    def run(name: str, seconds: float, resume_at: int = 0) -> None:
        log = RunLog(tmp_path / name, dvclive=True, clock_dir=tmp_path / f"{name}-clock")
        for epoch in (1, 2):
            log.epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "epoch_seconds": seconds})
        log.close()
        if resume_at:
            log = RunLog(tmp_path / name, resume_epoch=resume_at, dvclive=True,
                         clock_dir=tmp_path / f"{name}-clock")  # fmt: skip
            log.epoch({"epoch": 2, "train_loss": 0.5, "epoch_seconds": 2 * seconds})
            log.close()

    run("a", 0.1)
    run("b", 0.7, resume_at=1)
    a, b = (
        {str(p.relative_to(tmp_path / n)): p.read_bytes() for p in (tmp_path / n).rglob("*") if p.is_file()}
        for n in ("a", "b")
    )  # fmt: skip
    assert a == b and "history.json" in a and not any("tfevents" in name for name in a)
    timings = json.loads((tmp_path / "b-clock/timings.json").read_text())["epochs"]
    assert timings == [{"epoch": 1, "epoch_seconds": 0.7}, {"epoch": 2, "epoch_seconds": 1.4}]
    assert list((tmp_path / "a-clock/tensorboard").glob("events.out.tfevents.*"))


def test_wandb_asked_for_but_missing_is_an_error_not_silence(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "wandb", None)
    with pytest.raises(RuntimeError, match="pip install wandb"):
        RunLog(tmp_path, wandb={"project": "p"})


def test_psnr_known_answers():
    target = torch.full((2, 3, 4, 4), 0.5)
    assert metrics.psnr(target, target).tolist() == [100.0, 100.0]
    assert metrics.psnr(target + 0.1, target)[0].item() == pytest.approx(20.0)
    assert metrics.psnr(target + 2.0, target)[0].item() == pytest.approx(-20 * math.log10(0.5))


def test_ssim_one_rule_for_windows():
    image = torch.rand(2, 3, 16, 16)
    assert metrics.ssim(image, image).item() == pytest.approx(1.0)
    assert metrics.ssim(image, 1 - image, per_item=True).shape == (2,)
    assert [metrics.ssim_window(s) for s in (5, 8, 11, 64)] == [5, 7, 11, 11]


def test_evaluation_table_files(tmp_path):
    rows = [{"item": "a", "psnr": 20.0}, {"item": "b", "psnr": 30.0, "ssim": 0.9}]
    table = metrics.markdown_table(["m", "PSNR"], [["x", "25.00"]], note="n", footer="f")
    assert table == "n\n\n| m | PSNR |\n|---|---|\n| x | 25.00 |\n\nf\n"
    paths = metrics.write_table(tmp_path, rows, {"psnr": metrics.describe([20, 30])}, table)
    assert paths["per_item"].read_text().splitlines() == ["item,psnr,ssim", "a,20.0,", "b,30.0,0.9"]
    assert json.loads(paths["summary"].read_text())["psnr"]["median"] == 25.0


@dataclass
class Inner:
    width: int = 8
    flag: bool = False


@dataclass
class Outer:
    lr: float = 0.1
    inner: Inner = field(default_factory=Inner)


def test_overrides_nested_dotted_and_typed():
    cfg = apply_overrides(Outer(), {"inner": {"width": "16"}, "inner.flag": "true", "lr": 1})
    assert (cfg.inner.width, cfg.inner.flag, cfg.lr) == (16, True, 1.0)
    with pytest.raises(ConfigError, match=r"'inner.depth': inner has no field 'depth'"):
        apply_overrides(Outer(), {"inner.depth": 2})
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(Outer(), {"inner": 3})


def test_config_files_and_presets(tmp_path):
    presets = {"small": lambda: Outer(lr=0.01)}
    assert get_config("small", presets, Outer).lr == 0.01
    good = tmp_path / "mine.py"
    good.write_text(
        "from test_training_kit import Outer\ndef get_config():\n    return Outer(lr=3)\n"
    )
    assert get_config(good, presets, Outer).lr == 3
    with pytest.raises(ConfigError, match="unknown config 'big'"):
        get_config("big", presets, Outer)
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ConfigError, match="defines no get_config"):
        get_config(tmp_path / "bad.py", presets, Outer)
