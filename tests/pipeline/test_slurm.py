"""The slurm profile, unmodified but for its site settings, on a real throw-away Slurm cluster
(2 emulated nodes, one fake GPU each; tests/slurm_cluster.py).

One DAG run serves every test. It builds the demo's decoder chain in two halves, so that
each status command meets a real cluster within the CI budget:
- download -> ... -> shards with `squeue` as the status command on a cluster without
  accounting (no slurmdbd: `sacct` would fail there);
- decoder_train (2 DDP ranks over 2 nodes, started by srun) -> export -> evaluate with
  `sacct` on a cluster with slurmdbd + MariaDB;
- then a GPU rule with a target its node cannot serve (cuda here), which must fail fast and
  say why in Snakemake's output and in its own log;
- and, on the first cluster, VPOG's generated `submit_slurm_multinode.sh`, submitted with
  sbatch as the guide says: Lightning DDP over gloo, one task on each of the 2 nodes.
"""

import json
import subprocess
import time

import pytest
import torch
import yaml

from support.slurm_cluster import GPU_SIZES, PARTITION, SITE, SITE_CONFIG, SlurmCluster
from support.workspace import dvc_stale, make_workspace, run, set_param

pytestmark = pytest.mark.slow

DDP = "{decoder_train: {tasks: 2, nodes: 2}}"


def slurm(ws, targets: str, status: str, target: str = "cpu", extra: str = "", check=True,
          site_config: str = SITE_CONFIG):  # fmt: skip
    command = (f"snakemake --profile slurm {targets} --slurm-status-command {status} {SITE} "
               f"--config target={target} 'launch={DDP}' {site_config} {extra}")  # fmt: skip
    # one torch thread in every job and rank (sbatch --export=ALL), as in the emulated run
    result = run(command, ws, check=check, env={"OMP_NUM_THREADS": "1"})
    return result.stdout + result.stderr


def sacct_jobs() -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "--format=JobName,State"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    return [tuple(line.split("|")) for line in out.stdout.splitlines()]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    ws = make_workspace(root / "ws")
    set_param(ws, "decoder.train.epochs", 2)  # the demo's schedule, shortened
    run("git commit -qam 'short schedule'", ws)
    vpog = vpog_job_folder(root / "vpog")
    with SlurmCluster(root / "plain", nodes=2, accounting=False):
        started = time.monotonic()  # the profile without its GPU partition
        impossible = slurm(ws, "data/shards", "squeue", site_config=f"'gpu_jobs={{{GPU_SIZES}}}'",
                           check=False)  # fmt: skip
        impossible = impossible, time.monotonic() - started
        first = slurm(ws, "data/shards", "squeue")
        vpog_job = run("sbatch --wait submit_slurm_multinode.sh", vpog, check=False,
                       env={"MASTER_ADDR": "127.0.0.1"})  # fmt: skip
    with SlurmCluster(root / "accounting", nodes=2, accounting=True):
        second = slurm(ws, "results/decoder_exp2_eval", "sacct")
        plan = run("snakemake -n results/decoder_exp2_eval", ws)
        clean = dvc_stale(ws), "Nothing to be done" in plan.stdout + plan.stderr
        failed = slurm(ws, "data/features", "sacct", target="cuda",
                       extra="--forcerun features", check=False)  # fmt: skip
        jobs = sacct_jobs()
    return dict(ws=ws, first=first, second=second, clean=clean, failed=failed, jobs=jobs,
                vpog=vpog, vpog_job=vpog_job, impossible=impossible)  # fmt: skip


def vpog_job_folder(folder):
    """Tiny VPOG data and the sbatch scripts `fresnel vpog_slurm_scripts` writes for it."""
    from fresnel.vpog.synthetic import render_object_templates, write_synthetic_split

    render_object_templates(["box"], folder / "templates", level=0, image_size=32)
    write_synthetic_split(["box"], folder / "web", "train", {"train": 8}, image_size=32)
    overrides = (
        "machine.accelerator=cpu machine.cpus_per_task=1 machine.precision=32-true "
        f"machine.partition={PARTITION} machine.batch_size=2 machine.num_workers=0 "
        "machine.multinode_nodes=2 max_epochs=1 save_dir=run "
        "'data.dataloader.datasets=[{name:synthetic,web_dir:web,templates_dir:templates}]' "
        "data.dataloader.image_size=32 data.dataloader.patch_size=8 "
        "data.dataloader.num_positive_templates=2 data.dataloader.num_negative_templates=1 "
        "model.embed_dim=32 model.encoder_depth=1 model.num_heads=2 model.cross_depth=1"
    )
    run(f"fresnel vpog_slurm_scripts --output_dir . machine.gpus=1 {overrides}", folder)
    return folder


def record(ws, stage: str) -> dict:
    return json.loads((ws / f"provenance/{stage}.json").read_text())


def test_every_rule_ran_as_a_slurm_job_and_only_gpu_rules_got_a_gpu(cluster_run):
    ws = cluster_run["ws"]
    assert "has been submitted with SLURM jobid" in cluster_run["first"]
    for stage in ("download", "matte", "features", "shards", "decoder_train-2",
                  "decoder_export-2", "decoder_evaluate-2"):  # fmt: skip
        env = record(ws, stage)["env"]
        assert "SLURM_JOB_ID" in env, stage
        # Slurm sets CUDA_VISIBLE_DEVICES for the jobs it gave `--gpus`, and only for them
        assert ("CUDA_VISIBLE_DEVICES" in env) == (stage in ("features", "decoder_train-2")), stage
    assert record(ws, "features")["env"]["CUDA_VISIBLE_DEVICES"] == "0"
    assert {record(ws, s)["device"] for s in ("matte", "features", "decoder_train-2")} == {"cpu"}


def test_a_job_no_node_can_take_ends_the_run_before_any_submission(cluster_run):
    """Without its GPU partition, the profile sends features (a GPU rule) to the default
    partition, whose nodes have no GPU: Slurm would keep it pending (PartitionConfig) for
    ever. The run ends at its start with Slurm's view and the setting to change."""
    out, seconds = cluster_run["impossible"]
    assert ("error: Slurm can never start rule features: it asks for 1 GPU(s) in partition "
            "'cpu' (the cluster's default), whose nodes have none (partitions with GPUs: "
            f"{PARTITION}); set gpu_jobs") in out, out[-3000:]  # fmt: skip
    assert "profiles/slurm/config.yaml (SITE)" in out and "Traceback" not in out
    assert "submitted with SLURM jobid" not in out and seconds < 60


def test_sacct_saw_every_job_of_the_accounting_half_and_the_failure(cluster_run):
    jobs = cluster_run["jobs"]
    assert len(jobs) == 4, jobs  # decoder_train, export, evaluate, the failing features
    assert sorted(state for _, state in jobs) == ["COMPLETED"] * 3 + ["FAILED"]


def test_decoder_train_ran_two_ddp_ranks_on_two_nodes_through_srun(cluster_run):
    log = (cluster_run["ws"] / "logs/decoder_train_exp2.log").read_text()
    assert "starting 2 ranks on 2 node(s): srun --ntasks=2 --nodes=2" in log
    digests = {line.rsplit("sha256 ", 1)[1] for line in log.splitlines()
               if "weights identical on all 2 ranks" in line}  # fmt: skip
    assert len(digests) == 1, log  # both ranks printed, with one digest
    assert not list(cluster_run["ws"].glob("results/decoder_exp2/ranks*.json"))


def test_the_two_rank_result_is_the_emulated_two_rank_run_to_the_bit(cluster_run, tmp_path):
    """2 gloo ranks on 2 Slurm nodes against one process computing both ranks' shares in
    rank order and summing them as the all-reduce does (EmulatedWorld): the same arithmetic,
    so weights and logged values are equal, not close, on any CPU (the ranks and this process
    on one thread each). A plain 1-process run differs by summation order only; that
    difference, amplified by the top-k Gaussian selection, is no tolerance to test against."""
    from fresnel.decoder.train import TrainConfig, train
    from fresnel.device import deterministic_on_cpu
    from fresnel.training.distributed import EmulatedWorld

    ws = cluster_run["ws"]
    params = yaml.safe_load((ws / "params.yaml").read_text())["decoder"]["train"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    deterministic_on_cpu()  # as every rank process does (fresnel.training.distributed.init)
    try:
        emulated = train(TrainConfig.from_dict({**params, "experiment": 2}), ws / "data/shards",
                         tmp_path / "emulated", "cpu", world=EmulatedWorld(0, 2))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    a = torch.load(emulated["checkpoint"], weights_only=True)["model"]
    b = torch.load(ws / "results/decoder_exp2/decoder_exp2_last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ddp = record(ws, "decoder_train-2")["stats"]
    assert (ddp["train_loss"], ddp["val_psnr"]) == (emulated["train_loss"], emulated["val_psnr"])


def test_both_tools_agree_after_the_cluster_run(cluster_run):
    stale, nothing_to_do = cluster_run["clean"]
    assert nothing_to_do  # for the decoder chain
    assert not {s for s in stale if not s.startswith("pbr_")}, stale  # only the unbuilt chain


def test_vpogs_generated_multinode_sbatch_script_trains_with_lightning_ddp(cluster_run):
    folder, job = cluster_run["vpog"], cluster_run["vpog_job"]
    outputs = list(folder.glob("vpog_*.out"))
    assert job.returncode == 0, job.stdout + job.stderr + "".join(p.read_text() for p in outputs)
    script = (folder / "submit_slurm_multinode.sh").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "--gpus-per-node" not in script  # machine.accelerator=cpu
    log = outputs[0].read_text()
    assert "'world_size': 2" in log, log[-3000:]
    assert (folder / "run/checkpoints/last.ckpt").is_file()


def test_a_gpu_rule_whose_target_the_node_cannot_serve_fails_fast_and_says_why(cluster_run):
    out = cluster_run["failed"]
    reason = "features failed: target 'cuda'"
    assert reason in out  # in Snakemake's output, not only in .snakemake/slurm_logs
    assert reason in (cluster_run["ws"] / "logs/features.log").read_text()
