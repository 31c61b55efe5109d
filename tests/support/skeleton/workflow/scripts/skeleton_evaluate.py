"""Rule skeleton_evaluate: the standard table of the toy (fresnel.skeleton.train)."""

from fresnel.pipeline.adapter import stage
from fresnel.skeleton.train import evaluate

with stage(snakemake) as rec:
    rec.stats = evaluate(snakemake.input.run, snakemake.output[0], snakemake.input.data)
