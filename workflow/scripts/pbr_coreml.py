"""Rule pbr_coreml: the student as a Core ML .mlpackage (fresnel.pbr.coreml)."""

from fresnel.pbr.coreml import convert
from fresnel.pbr.distill import STUDENT_CHECKPOINTS
from fresnel.pbr.student_config import CoreMLOptions
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    checkpoint = final_checkpoint(snakemake.input.student, STUDENT_CHECKPOINTS)
    options = CoreMLOptions.from_dict(snakemake.params.cfg)
    rec.stats = convert(checkpoint, snakemake.output[0], options)
