# Fresnel pipelines. Build one artifact on one target:
#   snakemake --profile rocm results/decoder_exp2.onnx
#   snakemake --profile cpu results/pbr_student.mlpackage
#   snakemake --profile cpu results/avatars/synthetic/ablation
#   snakemake --profile cpu results/gaze/ablation
# params.yaml holds every tunable; profiles/ only choose the target and executor. The model
# families (their rule files, and what `rule all` builds) come from fresnel.registry.
from fresnel.params import ordered_like, parse_command_line_values, read_yaml, validate
from fresnel.pipeline.glue import (
    commit_to_dvc,
    report_failures,
    sync_from_dvc,
    write_overrides_to_params,
)
from fresnel.pipeline.locks import stop_jobs_on_signals
from fresnel.pipeline.profile import with_profile_config
from fresnel.pipeline.slurm_site import refuse_impossible_jobs
from fresnel.registry import families, params_checks, rule_files


on_file = read_yaml("params.yaml")  # a syntax error names its line (Snakemake's does not)


configfile: "params.yaml"


config.update(ordered_like(parse_command_line_values(config), on_file))
with_profile_config(config)  # a --config on the command line replaces the profile's whole
validate(config, source="params.yaml (with --config overrides)", checks=params_checks())


include: "workflow/rules/common.smk"


for rules in rule_files():

    include: rules


sync_from_dvc(workflow)


rule all:
    input:
        [target for family in families() for target in family.all_targets(config)],
    default_target: True


onstart:
    refuse_impossible_jobs(workflow)
    stop_jobs_on_signals(workflow)
    write_overrides_to_params(workflow, config)


onsuccess:
    commit_to_dvc(workflow)


onerror:
    report_failures(workflow)
    commit_to_dvc(workflow)  # the jobs that finished before the failure
