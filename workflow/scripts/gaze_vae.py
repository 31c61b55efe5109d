"""Rule gaze_vae: the renderer's VAE, trained as an autoencoder of the training frames; every
variant that uses the VAE loads these weights frozen (fresnel.gaze.train.train_vae)."""

from pathlib import Path

from fresnel.gaze.data import XGazeDataset
from fresnel.gaze.train import train_vae
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    data = XGazeDataset(snakemake.input.data, "train", frames="train")
    path, recon = train_vae(data, cfg["epochs"], cfg["batch_size"], cfg["seed"],
                            Path(snakemake.output[0]) / "vae.pth", progress=False)  # fmt: skip
    rec.stats = {"frames": len(data), "reconstruction_l1": recon}
