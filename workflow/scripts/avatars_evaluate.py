"""Rule avatars_evaluate: novel views, held-out timesteps and the frozen-at-t0 baseline of one
run (fresnel.avatars.evaluate), with a video of the held-out renders."""

from fresnel.avatars.evaluate import evaluate_run
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = evaluate_run(snakemake.input.run, snakemake.input.data, snakemake.output[0],
                             **snakemake.params.cfg)  # fmt: skip
