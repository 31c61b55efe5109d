"""Rule pbr_student: distil the student from the teacher shards (fresnel.pbr.distill)."""

from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.distill import train_student
from fresnel.pbr.student_config import apply_overrides, get_student_config
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    config = apply_overrides(get_student_config(cfg["config"]), cfg.get("overrides", {}))
    input_dir, output_dir = dataset_dirs(snakemake.input.data)
    rec.stats = train_student(
        config, snakemake.input.shards, input_dir, output_dir, snakemake.output[0],
        device=rec.device,
    )  # fmt: skip
