"""Throw-away copies of the repository for end-to-end runs, and the commands tests run in them."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from fresnel.params import set_values

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
WORKSPACE_FILES = ("Snakefile", "params.yaml", "dvc.yaml", "configs", "workflow", "profiles", "src")

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def run(cmd: str, cwd: Path, check: bool = True, env: dict | None = None):
    """Run a shell command with the venv's tools first on PATH; return the result."""
    full_env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", **(env or {})}
    result = subprocess.run(
        cmd, shell=True, cwd=cwd, capture_output=True, text=True, env=full_env, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"`{cmd}` failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def start(command: str, ws: Path, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    """`command` in `ws` in a session of its own (stderr into stdout)."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    return subprocess.Popen(command, shell=True, cwd=ws, env=env, start_new_session=True,
                            stdout=stdout, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def processes_running(name, session):
    """Pids in a session whose command line mentions `name` (Linux /proc)."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            pid = int(entry.name)
            if os.getsid(pid) == session and name in Path(f"/proc/{pid}/cmdline").read_text():
                found.append(pid)
        except (OSError, ProcessLookupError):
            continue  # the process ended while we looked
    return found


def planned_rules(ws: Path, target: str, prefix: str) -> set[str]:
    """The rules named prefix* that a dry run of target would run."""
    out = run(f"snakemake -n {target}", ws)
    return set(re.findall(rf"rule ({prefix}\w+):", out.stdout + out.stderr))


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root`, by its path relative to `root`."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def make_workspace(path: Path) -> Path:
    """A fresh git + DVC repository holding the pipeline definition (no outputs)."""
    path.mkdir(parents=True, exist_ok=True)
    for name in WORKSPACE_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, path / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, path / name)
    for target in ("cpu", "cuda", "rocm", "mps", "slurm"):
        (path / target).symlink_to(f"profiles/{target}")
    shutil.copy2(REPO / ".gitignore", path / ".gitignore")
    run("git init -q && git config user.email t@t && git config user.name t", path)
    run("dvc init -q && dvc config core.analytics false", path)
    run("git add -A && git commit -qm workspace", path)
    return path


def nothing_to_do(ws) -> bool:
    out = run("snakemake -n", ws)
    return "Nothing to be done" in out.stdout + out.stderr


def snakemake_plan(ws) -> set[str]:
    """Rules `snakemake -n` would run (the aggregate rule `all` left out)."""
    out = run("snakemake -n --quiet rules", ws)
    lines = (out.stdout + out.stderr).splitlines()
    if "Job stats:" not in lines:
        return set()
    table = lines[lines.index("Job stats:") + 3 :]
    rules = [
        line.split()[0]
        for line in table[: table.index(next(r for r in table if r.startswith("total")))]
    ]
    return set(rules) - {"all"}


def dvc_stale(ws) -> set[str]:
    return set(json.loads(run("dvc status --json", ws).stdout or "{}"))


def set_param(ws, path: str, value) -> None:
    set_values(ws / "params.yaml", {path: value})


def assert_docs_show_the_tables_of(ws: Path, page: str) -> None:
    """The tables a DAG run wrote in `ws` have the columns and rows that docs/<page> shows
    (fresnel.pipeline.doc_tables): a format change fails until the docs are regenerated."""
    from fresnel.pipeline.doc_tables import documented, drifted

    doc = REPO / "docs" / page
    sources = [path for path in documented(doc.read_text()) if (ws / path).is_file()]
    assert sources, f"{doc}: no table of this run is documented"
    assert drifted([doc], ws) == [], "run `make demo`, then `fresnel docs-tables`"
