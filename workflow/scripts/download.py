"""Rule download: fetch images and write the manifest (logic in fresnel.data.download)."""

from fresnel.data.download import run
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = run(
        source=cfg["source"], out_dir=snakemake.output[0], count=cfg["count"], seed=cfg["seed"],
        min_size=cfg["min_size"], on_bad_image=cfg["on_bad_image"], datasets=cfg["datasets"],
    )  # fmt: skip
