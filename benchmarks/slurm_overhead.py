"""What the Slurm path adds per job: the same DAG slice (download -> ... -> shards, 7 jobs,
4 of them one after the other) run with --forceall through the local executor (cpu profile)
and through the slurm profile on the throw-away 2-node cluster of tests/support/slurm_cluster.py,
alternated. The difference divided by the jobs on the longest path is Slurm's cost per
job there: sbatch, the job's own snakemake start, and the plugin's status polling (first
check after 1 s here; the plugin's default is 40 s, and it waits 10 s longer after each
check that finds nothing finished)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import save, timed_interleaved
from support.slurm_cluster import SITE, SITE_CONFIG, SlurmCluster
from support.workspace import make_workspace, run

TARGET = "data/shards"
JOBS, CHAIN = (
    7,
    4,
)  # jobs in the slice; jobs on its longest path (download, matte, features, shards)


def main(repeat: int = 2) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        run(f"snakemake --profile cpu {TARGET}", ws)  # model exports and feature cache warm
        with SlurmCluster(Path(tmp) / "cluster", nodes=2):
            result = timed_interleaved(
                {
                    "local_executor": lambda: run(
                        f"snakemake --profile cpu --forceall {TARGET}", ws
                    ),
                    "slurm_executor": lambda: run(
                        f"snakemake --profile slurm --forceall {TARGET} {SITE} "
                        f"--config target=cpu {SITE_CONFIG}",
                        ws,
                    ),
                },
                repeat,
            )
    local, slurm = result["local_executor"]["median_s"], result["slurm_executor"]["median_s"]
    result.update(
        jobs=JOBS, jobs_on_longest_path=CHAIN, ratio_slurm_vs_local=round(slurm / local, 3),
        added_per_job_on_longest_path_s=round((slurm - local) / CHAIN, 2),
    )  # fmt: skip
    save("slurm_overhead", result)


if __name__ == "__main__":
    main()
