"""Rule matte: background removal and the guide's crop geometry (logic in fresnel.data.matte)."""

from fresnel.data.matte import run
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = run(snakemake.input.raw, snakemake.output[0], **snakemake.params.cfg)
