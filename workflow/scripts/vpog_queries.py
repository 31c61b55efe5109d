"""Rule vpog_queries: synthetic query shards of one split in the BOP web-dataset layout
(fresnel.vpog.webdata); each split draws its poses from its own seed."""

from fresnel.pipeline.adapter import stage
from fresnel.vpog.synthetic import write_synthetic_split

with stage(snakemake) as rec:
    rec.stats = write_synthetic_split(snakemake.params.objects["objects"], snakemake.output[0],
                                      snakemake.wildcards.split, **snakemake.params.cfg)  # fmt: skip
