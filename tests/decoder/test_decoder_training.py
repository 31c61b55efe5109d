"""Decoder training, HFTS plan, export gate, inference formats and evaluation."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fresnel import io
from fresnel.data import shards
from fresnel.decoder import export, hfts, losses
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.evaluate import bicubic_baseline, evaluate, markdown_table
from fresnel.decoder.train import (
    Trainer,
    checkpoint_names,
    crop,
    pixel_weights,
    render_batch,
    resize_targets,
    train,
)
from fresnel.metrics import MetricUnavailable, psnr
from fresnel.training import TrainingDiverged, final_checkpoint

NAMES = checkpoint_names(2)


def make_shards(root, count=3, resolution=32, seed=0, vlm=False):
    """Shards of smooth coloured images with random features and a depth ramp; `vlm` adds
    a density map that is high in each image's top-left quadrant."""
    rng = np.random.default_rng(seed)
    images, features = root / "matted", root / "features"
    (images / "images").mkdir(parents=True)
    features.mkdir()
    density = np.ones((16, 16), np.float32)
    density[:8, :8] = 7.0
    yy, xx = np.mgrid[0:518, 0:518] / 518
    rows = []
    for i in range(count):
        rgb = np.stack([xx, yy, np.full_like(xx, 0.3 + 0.2 * i)], axis=-1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(images / f"images/im{i}.png")
        rows.append({"id": f"im{i}", "file": f"images/im{i}.png"})
        io.write_f32_bin(features / f"im{i}_dinov2.bin", rng.normal(size=(37, 37, 384)))
        io.write_f32_bin(features / f"im{i}_depth.bin", np.tile(np.linspace(0, 1, 64), (64, 1)))
        np.save(features / f"im{i}_vlm_density.npy", density / density.mean())
    pd.DataFrame(rows).to_parquet(images / "manifest.parquet")
    io.write_json(
        features / "index.json", {"ids": [r["id"] for r in rows], "depth_shape": [64, 64]}
    )
    shards.pack(images, features, root / "shards", resolution=resolution, shard_size=2, seed=0,
                vlm_dir=features if vlm else None)  # fmt: skip
    return root / "shards"


def small_config(**overrides) -> TrainConfig:
    values = dict(experiment=2, gaussians_per_patch=1, epochs=2, batch_size=2, lr=0.01,
                  image_size=32, save_interval=1, ssim_weight=0.0, val_fraction=0.34)  # fmt: skip
    return TrainConfig(**{**values, **overrides})


def test_hfts_plan_follows_the_guide():
    plans = [hfts.plan_epoch(e, 8, 256, 4, fast_mode=True) for e in range(8)]
    assert [p.resolution for p in plans] == [64] * 6 + [256] * 2
    assert [p.k_active for p in plans] == [1, 1, 2, 2, 4, 4, 4, 4]
    assert [p.region for p in plans] == [32] * 6 + [None] * 2  # 256 of 1,369-5,476 at 64 px
    assert hfts.plan_epoch(0, 8, 256, 4) == hfts.EpochPlan(256, 4, None)
    # --stochastic_k 256 of 5,476 Gaussians at 256 px: a 64 px region (about 300 touch it)
    assert hfts.plan_epoch(0, 8, 256, 4, stochastic_k=256).region == 64
    assert hfts.plan_epoch(0, 8, 256, 4, stochastic_k=5476).region is None


def test_a_region_render_is_the_full_render_there_values_and_gradients(tmp_path):
    """What --stochastic_k trains on: a region rendered with every Gaussian touching it has
    the full render's pixels, and its loss the same gradient as the full render cropped."""
    trainer = Trainer(small_config(), make_shards(tmp_path), tmp_path / "run")
    batch = next(iter(torch.utils.data.DataLoader(shards.ShardStream(trainer.shard_dir),
                                                  batch_size=2)))  # fmt: skip
    packed = trainer.predict(batch).detach()
    regions = [(5, 19, 32), (40, 0, 32)]

    def loss_and_grad(render_regions_only: bool):
        leaf = packed.clone().requires_grad_(True)
        if render_regions_only:
            render = render_batch(trainer.renderer, leaf, 72, regions)
        else:
            render = crop(render_batch(trainer.renderer, leaf, 72), regions)
        (render * torch.linspace(0, 1, 32)).sum().backward()
        return render.detach(), leaf.grad

    (part, part_grad), (full, full_grad) = loss_and_grad(True), loss_and_grad(False)
    assert full.std() > 0.01  # the regions hold Gaussians, not only background
    assert torch.allclose(part, full, atol=1e-5)
    assert full_grad.abs().sum() > 0
    scale = float(full_grad.abs().max())  # float32 sums in another order: relative tolerance
    assert torch.allclose(part_grad, full_grad, atol=1e-5 * scale, rtol=1e-4)


def test_vlm_weight_zero_is_exactly_unweighted():
    density = torch.rand(2, 8, 8)
    weight = losses.vlm_weight_map(density, 0.0, 16)
    render, target = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert losses.weighted_l1(render, target, weight) == losses.weighted_l1(render, target, None)
    half = losses.vlm_weight_map(density, 0.5, 16)
    assert torch.allclose(half.mean(dim=(1, 2, 3)), torch.ones(2), atol=1e-5)


def test_guidance_gradients_follow_a_planted_density(tmp_path):
    """Per-pixel gradient of the training loss w.r.t. the render: weight (1 - w) + w * d / mean
    for density d, so the planted quadrant (d = 7) outweighs the rest (d = 1)."""
    trainer = Trainer(small_config(use_vlm_guidance=True, vlm_weight=0.5),
                      make_shards(tmp_path, vlm=True), tmp_path / "run")  # fmt: skip
    batch = next(iter(torch.utils.data.DataLoader(shards.ShardStream(trainer.shard_dir),
                                                  batch_size=1)))  # fmt: skip
    render = torch.full((1, 3, 32, 32), 0.5, requires_grad=True)
    target = torch.zeros(1, 3, 32, 32)
    weight = pixel_weights(batch, trainer.config, 32)
    trainer.loss(render, target, weight)[0].backward()
    grad = render.grad.abs()[0].mean(dim=0)
    high, low = grad[2:14, 2:14].mean(), grad[18:30, 18:30].mean()  # away from the edge
    mean = (7 + 3) / 4  # the planted density before normalising to mean 1
    expected = (0.5 + 0.5 * 7 / mean) / (0.5 + 0.5 * 1 / mean)
    assert float(high / low) == pytest.approx(expected, rel=1e-3)


def test_vlm_weight_zero_trains_exactly_like_no_guidance(tmp_path):
    shard_dir = make_shards(tmp_path, vlm=True)
    plain = train(small_config(epochs=1), shard_dir, tmp_path / "a")
    guided = train(small_config(epochs=1, use_vlm_guidance=True, vlm_weight=0.0),
                   shard_dir, tmp_path / "b")  # fmt: skip
    a = torch.load(plain["checkpoint"], weights_only=True)["model"]
    b = torch.load(guided["checkpoint"], weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_lpips_without_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(MetricUnavailable, match=r"decoder\.train\.lpips_backbone"):
        losses.PhotometricLoss(lpips=0.1, lpips_file=str(tmp_path / "missing.pth"))


def test_overfitting_one_image_gains_10_db(tmp_path):
    shard_dir = make_shards(tmp_path, count=2)
    trainer = Trainer(small_config(val_fraction=0.5), shard_dir, tmp_path / "run")
    batch = next(iter(torch.utils.data.DataLoader(shards.ShardStream(shard_dir), batch_size=1)))
    plan = hfts.EpochPlan(16, 1, None)
    target = resize_targets(batch["image"], 16)

    def current_psnr() -> float:
        with torch.no_grad():
            return float(psnr(render_batch(trainer.renderer, trainer.predict(batch), 16), target))

    before = current_psnr()
    for _ in range(60):
        trainer.train_step(batch, plan, torch.Generator().manual_seed(0))
    assert current_psnr() - before >= 10


def test_two_identical_runs_write_identical_checkpoint_bytes(tmp_path):
    """No wall-clock value (epoch_seconds) reaches a checkpoint; history.json keeps it."""
    shard_dir = make_shards(tmp_path)
    for run in ("a", "b"):
        train(small_config(epochs=2, save_interval=0), shard_dir, tmp_path / run)
    files = sorted(p.name for p in (tmp_path / "a").glob("*.pt"))
    assert files == sorted(p.name for p in (tmp_path / "b").glob("*.pt"))
    assert {NAMES.last, NAMES.epoch(2)} <= set(files) and NAMES.epoch(1) not in files
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    history = json.loads((tmp_path / "a/history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2] and history[0]["epoch_seconds"] > 0
    last = torch.load(tmp_path / "a" / NAMES.last, weights_only=True)
    assert last["epoch"] == 2 and "epoch_seconds" not in last["history"][0]


class Killed(Exception):
    """Stands for the process being killed after some epochs."""


def test_resume_from_last_after_a_kill_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    shard_dir = make_shards(tmp_path)
    config = small_config(epochs=3, save_interval=2)
    straight = train(config, shard_dir, tmp_path / "a")
    assert straight["checkpoint"] == str(tmp_path / "a" / NAMES.last)

    run_epoch = Trainer.run_epoch

    def killed_in_epoch_2(self, epoch):
        if epoch == 1:
            raise Killed
        return run_epoch(self, epoch)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "run_epoch", killed_in_epoch_2)
        with pytest.raises(Killed):
            train(config, shard_dir, tmp_path / "b")
    assert torch.load(tmp_path / "b" / NAMES.last, weights_only=True)["epoch"] == 1
    train(config, shard_dir, tmp_path / "b", resume=tmp_path / "b" / NAMES.last)
    for name in (NAMES.last, NAMES.epoch(2), NAMES.epoch(3)):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    history = json.loads((tmp_path / "b/history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_resume_refuses_another_experiment(tmp_path):
    shard_dir = make_shards(tmp_path)
    train(small_config(epochs=1), shard_dir, tmp_path / "run")
    with pytest.raises(ValueError, match="decoder experiment 2, not 1"):
        train(small_config(experiment=1, epochs=2), shard_dir, tmp_path / "other",
              resume=tmp_path / "run" / NAMES.last)  # fmt: skip


def poison_predictions(monkeypatch, after_calls: int) -> None:
    """Training predictions become NaN after `after_calls` calls of Trainer.predict."""
    calls = {"n": 0}
    original = Trainer.predict

    def poisoned(self, batch, k_active=None):
        calls["n"] += 1
        out = original(self, batch, k_active)
        return out * float("nan") if calls["n"] > after_calls and self.model.training else out

    monkeypatch.setattr(Trainer, "predict", poisoned)


def test_nan_guard_stops_and_names_the_last_good_checkpoint(tmp_path, monkeypatch):
    shard_dir = make_shards(tmp_path)
    poison_predictions(monkeypatch, after_calls=2)  # epoch 1: one training and one held-out call
    last = tmp_path / "run" / NAMES.last
    expected = rf"epoch 2: .*last good weights \(after epoch 1\) are in {re.escape(str(last))};"
    with pytest.raises(TrainingDiverged, match=expected):
        train(small_config(epochs=3), shard_dir, tmp_path / "run")
    good = torch.load(last, weights_only=True)
    assert good["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in good["model"].values())
    assert not list((tmp_path / "run").glob("*last_good*"))


def test_nan_guard_in_the_first_epoch_says_there_is_no_checkpoint(tmp_path, monkeypatch):
    shard_dir = make_shards(tmp_path)
    poison_predictions(monkeypatch, after_calls=0)
    with pytest.raises(TrainingDiverged, match=r"epoch 1: .*no last good checkpoint yet"):
        train(small_config(epochs=2), shard_dir, tmp_path / "run")
    assert not list((tmp_path / "run").glob("*.pt"))


def test_export_gate_inference_ply_and_evaluation(tmp_path):
    shard_dir = make_shards(tmp_path)
    result = train(small_config(epochs=1), shard_dir, tmp_path / "run")
    checkpoint = final_checkpoint(tmp_path / "run", NAMES)
    assert checkpoint == tmp_path / "run" / NAMES.last
    features, depth = export.held_out_inputs(checkpoint, shard_dir)
    info = export.export_onnx(checkpoint, tmp_path / "d.onnx", features, depth)
    assert info["max_abs_diff"] <= 1e-4 and info["render_psnr_db"] >= 50
    assert result["val_psnr"] > 0

    with pytest.raises(export.ExportParityError, match="not written"):
        export.export_onnx(checkpoint, tmp_path / "strict.onnx", features, depth, atol=0.0)
    assert not (tmp_path / "strict.onnx").exists()

    io.write_f32_bin(tmp_path / "f.bin", features[0].numpy())
    io.write_f32_bin(tmp_path / "d.bin", depth[0].numpy())
    packed = export.decoder_inference(tmp_path / "d.onnx", tmp_path / "f.bin", tmp_path / "d.bin",
                                      tmp_path / "out.bin", ply=tmp_path / "out.ply")  # fmt: skip
    assert (tmp_path / "out.bin").stat().st_size == 37 * 37 * 14 * 4
    ply = export.read_ply(tmp_path / "out.ply")
    np.testing.assert_allclose(ply["x"], packed[:, 0], rtol=1e-6)
    np.testing.assert_allclose(np.exp(ply["scale_0"]), packed[:, 3], rtol=1e-5)
    np.testing.assert_allclose(1 / (1 + np.exp(-ply["opacity"])), packed[:, 10], rtol=1e-4)
    np.testing.assert_allclose(0.5 + export.SH_C0 * ply["f_dc_0"], packed[:, 11], rtol=1e-5)
    assert len([k for k in ply if k.startswith("f_rest_")]) == 45

    summary = evaluate(tmp_path / "d.onnx", checkpoint, shard_dir, tmp_path / "eval")
    assert set(summary["metrics"]) >= {"decoder/psnr", "untrained/psnr", "bicubic/psnr"}
    assert summary["lpips"].startswith("unavailable:")
    per_item = pd.read_csv(tmp_path / "eval/per_item.csv")
    assert list(per_item.columns) == ["id", "method", "psnr", "ssim", "lpips"]
    assert set(per_item["method"]) == {"decoder", "untrained", "bicubic"}
    assert json.loads((tmp_path / "eval/summary.json").read_text()) == summary
    assert (tmp_path / "eval/table.md").read_text() == markdown_table(summary)
    assert (tmp_path / "eval/held_out.png").is_file() and (tmp_path / "eval/psnr.png").is_file()


def test_evaluation_table_text():
    """The held-out table keeps its layout: note line, header, two-decimal PSNR, four-decimal
    SSIM, one row per method in a fixed order."""
    stats = {"psnr": {"mean": 21.456, "median": 21.0, "p10": 19.994, "n": 4},
             "ssim": {"mean": 0.81234, "median": 0.8, "p10": 0.70005, "n": 4}}  # fmt: skip
    summary = {"held_out": 4, "image_size": 64, "gaussians": 5476, "lpips": "unavailable: x",
               "metrics": {f"{m}/{k}": v for m in ("bicubic", "untrained", "decoder")
                           for k, v in stats.items()}}  # fmt: skip
    row = "| 21.46 | 21.00 | 19.99 | 0.8123 | 0.8000 | 0.7000 |"
    assert markdown_table(summary) == (
        "Held-out images: 4 at 64px; 5476 Gaussians; LPIPS: unavailable: x\n\n"
        "| method | PSNR mean | PSNR median | PSNR p10 | SSIM mean | SSIM median | SSIM p10 |\n"
        "|---|---|---|---|---|---|---|\n"
        f"| decoder {row}\n| untrained {row}\n| bicubic {row}\n"
    )


def test_bicubic_baseline_is_lossless_with_enough_samples():
    image = torch.rand(1, 3, 16, 16)
    assert torch.allclose(bicubic_baseline(image, 16 * 16), image, atol=1e-5)
    assert not torch.allclose(bicubic_baseline(image, 4 * 4), image, atol=1e-2)


def test_config_from_dict_names_unknown_options():
    assert TrainConfig.from_dict({"epochs": "3", "lr": 1}) == TrainConfig(epochs=3, lr=1.0)
    with pytest.raises(ValueError, match=r"unknown option 'bogus'.*known: .*batch_size"):
        TrainConfig.from_dict({"epochs": 3, "bogus": 1})
