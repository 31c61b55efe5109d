"""Held-out evaluation of NeuroPBR predictors (teacher, student, mean-map baseline).

Metrics, per sample (maps are dicts of [B,C,H,W] tensors, fresnel.pbr.maps conventions):
- per map: PSNR, SSIM, MAE, RMSE on values in [0,1]; the normal map is compared in its
  PNG encoding n * 0.5 + 0.5. PSNR and SSIM are fresnel.metrics' (per image, data range 1,
  PSNR capped at PSNR_CAP_DB = 100 dB, SSIM in float64 with its window rule).
- normal angle in degrees between unit normals, atan2(|a x b|, a.b) (accurate near 0),
  summarised per sample by the mean, median and 90th percentile over pixels.
- re-render error: both map sets shaded under held-out lightings (shader.heldout_lighting,
  never used for the dataset), compared in display space (shader.to_display): MAE and PSNR
  over all lightings and pixels.
A summary is the mean over samples of each per-sample value.

The mean-map baseline predicts, for every input, the per-channel mean of the training
materials' maps (the normal renormalised); a model that does not beat it has learned
nothing about the input.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from tqdm import tqdm

from fresnel import metrics
from fresnel.images import IMAGENET_MEAN, IMAGENET_STD
from fresnel.io import atomic_path, reset_dir
from fresnel.metrics import PSNR_CAP_DB, mse_to_psnr
from fresnel.pbr import data
from fresnel.pbr.maps import MAPS, encode_normal, normalize_normals, split_maps
from fresnel.pbr.shader import Lighting, heldout_lighting, render, to_display
from fresnel.pbr.student import load_student, read_student_checkpoint
from fresnel.pbr.teacher import load_generator
from fresnel.pbr.teacher_shards import resize_maps
from fresnel.training import read_checkpoint

log = logging.getLogger(__name__)

SSIM_IMPL = "pytorch_msssim.ssim (window 11, sigma 1.5, data range 1)"
ANGLE_STATS = ("mean", "median", "p90")
TABLE_COLUMNS = (
    ("albedo_psnr", "albedo PSNR"),
    ("roughness_psnr", "roughness PSNR"),
    ("metallic_psnr", "metallic PSNR"),
    ("normal_psnr", "normal PSNR"),
    ("normal_angle_mean", "normal angle mean (deg)"),
    ("normal_angle_median", "normal angle median (deg)"),
    ("normal_angle_p90", "normal angle p90 (deg)"),
    ("rerender_psnr", "re-render PSNR"),
)
MapDict = dict[str, torch.Tensor]
PredictFn = Callable[[torch.Tensor], MapDict]


# ------------------------------------------------------------------ image metrics


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).mean(dim=1)


def mae(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return _per_sample_mean((pred.double() - gt.double()).abs())


def rmse(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return _per_sample_mean((pred.double() - gt.double()) ** 2).sqrt()


def normal_angles(pred_normal: torch.Tensor, gt_normal: torch.Tensor) -> torch.Tensor:
    """Angle in degrees [B,H,W] between normals [B,3,H,W] (both renormalised first)."""
    a, b = normalize_normals(pred_normal.double()), normalize_normals(gt_normal.double())
    cross = torch.linalg.cross(a, b, dim=1).norm(dim=1)
    return torch.rad2deg(torch.atan2(cross, (a * b).sum(dim=1)))


def normal_angle_stats(pred_normal: torch.Tensor, gt_normal: torch.Tensor) -> dict:
    """{"normal_angle_mean"|"_median"|"_p90": [B]} over each sample's pixels (degrees)."""
    angles = normal_angles(pred_normal, gt_normal).flatten(1)
    return {
        "normal_angle_mean": angles.mean(dim=1),
        "normal_angle_median": torch.quantile(angles, 0.5, dim=1),
        "normal_angle_p90": torch.quantile(angles, 0.9, dim=1),
    }


def _comparable(name: str, values: torch.Tensor) -> torch.Tensor:
    return encode_normal(values) if name == "normal" else values


def _check_shapes(pred: MapDict, gt: MapDict) -> None:
    for name in MAPS:
        if pred[name].shape != gt[name].shape:
            raise ValueError(
                f"{name}: prediction {tuple(pred[name].shape)} vs target "
                f"{tuple(gt[name].shape)}; build the dataset with output_size equal to the "
                "model's output size"
            )


def map_metrics(pred: MapDict, gt: MapDict) -> dict[str, torch.Tensor]:
    """Per-sample [B] metrics: <map>_{psnr,ssim,mae,rmse} for each map + normal angles."""
    _check_shapes(pred, gt)
    out = {}
    for name in MAPS:
        p, g = _comparable(name, pred[name]), _comparable(name, gt[name])
        out[f"{name}_psnr"] = metrics.psnr(p, g)
        out[f"{name}_ssim"] = metrics.ssim(p.double(), g.double(), per_item=True)
        out[f"{name}_mae"] = mae(p, g)
        out[f"{name}_rmse"] = rmse(p, g)
    out.update(normal_angle_stats(pred["normal"], gt["normal"]))
    return out


def rerender_error(
    pred_maps: MapDict, gt_maps: MapDict, lighting_list: Iterable[Lighting]
) -> dict[str, torch.Tensor]:
    """{"rerender_mae", "rerender_psnr"}: [B] display-space errors over all lightings."""
    _check_shapes(pred_maps, gt_maps)
    abs_sum = sq_sum = 0.0
    count = 0
    with torch.no_grad():
        for lighting in lighting_list:
            diff = (
                to_display(render(pred_maps, lighting)).double()
                - to_display(render(gt_maps, lighting)).double()
            )
            abs_sum = abs_sum + _per_sample_mean(diff.abs())
            sq_sum = sq_sum + _per_sample_mean(diff**2)
            count += 1
    if count == 0:
        raise ValueError("rerender_error needs at least one lighting")
    return {"rerender_mae": abs_sum / count, "rerender_psnr": mse_to_psnr(sq_sum / count)}


# ---------------------------------------------------------------------- baseline


def mean_map_baseline(train_targets: Iterable[torch.Tensor | MapDict]) -> MapDict:
    """Per-channel mean over training targets -> maps [1,C,1,1] (normal renormalised).

    Each item is a packed target [8,H,W] / [B,8,H,W] or a map dict; every item weighs the
    same, so pass one target per material (material_targets) for a per-material mean.
    """
    totals, count = None, 0
    for item in train_targets:
        maps = split_maps(item) if isinstance(item, torch.Tensor) else item
        batched = {k: (v if v.dim() == 4 else v.unsqueeze(0)).double() for k, v in maps.items()}
        means = {k: v.mean(dim=(2, 3)).sum(dim=0) for k, v in batched.items()}
        totals = means if totals is None else {k: totals[k] + means[k] for k in MAPS}
        count += batched["albedo"].shape[0]
    if count == 0:
        raise ValueError("mean_map_baseline got no training targets")
    maps = {k: (totals[k] / count).float().view(1, -1, 1, 1) for k in MAPS}
    maps["normal"] = normalize_normals(maps["normal"])
    return maps


def material_targets(dataset, samples: Iterable[str] | None = None) -> Iterable[torch.Tensor]:
    """One packed target per distinct material among `samples` (default: all entries)."""
    wanted = None if samples is None else set(samples)
    seen = set()
    for index, (sample, _) in enumerate(dataset.entries):
        material = dataset.material_of(sample)
        if (wanted is None or sample in wanted) and material not in seen:
            seen.add(material)
            yield dataset.target(index)


def baseline_predictor(baseline_maps: MapDict, output_size: int) -> PredictFn:
    """A predict_fn that returns the baseline maps at output_size for every input."""

    def predict(views: torch.Tensor) -> MapDict:
        shape = (views.shape[0], -1, output_size, output_size)
        return {k: v.expand(*shape) for k, v in baseline_maps.items()}

    return predict


# ---------------------------------------------------------------------- evaluation


def _batches(n: int, batch_size: int) -> Iterable[list[int]]:
    for start in range(0, n, batch_size):
        yield list(range(start, min(n, start + batch_size)))


def _rows_for_batch(dataset, indices, pred: MapDict, gt: MapDict, lighting) -> list[dict]:
    values = map_metrics(pred, gt)
    values.update(rerender_error(pred, gt, lighting))
    rows = []
    for j, index in enumerate(indices):
        sample, source = dataset.entries[index]
        row = {"sample": sample, "source": source, "material": dataset.material_of(sample)}
        row.update({k: float(v[j]) for k, v in values.items()})
        rows.append(row)
    return rows


def evaluate_model(
    predict_fn: PredictFn | None,
    dataset,
    baseline_maps: MapDict | None = None,
    lighting: list[Lighting] | None = None,
    batch_size: int = 4,
    desc: str = "evaluate",
) -> tuple[list[dict], dict]:
    """Score predict_fn on every dataset entry -> (per-sample rows, summary).

    predict_fn(views [B,3,3,H,W] normalised, CPU) -> map dict [B,C,S,S] (any device);
    None evaluates baseline_maps instead. When both are given, the summary also holds
    "gain_over_baseline": model minus baseline for each table metric (positive PSNR gain
    and negative angle gain are better). lighting defaults to heldout_lighting(0, 4).
    """
    if predict_fn is None and baseline_maps is None:
        raise ValueError("evaluate_model needs a predict_fn, baseline_maps, or both")
    lighting = heldout_lighting(0, 4) if lighting is None else list(lighting)
    size = dataset.output_size or dataset.target(0).shape[-1]
    baseline_fn = None if baseline_maps is None else baseline_predictor(baseline_maps, size)
    model_fn = predict_fn or baseline_fn
    rows, baseline_rows = [], []
    n_batches = math.ceil(len(dataset) / batch_size)
    for indices in tqdm(_batches(len(dataset), batch_size), total=n_batches, desc=desc):
        items = [dataset[i] for i in indices]
        views = torch.stack([views for views, _ in items])
        gt = split_maps(torch.stack([target for _, target in items]))
        with torch.no_grad():
            pred = {k: v.detach().float().cpu() for k, v in model_fn(views).items()}
        rows += _rows_for_batch(dataset, indices, pred, gt, lighting)
        if predict_fn is not None and baseline_fn is not None:
            baseline_rows += _rows_for_batch(dataset, indices, baseline_fn(views), gt, lighting)
    summary = summarize(rows)
    if baseline_rows:
        reference = summarize(baseline_rows)
        summary["gain_over_baseline"] = {
            key: summary[key] - reference[key] for key, _ in TABLE_COLUMNS
        }
    return rows, summary


def summarize(rows: list[dict]) -> dict:
    """Mean over samples of every numeric per-sample field, plus n_samples."""
    if not rows:
        raise ValueError("no per-sample rows to summarise")
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float))]
    summary = {k: sum(row[k] for row in rows) / len(rows) for k in keys}
    summary["n_samples"] = len(rows)
    return summary


# ---------------------------------------------------------------------- report


def _table_markdown(summaries: dict[str, dict]) -> str:
    header = ["model", *(label for _, label in TABLE_COLUMNS), "samples"]
    rows = [
        [model, *(f"{summary[key]:.2f}" for key, _ in TABLE_COLUMNS), str(summary["n_samples"])]
        for model, summary in summaries.items()
    ]
    footer = (
        f"PSNR in dB (data range 1, capped at {PSNR_CAP_DB:.0f} dB; normal map compared in its "
        "[0,1] PNG encoding). Angles in degrees, per-sample statistics averaged over samples. "
        "Re-render PSNR: display-space renders under held-out lights."
    )
    return metrics.markdown_table(header, rows, footer=footer)


def _bar_chart(summaries: dict[str, dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    psnr_keys = [k for k, _ in TABLE_COLUMNS if k.endswith("psnr")]
    angle_keys = [k for k, _ in TABLE_COLUMNS if k.startswith("normal_angle")]
    figure = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(figure)
    width = 0.8 / max(len(summaries), 1)
    for axis, keys, ylabel in (
        (figure.add_subplot(1, 2, 1), psnr_keys, "PSNR (dB, higher is better)"),
        (figure.add_subplot(1, 2, 2), angle_keys, "normal angle (deg, lower is better)"),
    ):
        for m, (model, summary) in enumerate(summaries.items()):
            xs = [i + (m - (len(summaries) - 1) / 2) * width for i in range(len(keys))]
            axis.bar(xs, [summary[k] for k in keys], width=width, label=model)
        axis.set_xticks(range(len(keys)), [k.replace("_", "\n") for k in keys], fontsize=8)
        axis.set_ylabel(ylabel)
        axis.legend(fontsize=8)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def write_report(rows_by_model: dict[str, list[dict]], out_dir: str | os.PathLike) -> dict:
    """Write per_item.csv (one row per model and sample), summary.json, table.md
    (fresnel.metrics.write_table) and metrics.png; return their paths."""
    out_dir = Path(out_dir)
    summaries = {model: summarize(rows) for model, rows in rows_by_model.items()}
    summary = {
        "models": summaries,
        "psnr_cap_db": PSNR_CAP_DB,
        "ssim": SSIM_IMPL,
        "normal_map_metrics": "PSNR/SSIM/MAE/RMSE on the [0,1] encoding n*0.5+0.5",
        "summary": "mean over samples of per-sample values",
    }
    rows = [{"model": model, **row} for model, model_rows in rows_by_model.items()
            for row in model_rows]  # fmt: skip
    paths = metrics.write_table(out_dir, rows, summary, _table_markdown(summaries))
    paths["chart"] = out_dir / "metrics.png"
    _bar_chart(summaries, paths["chart"])
    return paths


# ------------------------------------------------------- teacher vs student (pbr_evaluate)
# The held-out set is the materials neither model trained on: the teacher's validation
# materials, which must also be outside the student's training split (the split is by
# material and seeded, so equal seed and val_ratio in both configs give equal splits).


class EvaluationSetError(ValueError):
    """No material is held out from both models."""


def held_out_samples(teacher_split: dict, student_split: dict, teacher_ckpt, student_ckpt):
    """Samples of the materials that neither the teacher nor the student trained on."""
    seen = set(teacher_split["train"]) | set(student_split["train"])
    held_out = sorted(set(teacher_split["val"]) - seen)
    if not held_out:
        raise EvaluationSetError(
            f"{teacher_ckpt} and {student_ckpt}: no validation sample is outside both training "
            "splits; give the student config the teacher's training.seed and data/training "
            "val_ratio (the split by material is deterministic in both)"
        )
    return held_out


def _dataset(root, samples, image_size, output_size, mean, std, curriculum):
    input_dir, output_dir = data.dataset_dirs(root)
    return data.PBRDataset(
        input_dir, output_dir, transform_mean=mean, transform_std=std, image_size=image_size,
        output_size=output_size, curriculum_mode=curriculum, samples=samples,
    )  # fmt: skip


def _predictor(model, output_size: int):
    """predict_fn for evaluate_model: the model's maps resized to the ground-truth size."""

    def predict(views: torch.Tensor) -> dict[str, torch.Tensor]:
        device = next(model.parameters()).device
        maps = model(views.to(device))
        return resize_maps({k: v.float().cpu() for k, v in maps.items()}, output_size)

    return predict


def evaluate_models(data_root, teacher_ckpt, student_ckpt, out_dir, heldout_lights: int,
                    device: str = "cpu") -> dict:  # fmt: skip
    """Score teacher, student and mean-map baseline on held-out materials; write the report."""
    teacher, tcfg = load_generator(teacher_ckpt, device)
    student, scfg = load_student(student_ckpt, device)
    teacher_split = read_checkpoint(teacher_ckpt)["extra"]["split"]
    student_split = read_student_checkpoint(student_ckpt)["extra"]["split"]
    samples = held_out_samples(teacher_split, student_split, teacher_ckpt, student_ckpt)
    train_samples = teacher_split["train"]
    mean, std, curriculum = tcfg.transform.mean, tcfg.transform.std, tcfg.curriculum
    gt_size = _dataset(data_root, samples, None, None, mean, std, curriculum).target(0).shape[-1]
    lighting = heldout_lighting(0, heldout_lights)
    train_set = _dataset(data_root, train_samples, None, gt_size, mean, std, curriculum)
    baseline = mean_map_baseline(material_targets(train_set))
    rows = {}
    student_norm = (IMAGENET_MEAN, IMAGENET_STD)  # the student's fixed preprocessing
    for name, model, size, (norm_mean, norm_std) in (
        ("teacher", teacher, tcfg.data.image_size, (mean, std)),
        ("student", student, scfg.data.image_size, student_norm),
    ):
        held_out = _dataset(data_root, samples, size, gt_size, norm_mean, norm_std, curriculum)
        rows[name], _ = evaluate_model(
            _predictor(model, gt_size), held_out, lighting=lighting, desc=name
        )
    rows["mean-map baseline"], _ = evaluate_model(
        None, held_out, baseline_maps=baseline, lighting=lighting, desc="baseline"
    )
    out_dir = reset_dir(out_dir)
    write_report(rows, out_dir)
    summary = {name: summarize(r) for name, r in rows.items()}
    log.info("held-out materials: %s", held_out.materials)
    return {"held_out_samples": len(samples), "summary": summary}
