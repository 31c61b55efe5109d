"""Rule pbr_onnx: the student as ONNX, written only if it matches torch (fresnel.pbr.onnx_export)."""

from pathlib import Path

from fresnel.pbr.onnx_export import export_onnx
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = export_onnx(
        Path(snakemake.input.student) / "latest_student.pth", snakemake.output[0],
        opset=cfg["opset"], atol=cfg["atol"],
    )  # fmt: skip
