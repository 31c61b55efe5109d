"""What the Snakefile calls so that Snakemake and DVC always agree about what is stale.

- `section`: a rule's params are params.yaml sections (or the few keys of one that the rule
  reads); the section remembers its key paths so that the generated dvc.yaml tracks
  exactly the params the rule uses.
- `sync_from_dvc` (Snakefile load): first the lock of a killed run is removed
  (`fresnel.pipeline.locks`; while a live run holds it, nothing is synced). Then stages that
  DVC considers up to date (after `dvc repro`, a run-cache restore or `dvc pull`) are marked
  up to date in Snakemake's metadata too, with `snakemake --touch`, so `snakemake -n` has
  nothing to do.
- `write_overrides_to_params` (Snakefile onstart): values that `--configfile` or `--config`
  give DVC-tracked params are written into params.yaml, as `dvc exp run -S` does, so that
  dvc.lock records what the jobs used and the same command again runs nothing.
- `commit_to_dvc` (Snakefile onsuccess and onerror): stages whose jobs this Snakemake run
  finished are committed to dvc.lock, so `dvc status` is clean after a `snakemake` run,
  and after a failed one names only what Snakemake would rerun.
- `report_failures` (Snakefile onerror): each failed job's reason, from its own log, in
  Snakemake's output (under Slurm a job's traceback is only in .snakemake/slurm_logs/).

Both are skipped inside a DVC stage (DVC_STAGE is set) and in nested calls.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import yaml

from fresnel.io import write_json
from fresnel.params import read_yaml, set_values
from fresnel.pipeline.codedeps import code_files
from fresnel.pipeline.locks import release_dead_lock

log = logging.getLogger(__name__)

SYNC_STATE = Path(".snakemake/fresnel-dvc-sync.json")
NESTED_ENV = "FRESNEL_NESTED_SNAKEMAKE"
SKIP_ENV = "FRESNEL_NO_DVC_SYNC"
DVC = [sys.executable, "-m", "dvc"]  # the dvc of this environment, whatever PATH says


class Section(dict):
    """A params.yaml section (a plain dict for Snakemake) that knows its key paths."""

    def __init__(self, paths: list[str], values: dict):
        super().__init__(values)
        self.paths = paths


def section(config: dict, path: str, keys: tuple[str, ...] = ()) -> Section:
    """The section at `path`, or only its `keys` (then DVC tracks only those)."""
    node = config
    for key in path.split("."):
        node = node[key]
    if keys:
        return Section([f"{path}.{k}" for k in keys], {k: node[k] for k in keys})
    return Section([path], node)


def code_inputs(script: str) -> list[str]:
    return list(code_files(script))


def main_process(workflow) -> bool:
    """The snakemake process a user (or a DVC stage) started: not a job process spawned by
    it, not one of the nested calls below."""
    return not (workflow.remote_exec or workflow.subprocess_exec or os.environ.get(NESTED_ENV))


def _active(workflow) -> bool:
    """Only the user's own snakemake process talks to DVC, and only in a DVC repository."""
    if os.environ.get("DVC_STAGE") or os.environ.get(SKIP_ENV) or not main_process(workflow):
        return False
    return Path(".dvc").is_dir() and Path("dvc.yaml").is_file()


def _lock_stages() -> dict:
    lock = Path("dvc.lock")
    return (yaml.safe_load(lock.read_text()) or {}).get("stages", {}) if lock.is_file() else {}


def _fingerprint(stages: dict) -> str:
    """Cheap summary of everything that can change what DVC and Snakemake think is stale."""
    digest = hashlib.sha256()
    for name in ("dvc.lock", "dvc.yaml", "params.yaml"):
        digest.update(Path(name).read_bytes() if Path(name).exists() else b"-")
    for stage in sorted(stages):
        for out in stages[stage].get("outs", []):
            path = Path(out["path"])
            stat = path.stat() if path.exists() else None
            digest.update(f"{path}:{stat and (stat.st_mtime_ns, stat.st_size)}".encode())
    return digest.hexdigest()


def _stale_in_dvc() -> set[str]:
    result = subprocess.run([*DVC, "status", "--json"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"`dvc status` failed:\n{result.stderr.strip()}")
    return set(json.loads(result.stdout or "{}"))


def _up_to_date_closure(stages: dict, stale: set[str]) -> list[str]:
    """Stages that DVC calls up to date and whose upstream stages are all up to date."""
    producer = {out["path"]: name for name, s in stages.items() for out in s.get("outs", [])}

    def clean(name, seen=()):
        if name in stale or name in seen:
            return False
        upstream = {
            producer[d["path"]] for d in stages[name].get("deps", []) if d["path"] in producer
        }
        return all(clean(u, (*seen, name)) for u in upstream)

    return [name for name in stages if clean(name)]


def _nested_snakemake(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, NESTED_ENV: "1"}
    cmd = [sys.executable, "-m", "snakemake", "--cores", "1", "--quiet", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)


def sync_from_dvc(workflow) -> None:
    """Mark what DVC knows to be up to date as up to date for Snakemake (see module doc)."""
    if main_process(workflow) and release_dead_lock():
        return  # a live run holds the lock: Snakemake refuses this command unless a dry run
    if not _active(workflow):
        return
    stages = _lock_stages()
    fingerprint = _fingerprint(stages)
    if SYNC_STATE.is_file() and json.loads(SYNC_STATE.read_text()).get("fp") == fingerprint:
        return
    stale = _stale_in_dvc()
    clean = _up_to_date_closure(stages, stale)
    outs = [o["path"] for name in clean for o in stages[name].get("outs", [])]
    existing = [o for o in outs if Path(o).exists()]
    if existing:
        # --forcerun: touch those jobs too that Snakemake already calls up to date (no
        # inputs, or older inputs), so that every one gets metadata and a later params edit
        # reruns it; plain --touch skips them and leaves them without metadata.
        result = _nested_snakemake("--touch", "--forcerun", *existing, "--", *existing)
        if result.returncode != 0:
            raise RuntimeError(f"marking DVC-restored outputs up to date failed:\n{result.stderr}")
    committed = _commit_what_snakemake_finished(stale)
    write_json(SYNC_STATE, {"fp": _fingerprint(_lock_stages()), "marked_up_to_date": existing,
                            "committed": committed})  # fmt: skip


def write_overrides_to_params(workflow, config: dict) -> None:
    """Put the values this run gives DVC-tracked params into params.yaml (see module doc)."""
    if not _active(workflow) or workflow.dryrun:
        return
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    tracked = sorted({path for stage in stages.values() for path in stage.get("params", [])})
    on_disk = read_yaml("params.yaml")
    changes = {}
    for path in tracked:
        changes.update(_differences(path, _at(config, path), _at(on_disk, path)))
    if changes:
        set_values("params.yaml", changes)
        shown = ", ".join(f"{key}: {value!r}" for key, value in changes.items())
        log.warning("params.yaml now holds this run's values (%s), as dvc.lock will", shown)


def _at(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree.get(key) if isinstance(tree, dict) else None
    return tree


def _differences(path: str, new, old) -> dict:
    """{dotted key: new value} for every leaf where `new` differs from `old`."""
    if isinstance(new, dict) and isinstance(old, dict):
        return {key: value for name in new
                for key, value in _differences(f"{path}.{name}", new[name], old.get(name)).items()}  # fmt: skip
    return {} if new == old else {path: new}


def _commit_what_snakemake_finished(stale: set[str]) -> list[str]:
    """`dvc commit` the stages DVC calls stale whose outputs Snakemake calls up to date: their
    jobs finished in a run killed before its hook committed them. (This happens at load: a
    run with nothing to do runs no hook.) Costs one nested `snakemake --summary`, only when
    such stages exist."""
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    outs = {name: stages[name]["outs"] for name in sorted(stale)
            if stages.get(name, {}).get("outs")
            and all(Path(o).exists() for o in stages[name]["outs"])}  # fmt: skip
    if not outs:
        return []
    summary = _nested_snakemake("--summary", "--", *[o for paths in outs.values() for o in paths])
    current = {line.split("\t")[0] for line in summary.stdout.splitlines()
               if line.endswith("\tno update")}  # fmt: skip
    done = [name for name, paths in outs.items() if set(paths) <= current]
    if done:
        _dvc_commit(done)
    return done


def commit_to_dvc(workflow) -> None:
    """`dvc commit` the stages whose jobs this Snakemake invocation finished: on success,
    and on failure for the jobs that completed before it (Snakemake deletes a failed job's
    outputs, and `finished_jobs` never holds it)."""
    if not _active(workflow) or workflow.dryrun or workflow.touch:
        return
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    finished = {str(f) for job in workflow.dag.finished_jobs for f in job.output}
    ran = [name for name, s in stages.items()
           if s.get("outs") and all(o in finished and Path(o).exists() for o in s["outs"])]  # fmt: skip
    if not ran:
        return
    _dvc_commit(ran)


def _dvc_commit(stages: list[str]) -> None:
    result = subprocess.run([*DVC, "commit", "--force", "--quiet", *stages],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"`dvc commit {' '.join(stages)}` failed:\n{result.stderr.strip()}")
    log.info("dvc commit: %s", ", ".join(stages))


def report_failures(workflow) -> None:
    """Print each failed job's last ERROR line (`<job> failed: <reason>`, written by
    fresnel.pipeline.adapter.stage) and its log's path."""
    for job in getattr(workflow.scheduler, "failed", ()):
        for path in map(Path, job.log):
            errors = [line for line in _lines(path) if " ERROR " in line]
            if errors:
                print(f"{errors[-1].split(' ERROR ', 1)[1]} (log: {path})", file=sys.stderr)


def _lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.is_file() else []
