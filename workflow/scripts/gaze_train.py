"""Rule gaze_train: step 2, one ablation variant (`gaze.train` + `gaze.variants.<name>`), on the
MeshHead of step 1, the shared VAE and the training-split estimator. Trains in a work folder
that survives a killed job; a rerun resumes from its checkpoints/last.pth."""

from pathlib import Path

from fresnel.gaze.meshhead import final_checkpoint
from fresnel.gaze.options import GazeGaussianOptions
from fresnel.gaze.train import NAMES, train_gazegaussian
from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec, resumable(snakemake, f"checkpoints/{NAMES.last}", rec) as (work, _):
    cfg = dict(snakemake.params.cfg)
    options = GazeGaussianOptions.from_dict({
        **cfg,
        "img_dir": snakemake.input.data,
        "run_dir": str(work),
        "name": snakemake.wildcards.gaze_variant,
        "load_meshhead_checkpoint": str(final_checkpoint(snakemake.input.meshhead)),
        "gaze_estimator": str(Path(snakemake.input.estimator) / "estimator.pth"),
        "vae_weights": str(Path(snakemake.input.vae) / "vae.pth") if cfg.get("use_vae", True) else None,
        "num_workers": 0,
    })  # fmt: skip
    rec.stats = train_gazegaussian(options, progress=False)
