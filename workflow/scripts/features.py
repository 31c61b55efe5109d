"""Rule features: DINOv2 and depth teacher outputs per image (logic in fresnel.data.features)."""

from fresnel.data.features import run
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = run(
        snakemake.input.images, snakemake.input.dinov2, snakemake.input.depth,
        snakemake.output[0], batch_size=cfg["batch_size"], depth_size=cfg["depth_size"],
        target=rec.device,
    )  # fmt: skip
    if rec.stats.get("note"):
        rec.notes.append(rec.stats["note"])
