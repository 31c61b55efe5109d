"""Rule gaze_synthetic: synthetic ETH-XGaze subjects and their split (fresnel.gaze.synthetic)."""

from fresnel.gaze.synthetic import write_synthetic_xgaze
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = write_synthetic_xgaze(snakemake.output[0], **snakemake.params.cfg)
