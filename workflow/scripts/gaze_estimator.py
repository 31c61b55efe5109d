"""Rule gaze_estimator: a gaze / head-pose estimator per split. `train`: on GazeGaussian's
training frames (its angular loss); `test`: on the test subjects only, so it measures
redirected images of subjects it never saw (fresnel.gaze.estimator)."""

from pathlib import Path

from fresnel.gaze.data import XGazeDataset
from fresnel.gaze.estimator import save_estimator, train_estimator
from fresnel.gaze.options import EstimatorOptions
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    split = snakemake.wildcards.estimator_split
    frames = "train" if split == "train" else "all"  # GazeGaussian's held-out frames stay unseen
    data = XGazeDataset(snakemake.input.data, split, frames=frames)
    options = EstimatorOptions.from_dict(snakemake.params.cfg)
    model, stats = train_estimator(data, options, progress=False)
    out = Path(snakemake.output[0])
    save_estimator(
        model, out / "estimator.pth", {"split": split, "subjects": data.subjects, **stats}
    )
    rec.stats = {"subjects": data.subjects, "frames": len(data), **stats}
