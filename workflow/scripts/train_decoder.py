"""Rule decoder_train: the Gaussian decoder from teacher shards (logic in fresnel.decoder.train)."""

from fresnel.decoder.train import TrainConfig, train
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    config = TrainConfig.from_dict(
        {**snakemake.params.cfg, "experiment": int(snakemake.wildcards.exp)}
    )
    rec.stats = train(config, snakemake.input.shards, snakemake.output[0], rec.device)
