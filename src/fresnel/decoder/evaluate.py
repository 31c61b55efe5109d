"""Held-out evaluation of an exported decoder against two baselines, in one table.

Methods, all rendered/compared at the training image_size on the held-out split:
- `decoder`: the exported ONNX model (what ships), rendered with the tile renderer;
- `untrained`: the same architecture at its seeded initialisation;
- `bicubic`: the target downsampled (area) to s x s samples, s = round(sqrt(N)) for N
  Gaussians, then bicubic-upsampled back: an image codec with as many samples as Gaussians.
  When s >= image_size this baseline is (nearly) lossless; the table says so.
LPIPS needs backbone weights (decoder.train.lpips_backbone); without them it is reported as
"unavailable: ...", never as a number. The metrics and the table files (per_item.csv,
summary.json, table.md) are `fresnel.metrics`'s; held_out.png and psnr.png are drawn here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from fresnel import metrics
from fresnel.data.shards import ShardStream
from fresnel.decoder import gaussians
from fresnel.decoder.export import _onnx_session, load_checkpoint
from fresnel.decoder.losses import LPIPS_SETTING
from fresnel.decoder.pictures import to_image
from fresnel.decoder.train import batches, make_model, render_batch, split_ids
from fresnel.images import save_png
from fresnel.io import atomic_path, reset_dir
from fresnel.render import TileBasedRenderer

METHODS = ("decoder", "untrained", "bicubic")
HEADER = ["method", "PSNR mean", "PSNR median", "PSNR p10", "SSIM mean", "SSIM median",
          "SSIM p10"]  # fmt: skip


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


def summarise(rows: list[dict]) -> dict:
    """{"<method>/<metric>": mean, median, p10 and n} for PSNR and SSIM."""
    return {
        f"{method}/{metric}": metrics.describe([r[metric] for r in rows if r["method"] == method])
        for method in METHODS
        for metric in ("psnr", "ssim")
    }


def evaluate(onnx_path, checkpoint, shard_dir, out_dir, lpips_backbone=None) -> dict:
    out_dir = reset_dir(out_dir)
    lpips_model, lpips_reason = metrics.lpips_or_unavailable(lpips_backbone, LPIPS_SETTING)
    rows, pictures = [], []
    _, config = load_checkpoint(checkpoint)
    for ids, target, renders in _predictions(onnx_path, config, shard_dir):
        for method, render in renders.items():
            psnrs = metrics.psnr(render, target).tolist()
            ssims = metrics.ssim(render, target, per_item=True).tolist()
            if lpips_model is not None:
                with torch.no_grad():
                    lpips = lpips_model(render * 2 - 1, target * 2 - 1).flatten().tolist()
            else:
                lpips = [lpips_reason] * len(ids)
            rows += [{"id": item, "method": method, "psnr": psnrs[i], "ssim": ssims[i],
                      "lpips": lpips[i]} for i, item in enumerate(ids)]  # fmt: skip
        pictures.append(torch.cat([target, *(renders[m] for m in METHODS)], dim=3))
    summary = {"metrics": summarise(rows), "lpips": lpips_reason or "computed",
               "image_size": config.image_size, "held_out": len({r["id"] for r in rows}),
               "gaussians": gaussians.NUM_PATCHES * config.gaussians_per_patch}  # fmt: skip
    metrics.write_table(out_dir, rows, summary, markdown_table(summary))
    save_png(to_image(list(torch.cat(pictures))), out_dir / "held_out.png")
    _save_plot(out_dir / "psnr.png", summary)
    return summary


def markdown_table(summary: dict) -> str:
    """The held-out table: a note line, then one row per method."""
    note = (f"Held-out images: {summary['held_out']} at {summary['image_size']}px; "
            f"{summary['gaussians']} Gaussians; LPIPS: {summary['lpips']}")  # fmt: skip
    rows = []
    for method in METHODS:
        p, s = summary["metrics"][f"{method}/psnr"], summary["metrics"][f"{method}/ssim"]
        rows.append([method, *(f"{p[k]:.2f}" for k in ("mean", "median", "p10")),
                     *(f"{s[k]:.4f}" for k in ("mean", "median", "p10"))])  # fmt: skip
    return metrics.markdown_table(HEADER, rows, note=note)


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
    return json.loads((Path(out_dir) / metrics.SUMMARY).read_text())
