"""Rule pbr_evaluate: teacher and student vs the mean-map baseline on held-out materials."""

from pathlib import Path

from fresnel.pbr.evaluate import evaluate_models
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    rec.stats = evaluate_models(
        snakemake.input.data, Path(snakemake.input.teacher) / "latest.pth",
        Path(snakemake.input.student) / "latest_student.pth", snakemake.output[0],
        snakemake.params.cfg["heldout_lights"], device=rec.device,
    )  # fmt: skip
