"""Rule pbr_dataset: materials and three-view renders in the guide's layout (fresnel.pbr)."""

from fresnel.pbr.synth import prepare_dataset
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = prepare_dataset(
        snakemake.output[0], cfg["source"], cfg["n_materials"], cfg["samples_per_material"],
        cfg["size"], cfg["dirty"], cfg["seed"],
    )  # fmt: skip
