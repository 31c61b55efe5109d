# Fresnel pipelines. Build one artifact on one target:
#   snakemake --profile rocm data/shards
# params.yaml holds every tunable; profiles/ only choose the target and executor.
from fresnel.params import validate
from fresnel.pipeline.glue import sync_from_dvc, commit_to_dvc


configfile: "params.yaml"


validate(config, source="params.yaml (with --config overrides)")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


sync_from_dvc(workflow)


rule all:
    input:
        "data/shards",
    default_target: True


onsuccess:
    commit_to_dvc(workflow, log)
