"""No-op cost of the two workflow tools on the demo: `snakemake -n` and `dvc status`
after a finished run, i.e. what a user pays to learn that nothing needs to run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import save, timed
from conftest import make_workspace, run


def main(repeat: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        run("snakemake --profile cpu", ws)
        run("snakemake -n", ws)  # first call after the run syncs with DVC once
        result = {
            "snakemake_dry_run_noop": timed(lambda: run("snakemake -n", ws), repeat),
            "dvc_status_noop": timed(lambda: run("dvc status", ws), repeat),
            "snakemake_dry_run_after_dvc_change": timed(
                lambda: (run("dvc commit -f --quiet shards", ws), run("snakemake -n", ws)), 2
            ),
        }
        assert (
            "Nothing to be done" in run("snakemake -n", ws).stdout + run("snakemake -n", ws).stderr
        )
    save("pipeline_overhead", result)


if __name__ == "__main__":
    main()
