"""Profiles with what users add on the command line: a `--config` keeps the profile's other
config entries (fresnel.pipeline.profile), every GPU rule gets the Slurm profile's `gpu_jobs`
partition and sizes, and a command-line `--set-resources` changes only the rules it names."""

import re

import pytest

from fresnel.pipeline.profile import profile_names, with_profile_config
from support.workspace import REPO, make_workspace, run

GPU_RULES = {"features", "decoder_train", "pbr_teacher", "pbr_teacher_shards", "pbr_student",
             "avatars_train", "vpog_train", "gaze_meshhead", "gaze_estimator", "gaze_vae",
             "gaze_train"}  # fmt: skip


def test_profile_names_come_from_the_command_line_else_the_environment():
    assert profile_names(["snakemake", "--profile", "cuda", "-n"], {}) == ["cuda"]
    assert profile_names(["snakemake", "--profile=slurm"], {}) == ["slurm"]
    assert profile_names(["snakemake"], {"SNAKEMAKE_PROFILE": "rocm"}) == ["rocm"]
    assert profile_names(["snakemake"], {}) == []


def test_a_command_line_config_keeps_the_profiles_target_and_gpu_job_sizes(monkeypatch):
    monkeypatch.chdir(REPO)  # the profiles' links: cpu, cuda, ..., slurm
    config = {"launch": {"decoder_train": {"tasks": 2, "nodes": 1}}}
    assert with_profile_config(config, ["snakemake", "--profile", "cuda"]) == ["target"]
    assert config["target"] == "cuda" and config["launch"]["decoder_train"]["tasks"] == 2

    config = {"target": "cpu", "gpu_jobs": {"slurm_partition": "a100"}}
    added = with_profile_config(config, ["snakemake", "--profile", "slurm"])
    assert config["target"] == "cpu"  # the command line's value wins
    assert config["gpu_jobs"]["slurm_partition"] == "a100" and config["gpu_jobs"]["runtime"] > 0
    assert "gpu_jobs.mem_mb" in added and "target" not in added


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("profiles") / "ws")


def planned_resources(ws, options: str) -> dict[str, dict[str, str]]:
    """Each rule of a dry run of the demo (every family) with the Slurm profile: its
    resources."""
    out = run(f"snakemake --profile slurm -n --forceall $(fresnel demo-targets) {options}", ws)
    rules = re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", out.stdout, re.M)
    return {rule: dict(item.split("=", 1) for item in text.split(", ")) for rule, text in rules}


def test_every_gpu_rule_goes_to_the_gpu_partition_and_set_resources_changes_one_rule(workspace):
    plan = planned_resources(
        workspace,
        "--set-resources decoder_train:runtime=600 --config 'gpu_jobs={slurm_partition: gpu}'",
    )
    assert {rule for rule, res in plan.items() if "gpu" in res} == GPU_RULES
    for rule, res in plan.items():
        if rule in GPU_RULES:
            assert res["slurm_partition"] == "gpu" and res["gpu"] == "1", rule
            assert (res["mem_mb"], res["cpus_per_task"]) == ("32000", "8"), rule
            assert res["runtime"] == ("600" if rule == "decoder_train" else "240"), rule
        else:
            assert "slurm_partition" not in res and res["cpus_per_task"] == "2", rule
