"""Shared helpers for the backbone and features tests (not a conftest: plain imports).

The tiny-random ONNX models are exported once per test process, whichever test module
asks first, so test_backbones.py and test_features.py share one export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from fresnel import io
from fresnel.data import backbones

_EXPORTED: dict = {}


def tiny_backbones(tmp_path_factory) -> dict:
    """{"dinov2": path, "depth": path, "dinov2_info": ..., "depth_info": ...}, exported once."""
    if not _EXPORTED:
        folder = tmp_path_factory.mktemp("backbones")
        _EXPORTED["dinov2_info"] = backbones.export_dinov2("tiny-random", folder / "dinov2.onnx")
        _EXPORTED["depth_info"] = backbones.export_depth("tiny-random", folder / "depth.onnx")
        _EXPORTED["dinov2"] = folder / "dinov2.onnx"
        _EXPORTED["depth"] = folder / "depth.onnx"
    return _EXPORTED


def make_image(seed: int) -> np.ndarray:
    """A smooth random 518x518 RGB image (gradients plus noise), deterministic per seed."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:518, 0:518] / 517.0
    base = np.stack([xx, yy, (xx + yy) / 2], axis=-1) * rng.uniform(50, 200, 3)
    noise = rng.normal(0, 20, (518, 518, 3))
    return np.clip(base + noise + rng.uniform(0, 50, 3), 0, 255).astype(np.uint8)


def write_images(images_dir: Path, seeds: list[int]) -> list[str]:
    """The matte stage's layout: images/<id>.png plus manifest.parquet (id, file, sha256)."""
    rows = []
    for seed in seeds:
        image_id = f"img{seed:03d}"
        path = images_dir / "images" / f"{image_id}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(make_image(seed)).save(path)
        rows.append(
            {"id": image_id, "file": f"images/{image_id}.png", "sha256": io.sha256_file(path)}
        )
    pd.DataFrame(rows).to_parquet(images_dir / "manifest.parquet", index=False)
    return [row["id"] for row in rows]


def read_outputs(out_dir: Path) -> dict[str, bytes]:
    """Every file in a features output dir, by name, as bytes."""
    return {p.name: p.read_bytes() for p in sorted(Path(out_dir).iterdir())}
