"""Image metrics and the evaluation table, one convention for every family.

- PSNR: per image, in float64, data range 1 by default. The prediction is clamped to the
  data range (what a display shows) and the MSE floored at data_range^2 * 1e-10, so a
  perfect prediction scores PSNR_CAP_DB (100 dB) rather than infinity.
- SSIM: pytorch_msssim.ssim (Gaussian window 11, sigma 1.5, K = (0.01, 0.03)); images under
  11 px use the largest odd window that fits. Computed in the inputs' precision (float32
  unless given float64), so it also serves as a differentiable loss term.
- LPIPS: AlexNet LPIPS with its backbone from a local torchvision weights file; without one
  the metric is the string "unavailable: <reason>", never a number.

The evaluation table of a stage is three files: `per_item.csv` (one row per item and
method), `summary.json` and `table.md`, written by `write_table`.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from fresnel.io import atomic_path, write_bytes, write_json

PSNR_CAP_DB = 100.0
SSIM_WINDOW = 11
PER_ITEM, SUMMARY, TABLE = "per_item.csv", "summary.json", "table.md"


class MetricUnavailable(ValueError):
    """A metric whose weights are not on this machine."""


def mse_to_psnr(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    floor = data_range**2 * 10 ** (-PSNR_CAP_DB / 10)
    return (10 * torch.log10(data_range**2 / mse.clamp_min(floor))).clamp_max(PSNR_CAP_DB)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image PSNR [B] in dB of [B, C, H, W] images (see the module doc)."""
    err = pred.double().clamp(0, data_range) - target.double()
    return mse_to_psnr(err.square().flatten(1).mean(dim=1), data_range)


def ssim_window(size: int) -> int:
    """The largest odd window up to 11 that fits (pytorch_msssim needs window <= side)."""
    return max(3, min(SSIM_WINDOW, size if size % 2 else size - 1))


def ssim(pred: torch.Tensor, target: torch.Tensor, per_item: bool = False) -> torch.Tensor:
    """SSIM of [B, C, H, W] images in [0, 1]: the batch mean, or [B] with per_item."""
    from pytorch_msssim import ssim as msssim

    dtype = torch.float64 if pred.dtype == torch.float64 else torch.float32
    return msssim(pred.to(dtype), target.to(dtype), data_range=1.0, size_average=not per_item,
                  win_size=ssim_window(min(pred.shape[-2:])))  # fmt: skip


BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}


def load_lpips(weights_file: str | None, setting: str = "lpips_backbone", net: str = "alex"):
    """LPIPS with its backbone (`net`: "alex", or "vgg" for the VGG perceptual loss) from
    `weights_file` (torchvision's alexnet / vgg16 state dict).

    The lpips wheel ships only the linear heads; its backbone would be downloaded at run
    time, which fails offline. So the backbone is always loaded from a file, never fetched.
    """
    if not weights_file or not Path(weights_file).is_file():
        raise MetricUnavailable(
            f"LPIPS-{net} needs {net} backbone weights, but {weights_file or '(no file set)'} "
            f"does not exist; set {setting} to torchvision's {BACKBONE_FILES[net]}"
        )
    import lpips
    import torchvision

    model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    backbone = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
    features = backbone.features
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()
                              if k.startswith("features.")})  # fmt: skip
    for stage in model.net.children():
        for index, layer in stage.named_children():
            layer.load_state_dict(features[int(index)].state_dict())
    return model.eval().requires_grad_(False)


def lpips_or_unavailable(weights_file: str | None, setting: str = "lpips_backbone"):
    """(model, None) or (None, "unavailable: <reason>")."""
    try:
        return load_lpips(weights_file, setting), None
    except MetricUnavailable as exc:
        return None, f"unavailable: {exc}"


def describe(values) -> dict:
    """mean, median, 10th percentile and count of a list of numbers."""
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10)), "n": int(values.size)}  # fmt: skip


def markdown_table(
    header: list[str], rows: list[list[str]], note: str = "", footer: str = ""
) -> str:
    """A markdown table, with an optional paragraph before (note) and after (footer) it."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    table = "\n".join(lines) + "\n"
    return (f"{note}\n\n" if note else "") + table + (f"\n{footer}\n" if footer else "")


def write_table(out_dir, rows: list[dict], summary: dict, table: str) -> dict[str, Path]:
    """per_item.csv (the union of the rows' fields, in first-seen order), summary.json and
    table.md in out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"per_item": out_dir / PER_ITEM, "summary": out_dir / SUMMARY, "table": out_dir / TABLE}
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    with atomic_path(paths["per_item"]) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    write_json(paths["summary"], summary)
    write_bytes(paths["table"], table.encode())
    return paths
