"""The few lines every workflow script shares: logging to the rule's log file, the
target device, the job's threads (the rule's `threads`, as Snakemake gave them), and a
provenance record for the job's outputs.

The target is the profile's only for rules that ask for a GPU (`resources: gpu`); every
other rule runs on the CPU, so a CPU job never needs a GPU build or a GPU node."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

from fresnel.device import deterministic_on_cpu, requested_target, resolve, use_threads
from fresnel.provenance import Recorder


def _setup_logging(logfile: str | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if logfile:
        handlers.append(logging.FileHandler(logfile, mode="w"))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=handlers, force=True,
    )  # fmt: skip


def clock_dir(smk) -> str:
    """Where a training job's wall-clock goes (TensorBoard events, epoch seconds): beside its
    log, out of its tracked output, so two runs write the same output bytes."""
    return str(Path(smk.log[0]).with_suffix(""))


@contextlib.contextmanager
def stage(smk, seed=None):
    """Run a rule's body with logging set up; write provenance when it succeeds."""
    _setup_logging(smk.log[0] if smk.log else None)
    deterministic_on_cpu()
    name = smk.rule + "".join(f"-{v}" for v in dict(smk.wildcards).values())
    params = {k: v for k, v in smk.params.items()}
    cfg = params.get("cfg", {})
    seed = seed if seed is not None else cfg.get("seed")
    target = requested_target() if smk.resources.get("gpu", 0) else "cpu"
    compute = {"threads": use_threads(smk.threads), "ranks": smk.resources.get("tasks", 1),
               "nodes": smk.resources.get("nodes", 1)}  # fmt: skip
    logger = logging.getLogger("fresnel")
    with Recorder(name, params, smk.output, device=target, seed=seed, compute=compute) as recorder:
        logger.info("%s: target %s, %s", name, recorder.device,
                    ", ".join(f"{v} {k}" for k, v in compute.items()))  # fmt: skip
        try:
            if target != "cpu":
                resolve(target)  # fail fast, before any work, when this node cannot serve it
            yield recorder
        except Exception as exc:  # the reason, in the rule's own log (Snakemake repeats it)
            logger.error("%s failed: %s", name, exc)
            raise
