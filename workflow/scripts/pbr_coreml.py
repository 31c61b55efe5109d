"""Rule pbr_coreml: the student as a Core ML .mlpackage (fresnel.pbr.coreml)."""

from pathlib import Path

from fresnel.pbr.coreml import convert
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = convert(
        Path(snakemake.input.student) / "latest_student.pth", snakemake.output[0],
        fp16=cfg["fp16"], palettization=cfg["palettization"],
        test_resolution=cfg["test_resolution"], use_sr=cfg["use_sr"],
        minimum_ios=cfg["minimum_ios"],
    )  # fmt: skip
