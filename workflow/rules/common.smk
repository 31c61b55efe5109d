# Glue shared by every rule: params sections, code dependencies, job environment.
import os

from fresnel.avatars.options import run_options, run_param_paths
from fresnel.device import TARGET_ENV_VAR
from fresnel.pipeline.glue import Section, code_inputs, section

# The target comes from the profile (or $FRESNEL_TARGET), never from params.yaml: the
# device that made an artifact is provenance, not part of its cache key.
os.environ[TARGET_ENV_VAR] = config.get("target", os.environ.get(TARGET_ENV_VAR, "cpu"))
os.environ.update({k: str(v) for k, v in config.get("job_env", {}).items()})


def P(path, *keys):
    """The params.yaml section `path` (e.g. "decoder.train"), or only its `keys`: what a
    rule reads, tracked by Snakemake and DVC."""
    return section(config, path, keys)


def gpu_job(rule):
    """Resources of a GPU rule: one GPU per rank. With tasks > 1 (params.yaml `launch`) the
    job is an `mpi` job: Slurm allocates tasks x nodes and the rule's script starts the ranks
    itself (fresnel.training.launch: srun there, torchrun on one machine)."""
    scale = config.get("launch", {}).get(rule, {"tasks": 1, "nodes": 1})
    if scale["tasks"] == 1:
        return {"gpu": 1}
    return {"gpu": scale["tasks"], "tasks": scale["tasks"], "nodes": scale["nodes"],
            "tasks_per_gpu": 1, "mpi": "srun"}  # fmt: skip


# What `dvc metrics show` and `dvc plots show` present of each rule's outputs
# ({out} = its first output).
DVC_PRESENTATION = {
    "decoder_train": {"plots": [{"{out}/dvclive/plots/metrics": {"x": "step"}}, "{out}/renders.png"]},
    "decoder_evaluate": {"metrics": ["{out}/summary.json"], "plots": ["{out}/held_out.png", "{out}/psnr.png"]},
    "pbr_teacher": {"plots": ["{out}/curves.png"]},
    "pbr_student": {"plots": ["{out}/curves.png"]},
    "pbr_evaluate": {"metrics": ["{out}/summary.json"], "plots": ["{out}/metrics.png"]},
    "avatars_evaluate": {"metrics": ["{out}/summary.json"], "plots": ["{out}/held_out.png"]},
    "avatars_table": {"plots": ["{out}/table.png"]},
    "vpog_train": {"plots": ["{out}/curves.png"]},
    "vpog_evaluate": {"metrics": ["{out}/metrics.json"], "plots": ["{out}/retrieval.png"]},
    "gaze_train": {"plots": ["{out}/curves.png"]},
    "gaze_evaluate": {"metrics": ["{out}/metrics.json"]},
    "gaze_ablation": {"metrics": ["{out}/summary.json"], "plots": ["{out}/table.png"]},
}


def code(script):
    """A rule's code inputs: its adapter script and every fresnel module it imports."""
    return code_inputs(f"workflow/scripts/{script}")


def vlm_density_input(wildcards):
    """The vlm stage's density maps join the shards only when params turn it on."""
    return {"vlm": "data/vlm"} if config["vlm"]["use_vlm"] else {}


def sources(path):
    """Files behind a params value, so editing them reruns the stage: a Python config file
    (`config: configs/pbr/x.py`) or a local folder (`source: local:<dir>`: adding an image
    reruns the stage). `path` is the params section, e.g. "download" or "pbr.dataset"."""

    def inputs(wildcards):
        cfg = P(path)
        value = str(cfg.get("config", cfg.get("source", "")))
        if value.endswith(".py"):
            return {"config_file": value}
        if value.startswith("local:"):
            return {"local_source": value.removeprefix("local:")}
        return {}

    return inputs


# GaussianAvatars (workflow/rules/avatars.smk)
def avatars_data(wildcards):
    """A subject's dataset: rendered by avatars_dataset, or the user's folder (local:<dir>)."""
    source = config["avatars"]["subjects"][wildcards.subject]
    return source.removeprefix("local:") if source.startswith("local:") else f"data/avatars/{wildcards.subject}"


def avatars_run(wildcards):
    avatars = config["avatars"]
    return Section(run_param_paths(avatars, wildcards.avatar_run), run_options(avatars, wildcards.avatar_run))


def gaze_variant(wildcards):
    """`gaze.train` with one ablation variant's changes on top."""
    gaze = config["gaze"]
    variant = wildcards.gaze_variant
    return Section(["gaze.train", f"gaze.variants.{variant}"], {**gaze["train"], **gaze["variants"][variant]})


def avatars_table(wildcards):
    return Section([f"avatars.tables.{wildcards.table}"], {"runs": config["avatars"]["tables"][wildcards.table]})
