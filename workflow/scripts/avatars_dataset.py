"""Rule avatars_dataset: the synthetic head dataset in the NeRSemble layout (fresnel.avatars.data)."""

from fresnel.avatars.data import SyntheticConfig, write_synthetic
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = write_synthetic(snakemake.output[0], SyntheticConfig(**snakemake.params.cfg))
