"""HFTS: time per epoch and final held-out PSNR of --fast_mode against full training on the
same shards (the guide claims about 10x), plus the bias of stochastic rendering.

Data: the demo's 16 sample images at 128 px, tiny-random backbones (CPU, this machine)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import save
from fresnel.data import backbones, download, features, matte, shards
from fresnel.decoder import gaussians
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.export import load_checkpoint
from fresnel.decoder.hfts import importance_sample
from fresnel.decoder.train import camera, checkpoint_names, train
from fresnel.render import TileBasedRenderer
from fresnel.training import final_checkpoint
from fresnel.training.runlog import HISTORY

RESOLUTION, EPOCHS = 128, 8


def make_shards(root: Path) -> Path:
    os.environ["FRESNEL_CACHE"] = str(root / "cache")
    download.run("sample", root / "raw", count=16, seed=0, min_size=64, on_bad_image="fail",
                 datasets={})  # fmt: skip
    matte.run(root / "raw", root / "matted", remove_background=False, model="u2net",
              model_dir=root, padding=0.2, size=518, alpha_threshold=0.8, on_bad_image="fail")  # fmt: skip
    backbones.export_dinov2("tiny-random", root / "dinov2.onnx")
    backbones.export_depth("tiny-random", root / "depth.onnx")
    features.run(root / "matted", root / "dinov2.onnx", root / "depth.onnx", root / "features",
                 batch_size=4, depth_size=256)  # fmt: skip
    shards.pack(root / "matted", root / "features", root / "shards", RESOLUTION, 8, 0)
    return root / "shards"


def stochastic_bias(checkpoint, shard_dir, k: int, draws: int = 16) -> dict:
    """Mean render of `draws` importance-sampled subsets vs the full render, per pixel."""
    model, _ = load_checkpoint(checkpoint)
    item = next(iter(shards.ShardStream(shard_dir, shuffle=False)))
    with torch.no_grad():
        g = gaussians.unpack(model(item["dinov2"][None], item["depth"][None])[0])
        renderer, cam = TileBasedRenderer(), camera(RESOLUTION)
        full = renderer(**g, camera=cam).image
        generator = torch.Generator().manual_seed(0)
        subsets = []
        for _ in range(draws):
            keep = importance_sample(g["opacities"], g["scales"], g["means"], k, generator)
            subsets.append(renderer(**{n: v[keep] for n, v in g.items()}, camera=cam).image)
    mean_subset = torch.stack(subsets).mean(0)
    return {"stochastic_k": k, "of_gaussians": int(g["means"].shape[0]), "draws": draws,
            "bias_mean": float((mean_subset - full).mean()),
            "bias_mean_abs": float((mean_subset - full).abs().mean()),
            "single_draw_mean_abs_error": float((subsets[0] - full).abs().mean()),
            "full_render_mean": float(full.mean())}  # fmt: skip


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shard_dir = make_shards(root)
        runs = {}
        for name, flags in {"full": {}, "fast_mode": {"fast_mode": True}}.items():
            config = TrainConfig(experiment=2, gaussians_per_patch=4, epochs=EPOCHS, batch_size=2,
                                 lr=0.005, image_size=RESOLUTION, save_interval=0, **flags)  # fmt: skip
            train(config, shard_dir, root / name)
            history = json.loads((root / name / HISTORY).read_text())["epochs"]  # with timings
            seconds = [h["epoch_seconds"] for h in history]
            runs[name] = {"epoch_seconds": [round(s, 2) for s in seconds],
                          "total_train_seconds": round(sum(seconds), 1),
                          "final_val_psnr": round(history[-1]["val_psnr"], 2),
                          "plan": [(h["resolution"], h["k_active"], h["stochastic_k"]) for h in history]}  # fmt: skip
        final = final_checkpoint(root / "full", checkpoint_names(2))
        bias = stochastic_bias(final, shard_dir, 256)
    speedup = runs["full"]["total_train_seconds"] / runs["fast_mode"]["total_train_seconds"]
    fast_phase = np.mean(runs["fast_mode"]["epoch_seconds"][: int(EPOCHS * 0.75)])
    full_phase = np.mean(runs["full"]["epoch_seconds"][: int(EPOCHS * 0.75)])
    save("hfts_fast_mode", {
        "data": f"16 demo images, {RESOLUTION}px, tiny-random backbones, K=4 (5476 Gaussians)",
        "epochs": EPOCHS, "runs": runs, "speedup_total": round(speedup, 2),
        "speedup_fast_phase_epochs": round(float(full_phase / fast_phase), 2),
        "stochastic_rendering_bias": bias,
    })  # fmt: skip


if __name__ == "__main__":
    main()
