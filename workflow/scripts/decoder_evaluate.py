"""Rule decoder_evaluate: held-out metrics against baselines (logic in fresnel.decoder.evaluate)."""

from fresnel.decoder.evaluate import evaluate
from fresnel.decoder.train import checkpoint_names
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    names = checkpoint_names(int(snakemake.wildcards.exp))
    rec.stats = evaluate(
        snakemake.input.onnx, final_checkpoint(snakemake.input.run, names), snakemake.input.shards,
        snakemake.output[0], lpips_backbone=snakemake.params.cfg["lpips_backbone"],
    )  # fmt: skip
