# Fresnel pipelines. Build one artifact on one target:
#   snakemake --profile rocm results/decoder_exp2.onnx
#   snakemake --profile cpu results/pbr_student.mlpackage
#   snakemake --profile cpu results/avatars/synthetic/ablation
#   snakemake --profile cpu results/gaze/ablation
# params.yaml holds every tunable; profiles/ only choose the target and executor.
from fresnel.params import parse_command_line_values, read_yaml, validate
from fresnel.pbr.stage_params import problems as pbr_problems
from fresnel.pipeline.glue import sync_from_dvc, commit_to_dvc, report_failures


read_yaml("params.yaml")  # a syntax error names its line (Snakemake's own message does not)


configfile: "params.yaml"


config.update(parse_command_line_values(config))
validate(config, source="params.yaml (with --config overrides)", checks=[pbr_problems])


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/decoder.smk"
include: "workflow/rules/pbr.smk"
include: "workflow/rules/avatars.smk"
include: "workflow/rules/vpog.smk"
include: "workflow/rules/gaze.smk"


sync_from_dvc(workflow)


rule all:
    input:
        expand("results/decoder_exp{exp}.onnx", exp=config["targets"]["decoder_experiments"]),
        expand("results/decoder_exp{exp}_eval", exp=config["targets"]["decoder_experiments"]),
        ["results/pbr_student.mlpackage", "results/pbr_student.onnx", "results/pbr_eval"]
        if config["targets"]["pbr"]
        else [],
        expand("results/avatars/{subject}/{table}", subject=config["avatars"]["subjects"],
               table=config["targets"].get("avatars", [])),
        ["results/vpog/eval"] if config["targets"].get("vpog") else [],
        ["results/gaze/ablation"] if config["targets"].get("gaze") else [],
    default_target: True


onsuccess:
    commit_to_dvc(workflow)


onerror:
    report_failures(workflow)
    commit_to_dvc(workflow)  # the jobs that finished before the failure
