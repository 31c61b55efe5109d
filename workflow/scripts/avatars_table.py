"""Rule avatars_table: one table of runs (the presets, the ablation or the sensitivity sweep)."""

from fresnel.avatars.tables import write
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    runs = dict(zip(snakemake.params.cfg["runs"], snakemake.input.evaluations, strict=True))
    rows = write(runs, snakemake.output[0], snakemake.params.title)
    rec.stats = {"rows": len(rows)}
