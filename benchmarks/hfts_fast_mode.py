"""HFTS: held-out PSNR against training wall-clock for full training and --fast_mode on the
same shards (the guide claims about 10x): --fast_mode, and region sampling alone
(--stochastic_k 256), each for as many epochs as the full run and again for the full run's
time (more epochs).

Data: the demo's 16 sample images at 128 px, tiny-random backbones (CPU, this machine).
Writes results/hfts_fast_mode.json and results/hfts_fast_mode.png (the curves)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from common import RESULTS, save
from fresnel.data import backbones, download, features, matte, shards
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.train import train
from fresnel.training.runlog import HISTORY

RESOLUTION, EPOCHS, LR = 128, 24, 0.002
FAST = {"fast_mode": {"fast_mode": True}, "stochastic_k 256": {"stochastic_k": 256}}


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


def curve(shard_dir: Path, out: Path, epochs: int, **flags) -> dict:
    """Train; per epoch: cumulative training seconds (validation excluded) and held-out PSNR."""
    config = TrainConfig(experiment=2, gaussians_per_patch=4, epochs=epochs, batch_size=2,
                         lr=LR, image_size=RESOLUTION, save_interval=0, **flags)  # fmt: skip
    train(config, shard_dir, out)
    history = json.loads((out / HISTORY).read_text())["epochs"]
    seconds = np.cumsum([h["epoch_seconds"] for h in history])
    return {"flags": flags, "epochs": epochs,
            "train_seconds": [round(float(s), 2) for s in seconds],
            "val_psnr": [round(h["val_psnr"], 3) for h in history],
            "plan": [(h["resolution"], h["k_active"], h["region"]) for h in history]}  # fmt: skip


def psnr_at(run: dict, seconds: float) -> float:
    """Held-out PSNR of the last validation at or before `seconds` of training."""
    done = [p for s, p in zip(run["train_seconds"], run["val_psnr"], strict=True) if s <= seconds]
    return done[-1] if done else float("nan")


def plot(runs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, run in runs.items():
        ax.plot(run["train_seconds"], run["val_psnr"], marker="o", markersize=3, label=name)
    ax.set(xlabel="training wall-clock (s, validation excluded)", ylabel="held-out PSNR (dB)",
           title=f"HFTS vs full training, {RESOLUTION}px, 5,476 Gaussians, CPU")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shard_dir = make_shards(root)
        runs = {"full": curve(shard_dir, root / "full", EPOCHS)}
        budget = runs["full"]["train_seconds"][-1]
        speedup = {}
        for name, flags in FAST.items():
            runs[name] = curve(shard_dir, root / name, EPOCHS, **flags)
            speedup[name] = round(budget / runs[name]["train_seconds"][-1], 2)
            # the same flags given the full run's time: more epochs (HFTS plans by epoch count)
            runs[f"{name}, full's time"] = curve(shard_dir, root / f"{name}-equal",
                                                 round(EPOCHS * speedup[name]), **flags)  # fmt: skip
    plot(runs, RESULTS / "hfts_fast_mode.png")
    save("hfts_fast_mode", {
        "data": f"16 demo images, {RESOLUTION}px, tiny-random backbones, K=4 (5476 Gaussians)",
        "lr": LR, "batch_size": 2,
        "runs": runs, "speedup_same_epochs": speedup,
        "final_psnr": {name: run["val_psnr"][-1] for name, run in runs.items()},
        "psnr_at_half_full_time": {name: psnr_at(run, budget / 2) for name, run in runs.items()},
    })  # fmt: skip


if __name__ == "__main__":
    main()
