"""Rule decoder_train: the Gaussian decoder from teacher shards (logic in fresnel.decoder.train).
Trains in a work folder that survives a killed job; a rerun resumes (fresnel.pipeline.resume).
Wall-clock (TensorBoard events, epoch seconds) goes beside the log, out of the tracked output.
With tasks > 1 (params.yaml `launch`) it trains on that many ranks (fresnel.training.launch)."""

from fresnel.decoder.train import TrainConfig, checkpoint_names, train
from fresnel.pipeline.adapter import clock_dir, stage
from fresnel.pipeline.resume import resumable
from fresnel.training.launch import run_ranks

with stage(snakemake) as rec:
    cfg = {**snakemake.params.cfg, "experiment": int(snakemake.wildcards.exp)}
    config = TrainConfig.from_dict(cfg)
    tasks, nodes = snakemake.resources.get("tasks", 1), snakemake.resources.get("nodes", 1)
    with resumable(snakemake, checkpoint_names(config.experiment).last, rec) as (work, resume):
        if tasks > 1:
            job = dict(config=cfg, shard_dir=snakemake.input.shards, output_dir=str(work),
                       target=rec.device, resume=str(resume) if resume else None,
                       clock_dir=clock_dir(snakemake))  # fmt: skip
            rec.stats = run_ranks("fresnel.decoder.train:train_rank", job, tasks, nodes, work)
        else:
            rec.stats = train(config, snakemake.input.shards, work, rec.device, resume=resume,
                              clock_dir=clock_dir(snakemake))  # fmt: skip
