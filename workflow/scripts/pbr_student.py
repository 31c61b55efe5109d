"""Rule pbr_student: distil the student from the teacher shards (fresnel.pbr.distill). Trains
in a work folder that survives a killed job; a rerun resumes (fresnel.pipeline.resume).
Wall-clock (TensorBoard events, epoch seconds) goes beside the log, out of the tracked output."""

from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.distill import STUDENT_CHECKPOINTS, train_student
from fresnel.pbr.student_config import apply_overrides, get_student_config
from fresnel.pipeline.adapter import clock_dir, stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    config = apply_overrides(get_student_config(cfg["config"]), cfg.get("overrides", {}))
    input_dir, output_dir = dataset_dirs(snakemake.input.data)
    with resumable(snakemake, STUDENT_CHECKPOINTS.last, rec) as (work, resume):
        rec.stats = train_student(
            config, snakemake.input.shards, input_dir, output_dir, work, resume=resume,
            device=rec.device, clock_dir=clock_dir(snakemake),
        )  # fmt: skip
