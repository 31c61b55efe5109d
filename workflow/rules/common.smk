# Glue shared by every rule: params sections, code dependencies, job environment.
import os

from fresnel.device import TARGET_ENV_VAR
from fresnel.pipeline.glue import code_inputs, section

# The target comes from the profile (or $FRESNEL_TARGET), never from params.yaml: the
# device that made an artifact is provenance, not part of its cache key.
os.environ[TARGET_ENV_VAR] = config.get("target", os.environ.get(TARGET_ENV_VAR, "cpu"))
os.environ.update({k: str(v) for k, v in config.get("job_env", {}).items()})


def P(path):
    """The params.yaml section `path` (e.g. "download"), tracked by Snakemake and DVC."""
    return section(config, path)


def code(script):
    """A rule's code inputs: its adapter script and every fresnel module it imports."""
    return code_inputs(f"workflow/scripts/{script}")


def vlm_density_input(wildcards):
    """The vlm stage's density maps join the shards only when params turn it on."""
    return {"vlm": "data/vlm"} if config["vlm"]["use_vlm"] else {}


def pbr_sources(section):
    """Files behind a `pbr.<section>` value, so editing them reruns the stage: a Python
    config file (`config: configs/pbr/x.py`) or a local dataset (`source: local:<dir>`)."""

    def inputs(wildcards):
        cfg = config["pbr"][section]
        value = str(cfg.get("config", cfg.get("source", "")))
        if value.endswith(".py"):
            return {"config_file": value}
        if value.startswith("local:"):
            return {"local_dataset": value.removeprefix("local:")}
        return {}

    return inputs
