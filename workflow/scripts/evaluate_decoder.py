"""Rule evaluate: held-out metrics against baselines (logic in fresnel.decoder.evaluate)."""

from fresnel.decoder.evaluate import evaluate
from fresnel.decoder.train import final_checkpoint
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = evaluate(
        snakemake.input.onnx, final_checkpoint(snakemake.input.run), snakemake.input.shards,
        snakemake.output[0], lpips_backbone=snakemake.params.cfg["lpips_backbone"],
    )  # fmt: skip
