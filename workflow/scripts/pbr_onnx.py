"""Rule pbr_onnx: the student as ONNX, written only if it matches torch (fresnel.pbr.onnx_export)."""

from fresnel.pbr.distill import STUDENT_CHECKPOINTS
from fresnel.pbr.onnx_export import export_onnx
from fresnel.pipeline.adapter import stage
from fresnel.training import final_checkpoint

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = export_onnx(
        final_checkpoint(snakemake.input.student, STUDENT_CHECKPOINTS), snakemake.output[0],
        opset=cfg["opset"], atol=cfg["atol"],
    )  # fmt: skip
