"""Rule skeleton_train: the toy denoiser; a killed job resumes on the rerun."""

from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable
from fresnel.skeleton.train import NAMES, ToyConfig, train

with stage(snakemake) as rec, resumable(snakemake, NAMES.last, rec) as (work, resume):
    config = ToyConfig.from_dict(snakemake.params.cfg)
    rec.stats = {"epochs": train(config, work, snakemake.input.data, resume).epoch}
