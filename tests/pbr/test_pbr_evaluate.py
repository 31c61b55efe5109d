"""NeuroPBR evaluation: metrics with hand-computed answers, baseline, report files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from fresnel.metrics import PSNR_CAP_DB, psnr, ssim
from fresnel.pbr import synth
from fresnel.pbr.data import PBRDataset
from fresnel.pbr.evaluate import (
    baseline_predictor,
    evaluate_model,
    mae,
    map_metrics,
    material_targets,
    mean_map_baseline,
    normal_angle_stats,
    rerender_error,
    rmse,
    write_report,
)
from fresnel.pbr.maps import join_maps, normalize_normals, split_maps
from fresnel.pbr.shader import heldout_lighting, render, to_display


def constant_maps(batch=1, size=8, albedo=0.5, roughness=0.5, metallic=0.0, normal=(0, 0, 1)):
    def full(channels, value):
        value = torch.as_tensor(value, dtype=torch.float32).reshape(1, -1, 1, 1)
        return value.expand(batch, channels, size, size).clone()

    return {
        "albedo": full(3, albedo),
        "roughness": full(1, roughness),
        "metallic": full(1, metallic),
        "normal": full(
            3,
            torch.tensor(normal, dtype=torch.float32)
            / torch.linalg.norm(torch.tensor(normal, dtype=torch.float32)),
        ),
    }


def test_psnr_mae_rmse_of_a_constant_error():
    gt = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8
    pred = gt + 0.1
    torch.testing.assert_close(psnr(pred, gt), torch.full((2,), 20.0, dtype=torch.float64))
    torch.testing.assert_close(mae(pred, gt), torch.full((2,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(rmse(pred, gt), torch.full((2,), 0.1, dtype=torch.float64))
    half = gt.clone()
    half[:, :, :8] += 0.2  # half the pixels off by 0.2: MSE 0.02
    torch.testing.assert_close(
        psnr(half, gt), torch.full((2,), -10 * math.log10(0.02), dtype=torch.float64)
    )


def test_perfect_prediction_is_capped_not_infinite():
    gt = torch.rand(1, 1, 8, 8)
    assert float(psnr(gt, gt.clone())) == PSNR_CAP_DB
    assert float(psnr(gt + 1e-12, gt)) == PSNR_CAP_DB


def test_ssim_of_constant_images_has_the_closed_form():
    a, b, c1 = 0.2, 0.5, 0.01**2
    x = torch.full((1, 1, 16, 16), a)
    y = torch.full((1, 1, 16, 16), b)
    # constant images: the contrast-structure term is C2/C2 = 1, only luminance remains
    expected = (2 * a * b + c1) / (a * a + b * b + c1)
    # rel 2e-5: pytorch_msssim builds its window in float32, so the variances of constant
    # images are ~1e-8 instead of 0 (against C2 = 9e-4); dropping C1 would be off by 1.5e-4
    assert float(ssim(x.double(), y.double(), per_item=True)) == pytest.approx(expected, rel=2e-5)
    assert float(ssim(x.double(), x.double(), per_item=True)) == pytest.approx(1.0)
    assert ssim(torch.rand(3, 3, 7, 7), torch.rand(3, 3, 7, 7), per_item=True).shape == (3,)


def rotate_x(normal: torch.Tensor, degrees: float) -> torch.Tensor:
    t = math.radians(degrees)
    x, y, z = normal.unbind(1)
    return torch.stack([x, y * math.cos(t) - z * math.sin(t), y * math.sin(t) + z * math.cos(t)], 1)


def test_normal_angle_statistics_of_known_rotations():
    gt = constant_maps(size=1)["normal"].expand(1, 3, 1, 10).clone()
    pred = torch.cat([rotate_x(gt[..., :8], 10.0), rotate_x(gt[..., 8:], 50.0)], dim=-1)
    stats = normal_angle_stats(pred, gt)
    # tolerances: the rotated normals are float32
    assert float(stats["normal_angle_mean"]) == pytest.approx(18.0, abs=1e-5)  # (8*10+2*50)/10
    assert float(stats["normal_angle_median"]) == pytest.approx(10.0, abs=1e-5)
    assert float(stats["normal_angle_p90"]) == pytest.approx(50.0, abs=1e-5)
    tiny = rotate_x(gt.double(), 0.01)  # atan2 keeps precision where acos would not
    assert float(normal_angle_stats(tiny, gt)["normal_angle_mean"]) == pytest.approx(0.01, rel=1e-6)
    assert float(normal_angle_stats(gt, gt)["normal_angle_p90"]) == pytest.approx(0.0, abs=1e-12)


def test_map_metrics_compare_normals_in_png_encoding():
    gt = constant_maps(size=4)
    pred = {k: v.clone() for k, v in gt.items()}
    pred["albedo"] = gt["albedo"] + 0.1
    pred["normal"] = rotate_x(gt["normal"], 90.0)  # (0,0,1) -> (0,-1,0)
    metrics = map_metrics(pred, gt)
    assert float(metrics["albedo_psnr"]) == pytest.approx(20.0)
    assert float(metrics["roughness_psnr"]) == PSNR_CAP_DB and float(metrics["metallic_mae"]) == 0
    # encoded: (0.5,0.5,1) vs (0.5,0,0.5): squared errors 0, 0.25, 0.25 -> MSE 1/6
    assert float(metrics["normal_psnr"]) == pytest.approx(10 * math.log10(6), rel=1e-6)
    assert float(metrics["normal_angle_mean"]) == pytest.approx(90.0)
    with pytest.raises(ValueError, match="output_size"):
        map_metrics({**pred, "albedo": pred["albedo"][..., :2, :2]}, gt)


def test_rerender_error_matches_a_direct_computation():
    gt = constant_maps(batch=2, size=4, albedo=(0.6, 0.4, 0.2), roughness=0.3)
    pred = {**gt, "roughness": torch.full_like(gt["roughness"], 0.7)}
    lights = heldout_lighting(1, 3)
    diffs = torch.stack(
        [to_display(render(pred, lt)) - to_display(render(gt, lt)) for lt in lights]
    ).double()
    out = rerender_error(pred, gt, lights)
    expected_mae = diffs.abs().mean(dim=(0, 2, 3, 4))
    expected_psnr = -10 * torch.log10((diffs**2).mean(dim=(0, 2, 3, 4)))
    torch.testing.assert_close(out["rerender_mae"], expected_mae)
    torch.testing.assert_close(out["rerender_psnr"], expected_psnr)
    assert torch.all(out["rerender_mae"] > 1e-3)


def test_mean_map_baseline_on_a_toy_set():
    first = constant_maps(albedo=0.2, roughness=0.1, metallic=1.0, normal=(0.6, 0.0, 0.8))
    second = constant_maps(albedo=0.6, roughness=0.5, metallic=0.0, normal=(-0.6, 0.0, 0.8))
    # one packed target and one map dict without batch dim
    baseline = mean_map_baseline([join_maps(first)[0], {k: v[0] for k, v in second.items()}])
    assert baseline["albedo"].shape == (1, 3, 1, 1)
    torch.testing.assert_close(baseline["albedo"].flatten(), torch.full((3,), 0.4))
    torch.testing.assert_close(baseline["roughness"].flatten(), torch.tensor([0.3]))
    torch.testing.assert_close(baseline["metallic"].flatten(), torch.tensor([0.5]))
    torch.testing.assert_close(baseline["normal"].flatten(), torch.tensor([0.0, 0.0, 1.0]))
    with pytest.raises(ValueError, match="no training targets"):
        mean_map_baseline([])


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> PBRDataset:
    root = tmp_path_factory.mktemp("pbr_eval") / "data"
    synth.make_dataset(root, n_materials=3, samples_per_material=1, size=16, seed=0, dirty=False)
    return PBRDataset(root / "input", root / "output")


def test_evaluate_model_scores_an_oracle_perfectly_and_the_baseline_worse(small_dataset):
    ds = small_dataset
    baseline = mean_map_baseline(material_targets(ds))
    targets = iter([ds[i][1] for i in range(len(ds))])

    def oracle(views):  # the dataset's targets, in evaluation order
        return split_maps(torch.stack([next(targets) for _ in range(views.shape[0])]))

    lights = heldout_lighting(0, 2)
    rows, summary = evaluate_model(oracle, ds, baseline, lights, batch_size=2)
    assert [r["sample"] for r in rows] == ds.samples and summary["n_samples"] == 3
    assert all(r[f"{m}_psnr"] == PSNR_CAP_DB for r in rows for m in ("albedo", "normal"))
    assert all(r["normal_angle_p90"] < 1e-12 and r["rerender_mae"] == 0 for r in rows)
    base_rows, base_summary = evaluate_model(None, ds, baseline, lights)
    assert base_summary["rerender_psnr"] < 40 and base_summary["normal_angle_mean"] > 1
    gain = summary["gain_over_baseline"]
    assert gain["rerender_psnr"] == pytest.approx(PSNR_CAP_DB - base_summary["rerender_psnr"])
    # the baseline's rows equal the metrics of its constant maps against each target
    gt = split_maps(ds[1][1].unsqueeze(0))
    direct = map_metrics(baseline_predictor(baseline, 16)(torch.zeros(1)[None]), gt)
    assert base_rows[1]["albedo_psnr"] == pytest.approx(float(direct["albedo_psnr"][0]))
    with pytest.raises(ValueError, match="predict_fn"):
        evaluate_model(None, ds, None, lights)


def test_write_report_writes_csv_summary_table_and_chart(small_dataset, tmp_path):
    ds = small_dataset
    baseline = mean_map_baseline(material_targets(ds))
    rows, _ = evaluate_model(None, ds, baseline, heldout_lighting(0, 1))
    noisy = [{**r, "albedo_psnr": r["albedo_psnr"] + 3} for r in rows]
    paths = write_report({"teacher": noisy, "student": rows, "mean-map baseline": rows}, tmp_path)
    with open(paths["per_item"], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 9 and {r["model"] for r in table} == {
        "teacher",
        "student",
        "mean-map baseline",
    }
    summary = json.loads(Path(paths["summary"]).read_text())
    teacher, student = summary["models"]["teacher"], summary["models"]["student"]
    assert teacher["albedo_psnr"] == pytest.approx(student["albedo_psnr"] + 3)
    assert summary["psnr_cap_db"] == PSNR_CAP_DB
    lines = Path(paths["table"]).read_text().splitlines()
    assert lines[0].startswith("| model | albedo PSNR") and "re-render PSNR" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:5]] == [
        "teacher",
        "student",
        "mean-map baseline",
    ]
    with Image.open(paths["chart"]) as chart:
        assert chart.format == "PNG" and chart.size[0] > 300


def test_normalised_normals_make_zero_vectors_plus_z():
    normals = torch.zeros(1, 3, 2, 2)
    torch.testing.assert_close(
        normalize_normals(normals)[0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0])
    )
