"""`fresnel release` and DVC remotes: a release pushed through a real SSH server (and a local
folder), a fresh clone at the tag that pulls and reruns nothing, the refusals, and the lock
writer."""

import importlib.metadata
import shutil
import sys
from functools import partial
from pathlib import Path

import pytest
import yaml

from fresnel.pipeline import release as releasing
from fresnel.pipeline.release import ReleaseError, from_report, lock_text
from support.sshd_server import sshd
from support.workspace import dvc_stale, make_workspace, run, set_param

slow = pytest.mark.slow  # the unit tests of the lock writer below run in the fast suite
TARGET = "data/matted"  # download + matte: the cheap part of the DAG, built in seconds
PYTHON = ".".join(map(str, sys.version_info[:3]))
release_here = partial(releasing.release, target="cpu")  # in process, from the cwd


def nothing_to_do(ws: Path, target: str) -> bool:
    out = run(f"snakemake -n {target}", ws)
    return "Nothing to be done" in out.stdout + out.stderr


def never_built(ws: Path) -> set[str]:
    stages = set(yaml.safe_load((ws / "dvc.yaml").read_text())["stages"])
    return stages - set(yaml.safe_load((ws / "dvc.lock").read_text())["stages"])


def release(ws: Path, args: str, env: dict | None = None):
    return run(
        f"fresnel release {args}", ws, check=False, env={"FRESNEL_TARGET": "cpu", **(env or {})}
    )


def refusal(result) -> str:
    """The one line a refused release prints."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fresnel release: "), result.stderr
    return lines[0]


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def tags(ws: Path) -> list[str]:
    return run("git tag -l", ws).stdout.split()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A project where download and matte were built by snakemake and committed; every
    other stage was never built."""
    ws = make_workspace(tmp_path_factory.mktemp("release") / "ws")
    run(f"snakemake --profile cpu {TARGET}", ws)
    run("git add -A && git commit -qm built", ws)
    return ws


@pytest.fixture
def project(built, tmp_path) -> Path:
    """A copy of `built` for one test to change."""
    return Path(shutil.copytree(built, tmp_path / "ws", symlinks=True))


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    with sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def add_remote(ws: Path, kind: str, store: Path, request) -> str:
    """Remote `store` (URL committed, key file in .dvc/config.local); returns the command
    that sets the credentials in a clone."""
    if kind == "local":
        run(f"dvc remote add -d store {store}", ws)
        credentials = "true"
    else:
        server = request.getfixturevalue("ssh_server")
        run(f"dvc remote add -d store {server.url(store)}", ws)
        credentials = f"dvc remote modify --local store keyfile {server.client_key}"
    run(f"{credentials} && git commit -qam 'DVC remote'", ws)
    return credentials


@slow
@pytest.mark.parametrize("kind", ["ssh", "local"])
def test_release_then_a_clone_at_the_tag_pulls_and_reruns_nothing(kind, project, tmp_path, request):
    credentials = add_remote(project, kind, tmp_path / "store", request)
    out = run("fresnel release v1 --remote store", project, env={"FRESNEL_TARGET": "cpu"})
    assert "tag v1: made" in out.stdout and "dvc push -r store" in out.stdout
    assert tags(project) == ["v1"]
    lock = run("git show v1:envs/lock/cpu.txt", project).stdout
    assert lock.startswith(f"# fresnel release lock, target cpu: Python {PYTHON} on ")
    assert f"\ntorch=={importlib.metadata.version('torch')}\n" in lock
    assert f"\ndvc=={importlib.metadata.version('dvc')}\n" in lock
    assert "fresnel-pipelines" not in lock

    clone = tmp_path / "clone"
    run(f"git clone -q {project} {clone} && cd {clone} && git checkout -q v1", tmp_path)
    run(credentials, clone)
    run("dvc pull --allow-missing", clone)  # only part of the DAG was ever built
    assert files(clone / TARGET) == files(project / TARGET)
    assert len(list((clone / TARGET / "images").iterdir())) == 16  # the demo's sample photos
    assert not (clone / "data/features").exists()
    assert dvc_stale(clone) == never_built(clone) and not never_built(clone) & {"download", "matte"}
    assert nothing_to_do(clone, TARGET)
    bare = run("dvc pull", clone, check=False)  # why docs/operations.md says --allow-missing
    assert bare.returncode == 1 and "data/features" in bare.stderr


@slow
def test_a_release_of_chosen_outputs_is_their_chain_even_while_other_stages_are_stale(
    project, tmp_path
):
    """download and matte built, then matte's params edited: `fresnel release v1 data/raw`
    checks and pushes download's chain only; a clone at the tag pulls it with nothing to do
    in either tool, and what was left out is not on the remote."""
    add_remote(project, "local", tmp_path / "store", request=None)
    set_param(project, "matte.padding", 0.3)
    run("git commit -qam 'matte edited, not rebuilt'", project)
    assert "stale stages: matte" in refusal(release(project, "v0"))
    assert "no stage of dvc.yaml makes data/nothing" in refusal(release(project, "v0 data/nothing"))

    out = release(project, "v1 data/raw")
    assert out.returncode == 0, out.stderr
    assert "not in this release: " in out.stdout and "matte" in out.stdout.split("not in")[1]
    clone = tmp_path / "clone"
    run(f"git clone -q {project} {clone} && cd {clone} && git checkout -q v1", tmp_path)
    run("dvc pull download", clone)
    assert files(clone / "data/raw") == files(project / "data/raw")
    assert "download" not in dvc_stale(clone) and nothing_to_do(clone, "data/raw")
    assert run("dvc pull matte", clone, check=False).returncode != 0  # never pushed


@slow
def test_release_refuses_a_dirty_tree_in_one_line_and_makes_no_tag(project):
    (project / "notes.txt").write_text("draft\n")
    line = refusal(release(project, "v1"))
    assert "git tree is not clean (1 changed or untracked: notes.txt)" in line
    assert tags(project) == [] and not (project / "envs/lock").exists()


@slow
def test_release_refuses_an_existing_tag_and_a_missing_remote(project, monkeypatch):
    monkeypatch.chdir(project)  # in process: each CLI refusal costs seconds of imports
    with pytest.raises(ReleaseError, match=r"^no default DVC remote: pass --remote NAME"):
        release_here("v1")
    with pytest.raises(ReleaseError, match=r"^no DVC remote named 'nowhere' \(configured: none\)"):
        release_here("v1", remote="nowhere")
    run("git tag v0", project)
    with pytest.raises(ReleaseError, match=r"^tag v0 exists already"):
        release_here("v0")
    assert tags(project) == ["v0"] and not (project / "envs/lock").exists()


@slow
def test_release_refuses_stale_stages_and_names_them(project, tmp_path):
    run(f"dvc remote add -d store {tmp_path / 'store'}", project)
    set_param(project, "matte.padding", 0.25)
    run("git commit -qam 'more padding'", project)
    line = refusal(release(project, "v1"))
    assert "stale stages: matte: run snakemake first" in line
    assert "download" not in line  # built and up to date; never-built stages are not stale
    assert tags(project) == [] and not (project / "envs/lock").exists()
    assert not (tmp_path / "store").exists()


@slow
def test_a_target_pip_cannot_resolve_fails_naming_it_and_changes_nothing(
    project, tmp_path, monkeypatch
):
    run(f"dvc remote add -d store {tmp_path / 'store'}", project)
    (project / "envs").mkdir()
    (project / "envs/cuda.txt").write_text("fresnel-no-such-package==1.0\n")
    run("git add -A && git commit -qm 'cuda env'", project)
    head = run("git rev-parse HEAD", project).stdout
    monkeypatch.chdir(project)
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")  # no index, no config: fails at once
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(ReleaseError) as refused:
        release_here("v1", targets=["cuda"])
    assert str(refused.value).startswith("target cuda: pip could not resolve envs/cuda.txt: ")
    assert "fresnel-no-such-package" in str(refused.value)
    assert tags(project) == [] and not (project / "envs/lock").exists()
    assert run("git rev-parse HEAD", project).stdout == head


def test_lock_pins_every_distribution_once_by_normalized_name_without_the_project():
    dists = [("Torch", "2.15.0"), ("fresnel_pipelines", "0.1.0"), ("ruamel.yaml", "0.18.6"),
             ("PyYAML", "6.0.2"), ("pyyaml", "5.0")]  # fmt: skip
    text = lock_text(dists, target="cpu", source="as installed", python=("3.11.2", "linux-x86_64"))
    assert text == (
        "# fresnel release lock, target cpu: Python 3.11.2 on linux-x86_64, 3 packages as installed.\n"
        "# Rerun: pip install -r envs/lock/cpu.txt && pip install --no-deps -e .\n"
        "pyyaml==6.0.2\nruamel-yaml==0.18.6\ntorch==2.15.0\n"
    )


def test_a_pip_report_becomes_the_pins_it_would_install():
    report = {"version": "1", "install": [
        {"metadata": {"name": "torch", "version": "2.15.0"}, "download_info": {}},
        {"metadata": {"name": "numpy", "version": "2.3.4"}, "download_info": {}},
    ]}  # fmt: skip
    assert from_report(report) == [("torch", "2.15.0"), ("numpy", "2.3.4")]
