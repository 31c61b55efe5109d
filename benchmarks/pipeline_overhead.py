"""No-op cost of the two workflow tools on the demo: `snakemake -n` and `dvc status`
after a finished run, i.e. what a user pays to learn that nothing needs to run."""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import save, timed, timed_interleaved
from support.workspace import make_workspace, run


def main(repeat: int = 5) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ws = make_workspace(Path(tmp) / "ws")
        run("snakemake --profile cpu", ws)
        run("snakemake -n", ws)  # first call after the run syncs with DVC once
        state = ws / ".snakemake/fresnel-dvc-sync.json"
        no_sync = {"FRESNEL_NO_DVC_SYNC": "1"}
        result = {
            **timed_interleaved(
                {
                    "snakemake_dry_run_noop": lambda: run("snakemake -n", ws),
                    "snakemake_dry_run_noop_without_dvc_sync": lambda: run(
                        "snakemake -n", ws, env=no_sync
                    ),
                },
                repeat,
            ),
            # the first call after DVC changed something: dvc status + snakemake --touch
            "snakemake_dry_run_full_dvc_sync": timed(
                lambda: (state.unlink(), run("snakemake -n", ws)), repeat
            ),
            "dvc_status_noop": timed(lambda: run("dvc status", ws), repeat),
        }
        result["ratio_noop_sync_vs_without"] = round(
            result["snakemake_dry_run_noop"]["median_s"]
            / result["snakemake_dry_run_noop_without_dvc_sync"]["median_s"],
            3,
        )
        assert (
            "Nothing to be done" in run("snakemake -n", ws).stdout + run("snakemake -n", ws).stderr
        )
    save("pipeline_overhead", result)


if __name__ == "__main__":
    main()
