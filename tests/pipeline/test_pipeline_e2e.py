"""End to end: the demo DAG offline, and Snakemake and DVC agreeing about what is stale."""

import hashlib
import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml

from support.workspace import (
    assert_docs_show_the_tables_of,
    dvc_stale,
    make_workspace,
    nothing_to_do,
    processes_running,
    run,
    set_param,
    snakemake_plan,
    start,
)

pytestmark = pytest.mark.slow
PBR_TARGETS = "results/pbr_student.mlpackage results/pbr_student.onnx results/pbr_eval"
DECODER_TARGETS = "results/decoder_exp2.onnx results/decoder_exp2_eval"
DEMO_TARGETS = f"{DECODER_TARGETS} {PBR_TARGETS}"
STUDENT = {"training": {"val_ratio": 0.25, "epochs": 20}}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo DAG run once by snakemake: the NeuroPBR chain from its .mlpackage target,
    then everything `make demo` builds."""
    ws = make_workspace(tmp_path_factory.mktemp("demo") / "ws")
    # the demo's schedules, shortened (these tests rerun them); at 20 epochs teacher and
    # student still beat the mean-map baseline by 0.9-22 dB (2026-12-07)
    set_param(ws, "decoder.train.epochs", 2)
    set_param(
        ws, "pbr.teacher.overrides", {"data": {"val_ratio": 0.25}, "training": {"epochs": 20}}
    )
    set_param(ws, "pbr.student.overrides", STUDENT)
    run("git commit -qam 'short schedule'", ws)
    run("snakemake --profile cpu results/pbr_student.mlpackage", ws)
    run(f"snakemake --profile cpu {DEMO_TARGETS}", ws)  # what `make demo` runs
    return ws


DOWNSTREAM_OF_SHARDS = {"shards", "decoder_train", "decoder_export", "decoder_evaluate"}


def test_demo_produces_decoder_onnx_evaluation_and_provenance(demo):
    manifest = json.loads((demo / "data/shards/manifest.json").read_text())
    assert manifest["count"] == 16 and manifest["dtype"] == "float16"
    assert (demo / "results/decoder_exp2.onnx").is_file()
    metrics = json.loads((demo / "results/decoder_exp2_eval/summary.json").read_text())
    assert metrics["held_out"] == 4
    record = json.loads((demo / "provenance/features.json").read_text())
    assert record["device"] == "cpu" and record["git_revision"] != "unknown"
    assert (record["threads"], record["ranks"], record["nodes"]) == (1, 1, 1)  # cpu target
    assert json.loads((demo / "provenance/download.json").read_text())["threads"] == 1
    assert record["params"]["cfg"] == {"batch_size": 4, "depth_size": 256}


def test_demo_density_maps_come_from_the_offline_provider_into_the_shards(demo):
    index = json.loads((demo / "data/vlm/index.json").read_text())
    providers = {entry["provider"] for entry in index["items"].values()}
    assert providers <= {"offline:lbp-face", "offline:saliency"} and len(index["items"]) == 16
    assert index["items"]["sample_astronaut"]["branch"] == "smart-face"
    manifest = json.loads((demo / "data/shards/manifest.json").read_text())
    assert manifest["vlm_density"] and manifest["tensors"]["vlm_density"] == [64, 64]
    train = json.loads((demo / "provenance/decoder_train-2.json").read_text())
    assert train["params"]["cfg"]["use_vlm_guidance"] is True


def test_pbr_chain_exports_the_student_and_both_models_beat_the_baseline(demo):
    from fresnel.pbr.coreml import inspect_package

    spec = inspect_package(demo / "results/pbr_student.mlpackage")
    assert spec["specification_version"] == 8  # iOS 17
    assert [v["color"] for v in spec["inputs"].values()] == ["RGB"] * 3
    assert {(v["width"], v["height"]) for v in spec["inputs"].values()} == {(32, 32)}
    assert spec["weight_dtypes"].get("fp32", 0) == 0
    assert (demo / "results/pbr_student.onnx").is_file()
    models = json.loads((demo / "results/pbr_eval/summary.json").read_text())["models"]
    baseline = models["mean-map baseline"]
    for name in ("teacher", "student"):
        for metric in ("albedo_psnr", "roughness_psnr", "metallic_psnr", "rerender_psnr"):
            assert models[name][metric] > baseline[metric], (name, metric)
    assert "| teacher |" in (demo / "results/pbr_eval/table.md").read_text()


def test_the_doc_pages_show_these_tables(demo):
    assert_docs_show_the_tables_of(demo, "decoder.md")
    assert_docs_show_the_tables_of(demo, "pbr.md")


def test_student_param_edit_reruns_only_the_student_side(demo):
    set_param(demo, "pbr.student.overrides", {"training": {"val_ratio": 0.25, "epochs": 19}})
    assert dvc_stale(demo) == {"pbr_student"}
    assert snakemake_plan(demo) == {"pbr_student", "pbr_coreml", "pbr_onnx", "pbr_evaluate"}
    set_param(demo, "pbr.student.overrides", STUDENT)
    assert dvc_stale(demo) == set() and nothing_to_do(demo)


def test_snakemake_run_leaves_dvc_clean(demo):
    assert dvc_stale(demo) == set()
    assert nothing_to_do(demo)


def test_param_edit_reruns_only_dependents_then_run_cache_restores(demo):
    set_param(demo, "shards.shard_size", 3)
    assert dvc_stale(demo) == {"shards"}
    assert snakemake_plan(demo) == DOWNSTREAM_OF_SHARDS

    repro = run("dvc repro", demo).stdout
    assert re.findall(r"Running stage '([^']+)'", repro) == [
        "shards", "decoder_train-2", "decoder_export-2", "decoder_evaluate-2"
    ]  # fmt: skip
    assert dvc_stale(demo) == set() and nothing_to_do(demo)
    assert len(json.loads((demo / "data/shards/manifest.json").read_text())["shards"]) == 6

    set_param(demo, "shards.shard_size", 4)
    repro = run("dvc repro", demo).stdout
    assert "Running stage" not in repro
    for stage in ("shards", "decoder_train-2", "decoder_export-2", "decoder_evaluate-2"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in repro
    assert len(json.loads((demo / "data/shards/manifest.json").read_text())["shards"]) == 4
    assert dvc_stale(demo) == set() and nothing_to_do(demo)


def test_training_param_edit_reruns_train_export_evaluate_only(demo):
    set_param(demo, "decoder.train.lr", 0.001)
    repro = run("dvc repro", demo).stdout
    assert re.findall(r"Running stage '([^']+)'", repro) == [
        "decoder_train-2", "decoder_export-2", "decoder_evaluate-2"
    ]  # fmt: skip
    assert dvc_stale(demo) == set() and nothing_to_do(demo)


def test_adding_an_image_computes_features_for_it_only(demo):
    set_param(demo, "download.count", 17)
    run("snakemake --profile cpu", demo)
    stats = json.loads((demo / "provenance/features.json").read_text())["stats"]
    assert (stats["images"], stats["computed"], stats["model_runs"]) == (17, 1, 1)
    assert dvc_stale(demo) == set() and nothing_to_do(demo)


def test_a_release_of_the_decoder_targets_pulls_into_a_fresh_clone_with_nothing_to_do(
    demo, tmp_path
):
    """With the NeuroPBR chain stale (an edited param), `fresnel release` of the decoder's
    targets checks and pushes their chain alone; a clone at the tag pulls it and has nothing
    to do for those targets in either tool."""
    run(f"dvc remote add -d store {tmp_path / 'remote'}", demo)
    set_param(demo, "pbr.evaluate.heldout_lights", 3)
    run("git add -A && git commit -qm 'results; pbr edited, not rebuilt'", demo)
    targets = DECODER_TARGETS
    out = run(f"fresnel release decoder-v1 {targets}", demo, env={"FRESNEL_TARGET": "cpu"})
    assert "pbr_evaluate" in out.stdout.split("not in this release: ")[1]

    clone = tmp_path / "clone"
    run(f"git clone -q {demo} {clone} && cd {clone} && git checkout -q decoder-v1", tmp_path)
    run("dvc pull --allow-missing", clone)
    assert (clone / "results/decoder_exp2.onnx").is_file() and not (
        clone / "results/pbr_eval"
    ).exists()
    chain = {"download", "matte", "features", "vlm", "shards", "decoder_train-2",
             "decoder_export-2", "decoder_evaluate-2"}  # fmt: skip
    assert not chain & dvc_stale(clone)
    plan = run(f"snakemake -n {targets}", clone)
    assert "Nothing to be done" in plan.stdout + plan.stderr
    count = yaml.safe_load((clone / "params.yaml").read_text())["download"]["count"]
    set_param(clone, "download.count", count + 1)  # a rule without inputs, restored by the pull
    assert "download" in dvc_stale(clone)
    assert {"download", "matte", "features"} <= snakemake_plan(clone)
    set_param(demo, "pbr.evaluate.heldout_lights", 4)
    run("git commit -qam 'pbr as before'", demo)


def file_digests(folder) -> dict[str, str]:
    """sha256 of every file under `folder` (Snakemake's timestamp marker left out)."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".snakemake_timestamp"}  # fmt: skip


def test_a_killed_run_resumes_on_the_plain_rerun_and_ends_byte_identical(demo):
    """SIGKILL everything the snakemake command started (snakemake and its decoder_train job,
    as a lost terminal would) after the first epoch: no hook runs and the lock stays. The
    same command again removes the dead run's lock, resumes at epoch 2 and ends with the
    uninterrupted run's bytes: the same DVC hash for every output of the decoder chain (wall
    clock goes to logs/), so nothing downstream is stale; while it runs, a second
    invocation is refused. Runs last: it rebuilds decoder_train and leaves both tools clean."""
    final = demo / "results/decoder_exp2/decoder_exp2_last.pt"
    uninterrupted = final.read_bytes()  # the fixture's run: 2 epochs, never interrupted
    files = file_digests(final.parent)  # to name the files that differ, should any
    hashes = output_hashes(demo)
    command = "snakemake --profile cpu results/decoder_exp2 --forcerun decoder_train"
    first = start(command, demo)
    deadline = time.monotonic() + 300
    while not list(demo.glob(".fresnel-runs/decoder_train-2-*/decoder_exp2_last.pt")):
        assert first.poll() is None and time.monotonic() < deadline, "no epoch finished"
        time.sleep(0.05)
    for pid in processes_running("", session=first.pid):
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=60)
    assert list(demo.glob(".snakemake/locks/*.lock")), "the killed run left no lock"
    assert not final.parent.exists()  # killed inside epoch 2: the output was never made

    rerun = start(command, demo, stdout=subprocess.PIPE)  # the same command, no extra flag
    while not processes_running("decoder_train.py", session=rerun.pid):
        assert rerun.poll() is None, rerun.communicate()[0]
        time.sleep(0.05)
    second = run(command, demo, check=False)
    assert second.returncode != 0, "a second run started beside a live one"
    assert "another snakemake run holds this directory's lock" in second.stderr
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output[-3000:]
    assert "removed the lock left by a killed snakemake run" in output
    log = (demo / "logs/decoder_train_exp2.log").read_text()
    assert "resuming the unfinished run" in log and "after epoch 1" in log, log
    assert final.read_bytes() == uninterrupted
    changed = {
        name for name, digest in file_digests(final.parent).items() if files.get(name) != digest
    }
    assert not changed, f"the resumed run's files differ from the uninterrupted run's: {changed}"
    assert not list(demo.glob(".fresnel-runs/decoder_train-2-*"))
    record = json.loads((demo / "provenance/decoder_train-2.json").read_text())
    assert record["stats"]["checkpoint"] == "results/decoder_exp2/decoder_exp2_last.pt"
    assert dvc_stale(demo) == set() and nothing_to_do(demo), output[-3000:]
    assert output_hashes(demo) == hashes
    assert json.loads((demo / "logs/decoder_train_exp2/timings.json").read_text())["epochs"][1]


def output_hashes(ws) -> dict[str, str]:
    """The DVC hash of every stage output in `ws`'s dvc.lock."""
    stages = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    return {out["path"]: out["md5"] for stage in stages.values() for out in stage.get("outs", [])}


def test_decoder_train_on_two_torchrun_ranks_in_the_rule(demo):
    """params.yaml `launch` tasks: 2 on one machine: the rule starts 2 gloo ranks through
    torchrun; they end with identical weights, close to the 1-process run (see
    tests/test_slurm.py for the tolerance), and the tools stay in agreement (`launch` is
    not a stage parameter). Runs after the killed-job test, whose bytes it changes."""
    import torch

    final = demo / "results/decoder_exp2/decoder_exp2_last.pt"
    single = torch.load(final, weights_only=True)["model"]
    run("snakemake --profile cpu results/decoder_exp2 --forcerun decoder_train "
        "--config 'launch={decoder_train: {tasks: 2, nodes: 1}}'", demo)  # fmt: skip
    log = (demo / "logs/decoder_train_exp2.log").read_text()
    assert "starting 2 ranks on 1 node(s): " in log and "torch.distributed.run" in log
    assert len(re.findall(r"rank \d: weights identical on all 2 ranks", log)) == 2, log
    record = json.loads((demo / "provenance/decoder_train-2.json").read_text())
    assert (record["ranks"], record["nodes"]) == (2, 1)
    ranks = torch.load(final, weights_only=True)["model"]
    difference = sum(float((single[k] - ranks[k]).double().norm() ** 2) for k in single) ** 0.5
    assert difference / sum(float(v.double().norm() ** 2) for v in single.values()) ** 0.5 < 1e-2
    assert dvc_stale(demo) == {"decoder_export-2", "decoder_evaluate-2"}
