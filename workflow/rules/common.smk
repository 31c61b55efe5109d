# Glue shared by every rule: params sections, code dependencies, job environment.
import os

from fresnel.device import TARGET_ENV_VAR
from fresnel.pipeline.glue import Section, code_inputs, section

# The target comes from the profile (or $FRESNEL_TARGET), never from params.yaml: the
# device that made an artifact is provenance, not part of its cache key.
os.environ[TARGET_ENV_VAR] = config.get("target", os.environ.get(TARGET_ENV_VAR, "cpu"))
os.environ.update({k: str(v) for k, v in config.get("job_env", {}).items()})


# Threads per job. Snakemake caps them at --cores and runs jobs side by side only while their
# threads fit; each job computes on exactly its count (fresnel.device.use_threads: torch,
# OpenMP, BLAS, onnxruntime). Rules that run a network or a renderer take MODEL_THREADS;
# downloads, conversions and tables take one. On the CPU target that is one too: jobs side
# by side beat threads within a job (with 4, capped at 2 on a 2-core machine, the demo took
# 1.64x as long: benchmarks/README.md); a GPU job's threads feed its GPU.
# `--set-threads RULE=N` overrides a rule.
MODEL_THREADS = 1 if os.environ[TARGET_ENV_VAR] == "cpu" else 4


def P(path, *keys):
    """The params.yaml section `path` (e.g. "decoder.train"), or only its `keys`: what a
    rule reads, tracked by Snakemake and DVC. A path with wildcards ("gaze.variants.{gaze_variant}")
    gives a function of the job's wildcards."""
    if "{" in path:
        return lambda wildcards: section(config, path.format(**wildcards), keys)
    return section(config, path, keys)


def merged(*paths):
    """Several sections (paths may hold wildcards), later ones overriding earlier keys: what a
    job reads when it is a base section with changes (e.g. an ablation variant)."""

    def values(wildcards):
        named = [path.format(**wildcards) for path in paths]
        combined = {}
        for path in named:
            combined.update(section(config, path))
        return Section(named, combined)

    return values


def local_or(source, built):
    """A `local:<dir>` params value's folder, else `built` (the output of the stage that makes it)."""
    return source.removeprefix("local:") if source.startswith("local:") else built


def gpu_job(rule):
    """Resources of a GPU job, one GPU per rank, with the profile's `gpu_jobs` (the Slurm
    profile's partition and sizes). Every GPU rule declares itself with this.
    With tasks > 1 (params.yaml `launch`) the job is an `mpi` job: Slurm allocates tasks x
    nodes and the rule's script starts the ranks itself (fresnel.training.launch: srun
    there, torchrun on one machine)."""
    scale = config.get("launch", {}).get(rule, {"tasks": 1, "nodes": 1})
    site = {key: value for key, value in config.get("gpu_jobs", {}).items() if value}
    if scale["tasks"] == 1:
        return {"gpu": 1, **site}
    return {"gpu": scale["tasks"], "tasks": scale["tasks"], "nodes": scale["nodes"],
            "tasks_per_gpu": 1, "mpi": "srun", **site}  # fmt: skip


def code(script):
    """A rule's code inputs: its adapter script and every fresnel module it imports."""
    return code_inputs(f"workflow/scripts/{script}")


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
