"""Rule skeleton_data: the toy's images (fresnel.skeleton.train)."""

from fresnel.pipeline.adapter import stage
from fresnel.skeleton.train import save_data

with stage(snakemake) as rec:
    save_data(snakemake.output[0], snakemake.params.cfg["seed"], snakemake.params.cfg["count"])
