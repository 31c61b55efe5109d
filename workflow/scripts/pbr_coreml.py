"""Rule pbr_coreml: the student as a Core ML .mlpackage (fresnel.pbr.coreml)."""

from fresnel.pbr.coreml import convert
from fresnel.pbr.distill import STUDENT_CHECKPOINTS
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = convert(
        final_checkpoint(snakemake.input.student, STUDENT_CHECKPOINTS), snakemake.output[0],
        fp16=cfg["fp16"], palettization=cfg["palettization"],
        test_resolution=cfg["test_resolution"], use_sr=cfg["use_sr"],
        minimum_ios=cfg["minimum_ios"],
    )  # fmt: skip
