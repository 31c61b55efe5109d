"""Rule pbr_evaluate: teacher and student vs the mean-map baseline on held-out materials."""

from fresnel.pbr.distill import STUDENT_CHECKPOINTS
from fresnel.pbr.evaluate import evaluate_models
from fresnel.pbr.train import TEACHER_CHECKPOINTS
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    rec.stats = evaluate_models(
        snakemake.input.data, final_checkpoint(snakemake.input.teacher, TEACHER_CHECKPOINTS),
        final_checkpoint(snakemake.input.student, STUDENT_CHECKPOINTS), snakemake.output[0],
        snakemake.params.cfg["heldout_lights"], device=rec.device,
    )  # fmt: skip
