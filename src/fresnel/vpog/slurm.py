"""The guide's `submit_slurm.sh` and `submit_slurm_multinode.sh`, written from `machine/slurm.yaml`.

    fresnel vpog_slurm_scripts --output_dir training/scripts [key=value ...]
    sbatch training/scripts/submit_slurm.sh

Each script asks Slurm for `nodes x gpus` tasks (one per GPU, as Lightning's Slurm support
expects) and runs `srun fresnel vpog_train machine=slurm ...` with the same overrides, so the
job trains exactly the config the script was written from. With `machine.accelerator=cpu` the
tasks are CPU processes (gloo DDP) and no GPU is requested. `MASTER_ADDR` defaults to the
first node of the allocation (export it before `sbatch` where node names do not resolve) and
`MASTER_PORT` to one derived from the job id, so two jobs on a node do not collide.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

SINGLE_NODE = "submit_slurm.sh"
MULTI_NODE = "submit_slurm_multinode.sh"


def sbatch_script(cfg: DictConfig, overrides: Sequence[str], nodes: int, command: str) -> str:
    """One sbatch script training `cfg` (its `machine` must be the slurm one) on `nodes`."""
    machine = cfg.machine
    tasks_per_node = int(machine.gpus)
    gpu = machine.accelerator in ("gpu", "cuda", "auto")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={machine.job_name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={tasks_per_node}",
        f"#SBATCH --cpus-per-task={machine.cpus_per_task}",
        f"#SBATCH --time={machine.time}",
        "#SBATCH --output=%x_%j.out",
    ]
    if machine.partition:
        lines.append(f"#SBATCH --partition={machine.partition}")
    if machine.account:
        lines.append(f"#SBATCH --account={machine.account}")
    if gpu:
        lines += [f"#SBATCH --gpus-per-node={tasks_per_node}",
                  f"#SBATCH --mem-per-gpu={machine.mem_per_gpu}"]  # fmt: skip
    arguments = ["machine=slurm", *overrides, f"machine.gpus={tasks_per_node}",
                 f"machine.nodes={nodes}"]  # fmt: skip
    lines += [
        "",
        "# Written by `fresnel vpog_slurm_scripts` from configs/machine/slurm.yaml; rewrite it",
        "# rather than editing it, so that the config and the job agree.",
        "set -euo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-.}"',
        'export MASTER_ADDR="${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" '
        '| head -n 1)}"',
        'export MASTER_PORT="${MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}"',
        f"srun {command} vpog_train {shlex.join(arguments)}",
        "",
    ]
    return "\n".join(lines)


def write_scripts(
    cfg: DictConfig, overrides: Sequence[str], output_dir: str | Path, command: str = "fresnel"
) -> list[Path]:
    """submit_slurm.sh (machine.nodes nodes) and submit_slurm_multinode.sh
    (machine.multinode_nodes nodes), executable; the paths."""
    if cfg.machine.name != "slurm":
        raise ValueError(f"machine={cfg.machine.name}: Slurm scripts need machine=slurm")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    overrides = [o for o in overrides if not o.startswith(("machine=", "machine.gpus=",
                                                            "machine.nodes="))]  # fmt: skip
    paths = []
    for name, nodes in (
        (SINGLE_NODE, cfg.machine.nodes),
        (MULTI_NODE, cfg.machine.multinode_nodes),
    ):
        path = output_dir / name
        path.write_text(sbatch_script(cfg, overrides, int(nodes), command))
        path.chmod(0o755)
        paths.append(path)
    return paths
