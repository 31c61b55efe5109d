"""Training jobs that survive being killed: a work folder outside the job's outputs.

Snakemake deletes the outputs of a failed or killed job, and a training job's output folder
holds its checkpoints. So a training rule trains in `.fresnel-runs/<job>-<key>/` and the
folder becomes the job's output (one rename) only when training finished. The key hashes
everything that decides the result: the rule and wildcards, the params and the contents of
every input file, code included (contents, not modification times: the DVC sync touches
outputs that DVC restored or knows to be current, and a touch must not lose a run; hashing
reads the inputs once per job start, as `dvc status` does). A rerun with the same
key resumes from the folder's `last` checkpoint; a changed param, code file or input gives
another key, so a stale run is never resumed. When a job succeeds, the folders of its
earlier keys (unfinished runs that can no longer be resumed) are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from fresnel.io import sha256_file

RUNS_DIR = Path(".fresnel-runs")
log = logging.getLogger(__name__)


def job_name(smk) -> str:
    return smk.rule + "".join(f"-{v}" for v in dict(smk.wildcards).values())


def run_key(smk) -> str:
    """sha256 of what decides a training job's result (see the module doc)."""
    files = {
        str(path): sha256_file(path)
        for name in sorted(str(p) for p in smk.input)
        for path in _files(Path(name))
    }
    params = {k: v for k, v in smk.params.items()}
    blob = json.dumps([job_name(smk), params, files], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]


@contextlib.contextmanager
def resumable(smk, last_name, record=None) -> Iterator[tuple[Path, Path | None]]:
    """(work folder, its last checkpoint to resume from or None); the folder becomes
    smk.output[0] when the body returns, and paths into it in `record.stats` (the stage's
    provenance) then name the output instead. `last_name` is the checkpoint's file name, or a
    function of the work folder that finds it (None when there is none)."""
    name, key = job_name(smk), run_key(smk)[:16]
    work = RUNS_DIR / f"{name}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    last = last_name(work) if callable(last_name) else work / last_name
    if last is not None and last.is_file():
        log.info("%s: resuming the unfinished run in %s from %s", name, work, last)
    else:
        last = None
        log.info("%s: training in %s (kept if the job fails; rerun to resume)", name, work)
    yield work, last
    output = Path(smk.output[0])
    shutil.rmtree(output, ignore_errors=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, output)
    if record is not None:
        record.stats = _relocated(record.stats, str(work), str(output))
    for stale in RUNS_DIR.glob(f"{name}-*"):
        if len(stale.name) == len(name) + 17:  # <name>-<16 hex>: this job's earlier keys
            shutil.rmtree(stale, ignore_errors=True)


def _relocated(value, work: str, output: str):
    if isinstance(value, dict):
        return {k: _relocated(v, work, output) for k, v in value.items()}
    if isinstance(value, str) and (value == work or value.startswith(work + os.sep)):
        return output + value[len(work) :]
    return value
