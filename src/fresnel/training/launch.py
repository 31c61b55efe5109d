"""Start one training function on N processes (ranks) from inside one job.

A training rule with `tasks > 1` (params.yaml `launch`) runs as one process that starts the
ranks: `srun` inside a Slurm allocation (the job was submitted with --ntasks/--nodes, so
srun places the ranks on its nodes, each on its task's CPUs), `torchrun --standalone` on one
machine otherwise (the job's threads shared among the ranks). Each rank runs
`python -m fresnel.training.launch SPEC`, which calls the function named in SPEC with its
keyword arguments; the function joins the process group itself
(`fresnel.training.distributed.init`) and rank 0 returns the stats the job records.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from fresnel.device import THREAD_ENV

log = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The ranks could not be started or one of them failed (the message says which)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launcher(tasks: int, nodes: int, env=os.environ) -> tuple[list[str], dict]:
    """The command that starts `tasks` ranks of the Python arguments appended to it
    (`-m module ...`), and the environment it needs."""
    if "SLURM_JOB_ID" in env:
        # rank 0 runs on the allocation's first node, which is where this job step runs
        rendezvous = {"MASTER_ADDR": socket.gethostname(), "MASTER_PORT": str(free_port())}
        command = ["srun", f"--ntasks={tasks}", f"--nodes={nodes}", "--kill-on-bad-exit=1",
                   sys.executable]  # fmt: skip
        return command, rendezvous
    if nodes > 1:
        raise LaunchError(
            f"nodes={nodes} needs a Slurm allocation: run with `--profile slurm`, or set "
            "nodes: 1 in params.yaml `launch`"
        )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={tasks}"]  # fmt: skip
    return command, rank_threads(tasks)


def rank_threads(tasks: int) -> dict:
    """The job's threads shared among its `tasks` ranks on this machine (torchrun would
    give each rank one, or each the job's count when the job set OMP_NUM_THREADS)."""
    import torch

    share = str(max(1, torch.get_num_threads() // tasks))
    return {name: share for name in THREAD_ENV}


def run_ranks(function: str, kwargs: dict, tasks: int, nodes: int, folder: Path) -> dict:
    """Run `function` ("module:name") on `tasks` ranks over `nodes` nodes; rank 0's result.
    The spec and the result are files in `folder` (a job's work folder: kept if it fails)."""
    folder = Path(folder)
    spec, result = folder / "ranks.json", folder / "ranks.result.json"
    result.unlink(missing_ok=True)
    spec.write_text(json.dumps({"function": function, "kwargs": kwargs, "result": str(result)}))
    prefix, extra_env = launcher(tasks, nodes)
    command = [*prefix, "-m", "fresnel.training.launch", str(spec)]
    log.info("starting %d ranks on %d node(s): %s", tasks, nodes, " ".join(command))
    with subprocess.Popen(command, env={**os.environ, **extra_env}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True) as ranks:  # fmt: skip
        for line in ranks.stdout:  # the ranks' own lines, into this job's log
            log.info("%s", line.rstrip())
    if ranks.returncode != 0 or not result.is_file():
        raise LaunchError(
            f"{tasks} ranks of {function} failed (exit {ranks.returncode}); "
            "each rank's error is above in this log"
        )
    value = json.loads(result.read_text())
    spec.unlink()
    result.unlink()
    return value


def main(spec_path: str) -> None:
    """One rank: call the function of the spec; rank 0 writes the result file."""
    spec = json.loads(Path(spec_path).read_text())
    module, name = spec["function"].split(":")
    from fresnel.training.distributed import from_environment

    rank = from_environment().rank
    logging.basicConfig(
        level=logging.INFO, stream=sys.stdout,
        format=f"[rank {rank}] %(asctime)s %(name)s %(levelname)s %(message)s",
    )  # fmt: skip
    value = getattr(importlib.import_module(module), name)(**spec["kwargs"])
    if value is not None:
        Path(spec["result"]).write_text(json.dumps(value))


if __name__ == "__main__":
    main(sys.argv[1])
