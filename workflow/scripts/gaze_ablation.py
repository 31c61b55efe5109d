"""Rule gaze_ablation: one table of the variants (fresnel.gaze.ablation)."""

from fresnel.gaze.ablation import write_ablation
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    variants = list(snakemake.params.cfg["variants"])
    runs = dict(zip(variants, snakemake.input.runs, strict=True))
    evaluations = dict(zip(variants, snakemake.input.evaluations, strict=True))
    rec.stats = write_ablation(runs, evaluations, snakemake.output[0])
