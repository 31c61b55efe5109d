"""Rule shards: pack teacher outputs and targets into fp16 shards (logic in fresnel.data.shards)."""

from fresnel.data.shards import pack
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = pack(
        snakemake.input.images, snakemake.input.features, snakemake.output[0],
        resolution=cfg["resolution"], shard_size=cfg["shard_size"], seed=cfg["seed"],
        vlm_dir=snakemake.input.get("vlm"),
    )  # fmt: skip
