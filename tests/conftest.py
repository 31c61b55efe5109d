import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WORKSPACE_FILES = ("Snakefile", "params.yaml", "dvc.yaml", "workflow", "profiles", "src")

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


def planned_rules(ws: Path, target: str, prefix: str) -> set[str]:
    """The rules named prefix* that a dry run of target would run."""
    out = run(f"snakemake -n {target}", ws)
    return set(re.findall(rf"rule ({prefix}\w+):", out.stdout + out.stderr))


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


@pytest.fixture
def workspace(tmp_path) -> Path:
    return make_workspace(tmp_path / "ws")


@pytest.fixture(scope="module")
def one_torch_thread():
    """For tests of many small ops: with intra-op threads on a busy 2-core machine each
    parallel region can wait milliseconds for a descheduled worker (a tiny-model epoch took
    0.5 s on one thread, 4.7 s on two). Restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
