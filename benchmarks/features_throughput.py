"""Feature extraction throughput (DINOv2 + depth through ONNX Runtime, CPU provider):
images per second batched vs one image at a time, on the demo's tiny-random backbones.

Each configuration runs with an empty feature cache so every image is computed."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from common import save
from fresnel.data import backbones, download, features, matte

IMAGES = 16
BATCH_SIZES = (1, 4, 8)


def prepare(root: Path) -> tuple[Path, Path, Path]:
    download.run("sample", root / "raw", count=IMAGES, seed=0, min_size=64,
                 on_bad_image="fail", datasets={})  # fmt: skip
    matte.run(root / "raw", root / "matted", remove_background=False, model="u2net",
              model_dir=root, padding=0.2, size=518, alpha_threshold=0.8,
              on_bad_image="fail")  # fmt: skip
    dinov2, depth = root / "dinov2.onnx", root / "depth.onnx"
    backbones.export_dinov2("tiny-random", dinov2)
    backbones.export_depth("tiny-random", depth)
    return root / "matted", dinov2, depth


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        images, dinov2, depth = prepare(root)
        rates = {}
        for batch in BATCH_SIZES:
            os.environ["FRESNEL_CACHE"] = str(root / f"cache-{batch}")
            start = time.perf_counter()
            stats = features.run(images, dinov2, depth, root / f"features-{batch}", batch, 256)
            elapsed = time.perf_counter() - start
            assert stats["computed"] == IMAGES
            rates[f"batch_{batch}"] = {"seconds": round(elapsed, 3),
                                       "images_per_s": round(IMAGES / elapsed, 3)}  # fmt: skip
    base = rates["batch_1"]["images_per_s"]
    save("features_throughput", {
        "images": IMAGES, "models": "tiny-random DINOv2 (2 layers, 384 wide) + Depth Anything",
        "provider": "CPUExecutionProvider", "results": rates,
        "speedup_vs_batch_1": {k: round(v["images_per_s"] / base, 3) for k, v in rates.items()},
    })  # fmt: skip


if __name__ == "__main__":
    main()
