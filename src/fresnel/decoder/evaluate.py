"""Held-out evaluation of an exported decoder against two baselines, in one table.

Methods, all rendered/compared at the training image_size on the held-out split:
- `decoder`: the exported ONNX model (what ships), rendered with the tile renderer;
- `untrained`: the same architecture at its seeded initialisation;
- `bicubic`: the target downsampled (area) to s x s samples, s = round(sqrt(N)) for N
  Gaussians, then bicubic-upsampled back: an image codec with as many samples as Gaussians.
  When s >= image_size this baseline is (nearly) lossless; the table says so.
LPIPS needs backbone weights (decoder.lpips_backbone); without them it is reported as
"unavailable: ...", never as a number.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fresnel.decoder import gaussians
from fresnel.decoder.export import _onnx_session, load_checkpoint
from fresnel.decoder.losses import LossConfigError, load_lpips, ssim_value
from fresnel.decoder.train import batches, make_model, psnr, render_batch, split_ids
from fresnel.io import atomic_path, reset_dir, write_bytes, write_json
from fresnel.render import TileBasedRenderer
from fresnel.data.shards import ShardStream

METHODS = ("decoder", "untrained", "bicubic")


def bicubic_baseline(target: torch.Tensor, samples: int) -> torch.Tensor:
    side = max(1, round(math.sqrt(samples)))
    small = F.interpolate(
        target, size=(side, side), mode="area" if side < target.shape[-1] else "bilinear"
    )
    return F.interpolate(small, size=target.shape[-2:], mode="bicubic", align_corners=False).clamp(
        0, 1
    )


def _predictions(onnx_path, config, shard_dir):
    """Yield (ids, target, {method: render}) per held-out batch."""
    untrained = make_model(config).eval()
    session = _onnx_session(onnx_path)
    renderer = TileBasedRenderer()
    n = gaussians.NUM_PATCHES * config.gaussians_per_patch
    _, val_ids = split_ids(shard_dir, config.val_fraction, config.seed, config.max_images)
    for batch in batches(ShardStream(shard_dir, shuffle=False), val_ids, config.batch_size):
        target = F.interpolate(batch["image"], size=(config.image_size,) * 2, mode="area")
        (packed,) = session.run(
            ["gaussians"], {"features": batch["dinov2"].numpy(), "depth": batch["depth"].numpy()}
        )
        with torch.no_grad():
            renders = {
                "decoder": render_batch(renderer, torch.from_numpy(packed), config.image_size),
                "untrained": render_batch(
                    renderer, untrained(batch["dinov2"], batch["depth"]), config.image_size
                ),
                "bicubic": bicubic_baseline(target, n),
            }
        yield batch["id"], target, {k: v.clamp(0, 1) for k, v in renders.items()}


def _lpips_or_reason(backbone):
    try:
        return load_lpips(backbone), None
    except LossConfigError as exc:
        return None, f"unavailable: {exc}"


def summarise(rows: list[dict]) -> dict:
    summary = {}
    for method in METHODS:
        for metric in ("psnr", "ssim"):
            values = np.array([r[metric] for r in rows if r["method"] == method], dtype=float)
            summary[f"{method}/{metric}"] = {
                "mean": float(values.mean()), "median": float(np.median(values)),
                "p10": float(np.percentile(values, 10)), "n": int(values.size),
            }  # fmt: skip
    return summary


def evaluate(onnx_path, checkpoint, shard_dir, out_dir, lpips_backbone=None) -> dict:
    out_dir = reset_dir(out_dir)
    lpips_model, lpips_reason = _lpips_or_reason(lpips_backbone)
    rows, pictures = [], []
    _, config = load_checkpoint(checkpoint)
    for ids, target, renders in _predictions(onnx_path, config, shard_dir):
        for method, render in renders.items():
            scores = psnr(render, target).tolist()
            for i, item in enumerate(ids):
                row = {"id": item, "method": method, "psnr": scores[i],
                       "ssim": float(ssim_value(render[i : i + 1], target[i : i + 1]))}  # fmt: skip
                with torch.no_grad():
                    row["lpips"] = (
                        float(lpips_model(render[i : i + 1] * 2 - 1, target[i : i + 1] * 2 - 1))
                        if lpips_model is not None
                        else lpips_reason
                    )
                rows.append(row)
        pictures.append(torch.cat([target, *(renders[m] for m in METHODS)], dim=3))
    summary = {"metrics": summarise(rows), "lpips": lpips_reason or "computed",
               "image_size": config.image_size, "held_out": len({r["id"] for r in rows}),
               "gaussians": gaussians.NUM_PATCHES * config.gaussians_per_patch}  # fmt: skip
    _write_outputs(out_dir, rows, summary, torch.cat(pictures))
    return summary


def _write_outputs(out_dir: Path, rows, summary, pictures) -> None:
    with atomic_path(out_dir / "per_image.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["id", "method", "psnr", "ssim", "lpips"])
        writer.writeheader()
        writer.writerows(rows)
    write_json(out_dir / "metrics.json", summary)
    write_bytes(out_dir / "table.md", markdown_table(summary).encode())
    _save_picture(out_dir / "held_out.png", pictures)
    _save_plot(out_dir / "psnr.png", summary)


def markdown_table(summary: dict) -> str:
    lines = [f"Held-out images: {summary['held_out']} at {summary['image_size']}px; "
             f"{summary['gaussians']} Gaussians; LPIPS: {summary['lpips']}", "",
             "| method | PSNR mean | PSNR median | PSNR p10 | SSIM mean | SSIM median | SSIM p10 |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method in METHODS:
        p, s = summary["metrics"][f"{method}/psnr"], summary["metrics"][f"{method}/ssim"]
        lines.append(f"| {method} | {p['mean']:.2f} | {p['median']:.2f} | {p['p10']:.2f} | "
                     f"{s['mean']:.4f} | {s['median']:.4f} | {s['p10']:.4f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _save_picture(path: Path, pictures: torch.Tensor) -> None:
    """Rows: target | decoder | untrained | bicubic."""
    from PIL import Image

    grid = torch.cat(list(pictures), dim=1).permute(1, 2, 0).numpy()
    with atomic_path(path) as tmp:
        Image.fromarray((grid * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")


def _save_plot(path: Path, summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    means = [summary["metrics"][f"{m}/psnr"]["mean"] for m in METHODS]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(METHODS, means, color=["tab:blue", "tab:gray", "tab:orange"])
    ax.set_ylabel("held-out PSNR (dB)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def load_summary(out_dir) -> dict:
    return json.loads((Path(out_dir) / "metrics.json").read_text())
