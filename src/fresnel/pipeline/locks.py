"""Snakemake's directory lock told apart from a live run's, and a stop that stops the jobs.

Snakemake locks its working directory with files in ``.snakemake/locks/`` and removes them
when it exits. A snakemake that was killed leaves them behind, and every later command would
refuse to run (``--unlock`` too: the Snakefile's DVC sync runs a nested snakemake). A lock is
live while a snakemake process other than this one runs in this directory; the job processes
of a run count too, so a training job orphaned by a killed snakemake keeps the lock until it
ends. Only locks that no live process can hold are removed.

Snakemake answers SIGTERM by waiting for the running jobs to finish (hours, for training)
and SIGINT by waiting as well unless the jobs got the signal too; `stop_jobs_on_signals`
makes both stop the jobs now, and say how to continue.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

LOCKS = Path(".snakemake/locks")


def live_runs(workdir: Path | None = None) -> list[psutil.Process]:
    """Snakemake processes running in `workdir` (the current directory), apart from this
    process and its ancestors."""
    here = (workdir or Path.cwd()).resolve()
    me = psutil.Process()
    mine = {me.pid, *(parent.pid for parent in me.parents())}
    runs = []
    for process in psutil.process_iter(["pid", "cmdline", "status"]):
        info = process.info
        if info["pid"] in mine or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if not any(Path(arg).name == "snakemake" for arg in (info["cmdline"] or [])[:3]):
            continue
        try:
            if Path(process.cwd()).resolve() == here:
                runs.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return runs


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid}: {' '.join(process.cmdline())}"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return f"pid {process.pid}"


def release_dead_lock() -> list[psutil.Process]:
    """Remove the lock of a killed run; return the live runs (then the lock stays).

    Inside a DVC stage, a live run is refused here in one line, not by Snakemake's own lock
    message, which advises ``--unlock``.
    """
    if not any(LOCKS.glob("*.lock")):
        return []
    runs = live_runs()
    if runs:
        holder = describe(runs[0])
        if os.environ.get("DVC_STAGE"):
            sys.exit(
                f"error: another snakemake run is building in this directory ({holder}); "
                "wait for it to finish or stop it, then rerun this command"
            )
        log.warning("another snakemake run holds this directory's lock (%s)", holder)
        return runs
    shutil.rmtree(LOCKS)
    log.warning("removed the lock left by a killed snakemake run (no snakemake runs here)")
    return []


def stop_jobs_on_signals(workflow) -> None:
    """SIGTERM and SIGINT stop this run's jobs at once (their checkpoints stay) and say how
    to continue. Install after Snakemake's scheduler has set its own handlers (onstart)."""
    if workflow.remote_exec or workflow.subprocess_exec:
        return
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)


def _stop(signum: int, frame) -> None:
    jobs = psutil.Process().children(recursive=True)
    for job in jobs:
        with contextlib.suppress(psutil.NoSuchProcess):
            job.terminate()
    signal.signal(signum, signal.SIG_DFL)  # a second signal stops snakemake at once
    print(
        f"stopped by {signal.Signals(signum).name}: {len(jobs)} job process(es) terminated; "
        "rerun the same command to continue (training resumes from its last checkpoint)",
        file=sys.stderr,
    )
    raise KeyboardInterrupt
