"""Rule decoder_train: the Gaussian decoder from teacher shards (logic in fresnel.decoder.train).
Trains in a work folder that survives a killed job; a rerun resumes (fresnel.pipeline.resume)."""

from fresnel.decoder.train import TrainConfig, checkpoint_names, train
from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec:
    config = TrainConfig.from_dict(
        {**snakemake.params.cfg, "experiment": int(snakemake.wildcards.exp)}
    )
    with resumable(snakemake, checkpoint_names(config.experiment).last, rec) as (work, resume):
        rec.stats = train(config, snakemake.input.shards, work, rec.device, resume=resume)
