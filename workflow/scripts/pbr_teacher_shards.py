"""Rule pbr_teacher_shards: the teacher's predictions as fp16 shards (fresnel.pbr.teacher_shards)."""

from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.teacher_shards import teacher_infer
from fresnel.pbr.train import TEACHER_CHECKPOINTS
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    input_dir, output_dir = dataset_dirs(snakemake.input.data)
    rec.stats = teacher_infer(
        final_checkpoint(snakemake.input.teacher, TEACHER_CHECKPOINTS), input_dir, output_dir,
        snakemake.output[0], shard_output_size=cfg["shard_output_size"],
        shard_size=cfg["shard_size"], batch_size=cfg["batch_size"], device=rec.device,
    )  # fmt: skip
