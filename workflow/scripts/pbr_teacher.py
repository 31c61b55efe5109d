"""Rule pbr_teacher: train MultiViewPBRGenerator (logic in fresnel.pbr.train). Trains in a
work folder that survives a killed job; a rerun resumes (fresnel.pipeline.resume).
Wall-clock (TensorBoard events, epoch seconds) goes beside the log, out of the tracked output."""

from fresnel.pbr.config import apply_overrides, get_config
from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.train import TEACHER_CHECKPOINTS, train
from fresnel.pipeline.adapter import clock_dir, stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    config = apply_overrides(get_config(cfg["config"]), cfg.get("overrides", {}))
    input_dir, output_dir = dataset_dirs(snakemake.input.data)
    with resumable(snakemake, TEACHER_CHECKPOINTS.last, rec) as (work, resume):
        rec.stats = train(config, input_dir, output_dir, work, resume=resume, device=rec.device,
                          clock_dir=clock_dir(snakemake))  # fmt: skip
