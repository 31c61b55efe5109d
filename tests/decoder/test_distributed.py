"""Data-parallel decoder training: 2 gloo ranks launched by torchrun take the step one process
takes on the global batch (to float rounding), equal the emulated 2-rank run to the bit, hold
identical weights, and resume exactly."""

import os
import socket
import subprocess
import sys

import pytest
import torch
from test_decoder_training import make_shards, small_config

from fresnel.data.shards import ShardStream
from fresnel.decoder.train import Trainer, batches, checkpoint_names, train
from fresnel.device import deterministic_on_cpu
from fresnel.training.distributed import (
    DistributedSetupError,
    EmulatedWorld,
    World,
    from_environment,
    init,
)

# 7 images: 2 held out, 5 trained in global batches of 4 and 1, so the last batch leaves
# rank 1 without items (it must still join the gradient sum, counted zero times).
SETTINGS = dict(val_fraction=0.25, batch_size=4, ssim_weight=0.2)
LAST = checkpoint_names(2).last


def torchrun(shards, out, epochs: int, *extra: str) -> subprocess.CompletedProcess:
    config = small_config(epochs=epochs, **SETTINGS)
    flags = [f"--{k}={getattr(config, k)}" for k in (
        "experiment", "gaussians_per_patch", "epochs", "batch_size", "lr", "image_size",
        "save_interval", "ssim_weight", "val_fraction")]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               "--standalone", "-m", "fresnel.cli", "train_gaussian_decoder",
               f"--data_dir={shards}", f"--output_dir={out}", "--target=cpu", *flags, *extra]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def weights(path) -> dict:
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    shards = make_shards(root, count=7)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each of its ranks
    deterministic_on_cpu()  # as every rank process does
    try:
        emulated = train(small_config(epochs=2, **SETTINGS), shards, root / "emulated",
                         world=EmulatedWorld(0, 2))  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    two = torchrun(shards, root / "two", 2)
    return root, shards, emulated, two


def step_gradients(shards, out, world: World, batch_index: int) -> list[torch.Tensor]:
    """The gradients one train_step applies to the `batch_index`-th global batch of epoch 1."""
    trainer = Trainer(small_config(**SETTINGS), shards, out, "cpu", world)
    batch = list(batches(ShardStream(shards), trainer.train_ids, 4))[batch_index]
    seen = []

    def record_then_apply(optimizer, params=None, clip=None):
        seen.extend(torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params)
        return apply(optimizer, params, clip)

    apply, trainer.amp.apply = trainer.amp.apply, record_then_apply
    trainer.train_step(batch, trainer.plan(0), torch.Generator().manual_seed(0))
    return seen


def _rank(rank: int, shards, out, port: int) -> None:
    env = {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}  # fmt: skip
    os.environ.update(env)
    world = init(torch.device("cpu"), env)
    grads = [step_gradients(shards, out / f"rank{rank}", world, i) for i in (0, 1)]
    torch.save(grads, out / f"grads{rank}.pt")
    world.close()


@pytest.mark.parametrize("batch_index", [0, 1], ids=["4 items 2+2", "1 item 1+0"])
def test_two_gloo_ranks_take_the_step_one_process_takes_on_the_global_batch(runs, batch_index):
    root, shards, _, _ = runs
    out = root / "grads"
    if not (out / "grads1.pt").is_file():
        out.mkdir(exist_ok=True)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        torch.multiprocessing.spawn(_rank, args=(shards, out, port), nprocs=2)
    one = step_gradients(shards, out / "single", World(), batch_index)
    scale = max(float(g.abs().max()) for g in one)
    for rank in (0, 1):
        two = torch.load(out / f"grads{rank}.pt", weights_only=True)[batch_index]
        assert len(two) == len(one)
        assert all(
            torch.allclose(a, b, rtol=1e-5, atol=1e-6 * scale)
            for a, b in zip(one, two, strict=True)
        )


def test_torchrun_training_is_the_emulated_two_rank_run_to_the_bit(runs):
    """One process computing both ranks' shares in rank order and summing them as the
    all-reduce does (EmulatedWorld) is the ranks' arithmetic: every checkpoint and logged
    value equal, on any CPU. (A plain 1-process run differs by summation order, which Adam
    and the top-k selection amplify: no fixed tolerance holds on every machine.)"""
    root, _, emulated, _ = runs
    for name in ("decoder_exp2_epoch1.pt", LAST):
        one, two = weights(root / "emulated" / name), weights(root / "two" / name)
        assert one.keys() == two.keys() and all(torch.equal(one[n], two[n]) for n in one), name
    history = torch.load(root / "two" / LAST, weights_only=True)["history"]
    assert history == torch.load(emulated["checkpoint"], weights_only=True)["history"]


def test_every_rank_ends_with_the_same_weights_and_only_rank_0_writes(runs):
    root, _, _, two = runs
    log = two.stdout + two.stderr
    assert log.count("weights identical on all 2 ranks") == 2, log[-3000:]
    assert (root / "two" / "gaussian_decoder_exp2.onnx").is_file()
    assert sorted(p.name for p in (root / "two").glob("*.pt")) == sorted(
        [LAST, checkpoint_names(2).best, "decoder_exp2_epoch1.pt", "decoder_exp2_epoch2.pt"]
    )


def test_a_ddp_run_resumes_exactly(runs):
    root, shards, _, _ = runs
    out = root / "resumed"
    torchrun(shards, out, 1)
    torchrun(shards, out, 2, f"--resume={out / LAST}")
    resumed, uninterrupted = weights(out / LAST), weights(root / "two" / LAST)
    assert all(torch.equal(resumed[n], uninterrupted[n]) for n in uninterrupted)


def test_launchers_are_read_from_the_environment():
    assert from_environment({}) == World()
    torchrun_env = {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}
    assert from_environment(torchrun_env) == World(1, 4, 1)
    slurm_env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert from_environment(slurm_env) == World(5, 8, 1)
    assert from_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == World()
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR and MASTER_PORT not set"):
        init(torch.device("cpu"), slurm_env)


def test_shares_cover_a_batch_once_in_order():
    for n in range(0, 9):
        for size in (1, 2, 3):
            parts = [World(r, size).share(n) for r in range(size)]
            assert [i for p in parts for i in range(n)[p]] == list(range(n))


def test_the_launcher_is_srun_in_a_slurm_job_and_torchrun_elsewhere():
    from fresnel.training.launch import LaunchError, launcher

    command, env = launcher(4, 2, {"SLURM_JOB_ID": "7"})
    assert command[:3] == ["srun", "--ntasks=4", "--nodes=2"]
    assert env["MASTER_ADDR"] == socket.gethostname() and int(env["MASTER_PORT"]) > 0
    command, env = launcher(2, 1, {})
    assert command[1:4] == ["-m", "torch.distributed.run", "--standalone"]
    assert env["OMP_NUM_THREADS"] == str(max(1, torch.get_num_threads() // 2))  # a share each
    assert "--nproc_per_node=2" in command
    with pytest.raises(LaunchError, match="nodes=2 needs a Slurm allocation"):
        launcher(4, 2, {})
