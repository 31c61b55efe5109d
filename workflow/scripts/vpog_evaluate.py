"""Rule vpog_evaluate: BOP AR and template retrieval on the held-out queries, with the
random-template baseline, a table and pictures (fresnel.vpog.evaluate)."""

from fresnel.pipeline.adapter import stage
from fresnel.vpog.evaluate import evaluate_run

with stage(snakemake) as rec:
    rec.stats = evaluate_run(snakemake.input.run, snakemake.input.queries, snakemake.input.templates,
                             snakemake.output[0], progress=False, **snakemake.params.cfg)  # fmt: skip
