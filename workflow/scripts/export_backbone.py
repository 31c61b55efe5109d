"""Rule export_backbone: DINOv2 or Depth Anything to ONNX (logic in fresnel.data.backbones)."""

from fresnel.data import backbones
from fresnel.pipeline.adapter import stage

EXPORTERS = {"dinov2": backbones.export_dinov2, "depth": backbones.export_depth}

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    info = EXPORTERS[snakemake.params.kind](
        cfg["source"], snakemake.output[0], opset=cfg["opset"], seed=cfg["seed"]
    )
    rec.stats = info
    if info.get("random_weights"):
        rec.notes.append(info.get("note", "random weights: outputs are not meaningful features"))
