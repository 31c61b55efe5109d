"""Rule vpog_templates: icosphere templates and the mesh of every object (fresnel.vpog.templates)."""

from fresnel.pipeline.adapter import stage
from fresnel.vpog.synthetic import render_object_templates

with stage(snakemake) as rec:
    rec.stats = render_object_templates(snakemake.params.objects["objects"], snakemake.output[0],
                                        **snakemake.params.cfg)  # fmt: skip
