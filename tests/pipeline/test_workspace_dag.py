"""The DAG in fresh workspaces (no demo run needed): local sources, failures and kills that
leave Snakemake and DVC agreeing, bad params, config overrides, the profiles."""

import json
import re
import signal
import subprocess
import time

import pytest
import yaml
from PIL import Image

from support.workspace import (
    REPO,
    dvc_stale,
    processes_running,
    run,
    set_param,
    snakemake_plan,
    start,
)

pytestmark = pytest.mark.slow


def test_a_local_folder_is_a_stage_input_and_a_new_image_is_the_only_one_computed(workspace):
    from skimage import data

    photos = workspace / "photos"
    photos.mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(getattr(data, name)()).save(photos / f"{name}.png")
    set_param(workspace, "download.source", "local:photos")
    run("snakemake --profile cpu data/features", workspace)
    assert "download" not in snakemake_plan(workspace)

    Image.fromarray(data.rocket()).save(photos / "rocket.png")
    assert {"download", "matte", "features"} <= snakemake_plan(workspace)
    run("snakemake --profile cpu data/features", workspace)
    stats = json.loads((workspace / "provenance/features.json").read_text())["stats"]
    assert (stats["images"], stats["computed"]) == (4, 1)


def test_jobs_finished_before_a_failure_are_committed_so_both_tools_agree(workspace):
    """decoder_train fails at start (LPIPS asked for without its backbone file): the jobs
    that finished before it are in dvc.lock, so DVC and Snakemake name the same stale stages."""
    set_param(workspace, "decoder.train.lpips_weight", 0.1)
    out = run("snakemake --profile cpu results/decoder_exp2", workspace, check=False)
    assert out.returncode != 0 and "decoder.train.lpips_backbone" in out.stdout + out.stderr
    stale = dvc_stale(workspace)
    assert not stale & {"download", "matte", "features", "shards"}
    assert {name.split("-")[0] for name in stale} == snakemake_plan(workspace)


def test_jobs_of_a_run_killed_before_its_hook_are_committed_by_the_next_run(workspace):
    """snakemake killed after its jobs finished but before its onsuccess hook (simulated by
    skipping the hooks): the next run has nothing to do, and commits them all the same."""
    from fresnel.pipeline.glue import SKIP_ENV

    run("snakemake --profile cpu data/matted", workspace, env={SKIP_ENV: "1"})
    assert {"download", "matte"} <= dvc_stale(workspace)
    out = run("snakemake --profile cpu data/matted", workspace)
    assert "Nothing to be done" in out.stdout + out.stderr
    assert not {"download", "matte"} & dvc_stale(workspace)


def test_bad_params_fail_before_any_job(workspace):
    set_param(workspace, "decoder.train.lr", "fast")
    set_param(workspace, "matte.colour", "black")
    out = run("snakemake --profile cpu", workspace, check=False)
    assert out.returncode != 0
    assert "decoder.train.lr: 'fast' is not of type 'number'" in out.stderr
    assert "matte.colour: unknown key" in out.stderr
    assert not (workspace / "data").exists()


def test_nested_config_overrides_and_yaml_errors_under_snakemake(workspace):
    run("snakemake --profile cpu -n --config 'decoder={train: {epochs: 5}}'", workspace)
    bad = run("snakemake --profile cpu -n --config 'pbr={teacher: {overrides: {lr: 1}}}'",
              workspace, check=False)  # fmt: skip
    assert bad.returncode != 0 and "pbr.teacher: unknown option 'lr'" in bad.stdout + bad.stderr
    params = workspace / "params.yaml"
    params.write_text(params.read_text().replace("count: 16", "count: [16", 1))
    out = run("snakemake --profile cpu -n", workspace, check=False)
    assert out.returncode != 0 and "params.yaml: not valid YAML" in out.stdout + out.stderr
    assert "line 5, column 10" in out.stdout + out.stderr


def test_profiles_resolve_and_rocm_jobs_see_hsa_override(workspace):
    for profile in ("cpu", "cuda", "rocm", "mps"):
        run(f"snakemake --profile {profile} -n results/decoder_exp2.onnx", workspace)
    run("snakemake --profile rocm data/raw", workspace)
    record = json.loads((workspace / "provenance/download.json").read_text())
    assert record["env"] == {"HSA_OVERRIDE_GFX_VERSION": "11.0.0"}
    assert record["device"] == "cpu"  # a CPU rule runs on the CPU whatever the target


def test_configfile_and_config_values_are_what_dvc_records_and_the_same_command_is_a_no_op(
    workspace,
):
    """The values --configfile and --config give tracked params land in params.yaml (its
    comments kept), so dvc.lock records what the jobs used and both tools stay clean."""
    (workspace / "overlay.yaml").write_text("download: {count: 6}\n")
    command = (
        "snakemake --profile cpu --configfile=overlay.yaml --config 'matte={padding: 0.25}' "
        "-- data/matted"
    )
    out = run(command, workspace)
    assert "params.yaml now holds this run's values (download.count: 6" in out.stderr
    params = (workspace / "params.yaml").read_text()
    assert yaml.safe_load(params)["download"]["count"] == 6
    assert "# 11 scikit-image photos" in params  # comments stay
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    assert lock["download"]["params"]["params.yaml"]["download"]["count"] == 6
    assert lock["matte"]["params"]["params.yaml"]["matte"]["padding"] == 0.25
    assert len(list((workspace / "data/matted/images").iterdir())) == 6
    assert not {"download", "matte"} & dvc_stale(workspace)
    again = run(command.replace("--profile cpu", "-n"), workspace)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert {"download", "matte"}.isdisjoint(snakemake_plan(workspace))


def test_every_paper_overlay_passes_a_dry_run_of_the_command_it_documents(workspace):
    """Each configs/*_paper.yaml names its command; with its datasets' folders in place
    (empty here: a dry run reads none) that command plans the guide-scale jobs."""
    for folder in ("data/neuropbr_renders/input", "data/neuropbr_renders/output"):
        (workspace / folder).mkdir(parents=True)
    overlays = sorted((workspace / "configs").glob("*_paper.yaml"))
    assert len(overlays) == 5
    for overlay in overlays:
        text = overlay.read_text()
        command = re.search(r"^#\s+(snakemake --profile \S+ --configfile=\S+ \S+)$", text, re.M)
        assert command, f"{overlay.name} documents no command"
        for source in re.findall(r"local:(\S+)", text):
            (workspace / source).mkdir(parents=True, exist_ok=True)
        out = run(command.group(1).replace("snakemake", "snakemake -n", 1), workspace)
        assert "This was a dry-run" in out.stdout + out.stderr, overlay.name
    assert (workspace / "params.yaml").read_text() == (REPO / "params.yaml").read_text()


def test_sigterm_stops_the_running_job_now_and_says_how_to_continue(workspace):
    """Snakemake alone would wait for the running jobs to finish (hours, for training)."""
    set_param(workspace, "features.batch_size", 1)  # 16 steps: time to stop it in the middle
    command = start("exec snakemake --profile cpu data/features", workspace, stdout=subprocess.PIPE)
    while not processes_running("features.py", session=command.pid):
        assert command.poll() is None, command.communicate()[0]
        time.sleep(0.05)
    stopped = time.monotonic()
    command.send_signal(signal.SIGTERM)
    output = command.communicate(timeout=60)[0]
    assert time.monotonic() - stopped < 30 and command.returncode != 0
    assert "stopped by SIGTERM: " in output and "rerun the same command to continue" in output
    assert processes_running("", session=command.pid) == []
    assert "features" in snakemake_plan(workspace)
