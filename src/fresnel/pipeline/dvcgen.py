"""Generate dvc.yaml from the Snakemake DAG: one DVC stage per Snakemake job.

Each stage's command asks Snakemake to run exactly that job, so both tools execute the
same code, and its deps, params and outs are the job's inputs, params sections and outputs.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import yaml

from fresnel.pipeline.glue import SKIP_ENV, Section
from fresnel.registry import presentation

HEADER = (
    "# Generated from the Snakemake DAG by `fresnel dvc-yaml`; do not edit by hand.\n"
    "# Each stage runs its Snakemake job: `dvc repro` and `snakemake` share one definition.\n"
)


def _stage_name(job) -> str:
    wildcards = "-".join(str(v) for v in job.wildcards_dict.values())
    return f"{job.rule.name}-{wildcards}" if wildcards else job.rule.name


def _dag_jobs(snakefile: Path, targets: list[str]):
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import DAGSettings, OutputSettings, ResourceSettings

    with _sync_off(), SnakemakeApi(OutputSettings(quiet=None)) as api:
        workflow_api = api.workflow(resource_settings=ResourceSettings(), snakefile=snakefile)
        workflow_api.dag(DAGSettings(targets=set(targets), forceall=True))
        workflow = workflow_api._workflow
        workflow._prepare_dag(forceall=True, ignore_incomplete=True, lock_warn_only=True)
        workflow._build_dag()
        return sorted(workflow.dag.jobs, key=lambda j: (j.rule.name, str(j.output)))


@contextlib.contextmanager
def _sync_off():
    """Loading the Snakefile here must not talk to DVC; the caller's environment is restored
    after (left set, it would silently switch the sync off for every later snakemake that
    this process starts)."""
    before = os.environ.get(SKIP_ENV)
    os.environ[SKIP_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[SKIP_ENV]
        else:
            os.environ[SKIP_ENV] = before


def build(snakefile: str = "Snakefile", targets: tuple[str, ...] = ("all",)) -> dict:
    stages, metrics, plots = {}, [], []
    shown_of = presentation()
    for job in _dag_jobs(Path(snakefile), list(targets)):
        if not job.output:
            continue  # aggregate rules (all, demo) have nothing to version
        outs = [str(o) for o in job.output]
        params = sorted(p for v in job.params if isinstance(v, Section) for p in v.paths)
        stage = {
            "cmd": "snakemake --force --allowed-rules {} --cores all -- {}".format(
                job.rule.name, " ".join(outs)
            ),
            "deps": sorted(str(i) for i in job.input),
        }
        if params:
            stage["params"] = params
        stage["outs"] = outs
        stages[_stage_name(job)] = stage
        shown = shown_of.get(job.rule.name, {})
        metrics += [_fill(m, outs[0]) for m in shown.get("metrics", [])]
        plots += [_fill(p, outs[0]) for p in shown.get("plots", [])]
    return {"stages": stages, **({"metrics": metrics} if metrics else {}),
            **({"plots": plots} if plots else {})}  # fmt: skip


def _fill(entry, out: str):
    """A presentation entry with {out} replaced by the job's (first) output path."""
    if isinstance(entry, dict):
        return {k.format(out=out): v for k, v in entry.items()}
    return entry.format(out=out)


def render(snakefile: str = "Snakefile") -> str:
    return HEADER + yaml.safe_dump(build(snakefile), sort_keys=False, width=100)


def write(path: str = "dvc.yaml", check: bool = False) -> bool:
    """Write dvc.yaml (or, with check, only compare); True when the file was up to date."""
    text = render()
    current = Path(path).read_text() if Path(path).exists() else None
    if check:
        return current == text
    if current != text:
        Path(path).write_text(text)
    return current == text
