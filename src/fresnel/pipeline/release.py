"""`fresnel release TAG`: freeze what a paper's numbers came from, so that a rerun years
later checks out the tag, installs the same packages, pulls the artifacts and recomputes
nothing.

Order matters: every check runs before anything is written, so a refusal leaves no trace;
the lock files are committed before the push, and the tag is made last, after the push
succeeded, so a tag never names artifacts that are missing from the remote.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import site
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import yaml

from fresnel import device
from fresnel.pipeline.glue import DVC

PROJECT = "fresnel-pipelines"  # installed by `pip install --no-deps -e .`, never pinned
LOCK_DIR = Path("envs/lock")
RERUN = "pip install -r {lock} && pip install --no-deps -e ."


class ReleaseError(Exception):
    """A release precondition fails; the message says what to do."""


def normalize(name: str) -> str:
    """PEP 503 names, so that `Foo_Bar` and `foo-bar` are one package in a lock."""
    return re.sub(r"[-_.]+", "-", name).lower()


def running_python() -> tuple[str, str]:
    """(Python version, platform) of this interpreter: what a lock holds for."""
    return ".".join(map(str, sys.version_info[:3])), sysconfig.get_platform()


def lock_text(
    dists: Iterable[tuple[str, str]], *, target: str, source: str, python: tuple[str, str]
) -> str:
    """A requirements file pinning every distribution exactly (the project left out: it is
    installed from the checkout), headed by the Python version and platform it holds for."""
    pins: dict[str, str] = {}
    for name, version in dists:
        pins.setdefault(normalize(name), version)  # the first on the path is the one imported
    pins.pop(PROJECT, None)
    header = (
        f"# fresnel release lock, target {target}: Python {python[0]} on {python[1]}, "
        f"{len(pins)} packages {source}.\n"
        f"# Rerun: {RERUN.format(lock=(LOCK_DIR / f'{target}.txt').as_posix())}\n"
    )
    return header + "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))


def installed() -> list[tuple[str, str]]:
    """Distributions in the running interpreter's site-packages, in import order."""
    dists = importlib.metadata.distributions(path=site.getsitepackages())
    return [(d.metadata["Name"], d.version) for d in dists if d.metadata["Name"]]


def from_report(report: dict) -> list[tuple[str, str]]:
    """What `pip install --report` would install."""
    return [(i["metadata"]["name"], i["metadata"]["version"]) for i in report["install"]]


def resolve(target: str, root: Path) -> list[tuple[str, str]]:
    """Let pip resolve envs/<target>.txt (plus the project's own dependencies when the root
    has a pyproject.toml) without installing anything; a failure is the user's to see."""
    spec = Path("envs") / f"{target}.txt"
    if not (root / spec).is_file():
        raise ReleaseError(f"target {target}: {spec} not found")
    project = ["."] if (root / "pyproject.toml").is_file() else []
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
           "--quiet", "--report", "-", "-r", str(spec), *project]  # fmt: skip
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = _last_line(result.stderr) or f"exit status {result.returncode}"
        raise ReleaseError(f"target {target}: pip could not resolve {spec}: {reason}")
    return from_report(json.loads(result.stdout))


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _run(cmd: list[str], root: Path, what: str) -> str:
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise ReleaseError(f"{what} failed: {_last_line(result.stderr + result.stdout)}")
    return result.stdout


def git_root() -> Path:
    result = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                            text=True, check=False)  # fmt: skip
    if result.returncode != 0:
        raise ReleaseError("not inside a git repository: run it in the project's checkout")
    return Path(result.stdout.strip())


def check_tag(tag: str, root: Path) -> None:
    if subprocess.run(["git", "check-ref-format", f"refs/tags/{tag}"], cwd=root).returncode:
        raise ReleaseError(f"{tag!r} is not a valid git tag name")
    exists = subprocess.run(["git", "rev-parse", "-q", "--verify", f"refs/tags/{tag}"],
                            cwd=root, capture_output=True).returncode == 0  # fmt: skip
    if exists:
        raise ReleaseError(f"tag {tag} exists already: choose another name")


def check_clean(root: Path) -> None:
    """A release must be exactly a commit: uncommitted or untracked files would not be."""
    changed = _run(["git", "status", "--porcelain"], root, "git status").splitlines()
    if changed:
        paths = ", ".join(line[3:] for line in changed[:3]) + (", ..." if len(changed) > 3 else "")
        raise ReleaseError(
            f"the git tree is not clean ({len(changed)} changed or untracked: {paths}): "
            "commit or remove them first"
        )


def remote_name(requested: str | None, root: Path) -> tuple[str, bool]:
    """The remote to push to (the one asked for, else DVC's default) and whether it is the
    default: a clone's plain `dvc pull` reads only the default."""
    # `dvc config --list`, not `dvc remote list`: the latter wraps long URLs over lines
    listing = _run([*DVC, "config", "--list"], root, "dvc config --list").splitlines()
    settings = dict(line.split("=", 1) for line in listing if "=" in line)
    names = [key[len("remote."):-len(".url")] for key in settings
             if key.startswith("remote.") and key.endswith(".url")]  # fmt: skip
    default = [settings["core.remote"]] if "core.remote" in settings else []
    if requested and requested not in names:
        raise ReleaseError(f"no DVC remote named {requested!r} (configured: "
                           f"{', '.join(names) or 'none'}): `dvc remote add`")  # fmt: skip
    if not requested and not default:
        raise ReleaseError("no default DVC remote: pass --remote NAME or add one with "
                           "`dvc remote add -d NAME URL` (docs/operations.md: Remotes and paper reruns)")  # fmt: skip
    name = requested or default[0]
    return name, name in default


def built_stages(root: Path) -> tuple[set[str], set[str]]:
    """(stages in dvc.lock, stages of dvc.yaml never built): a paper may use part of the DAG."""
    lock = root / "dvc.lock"
    locked = yaml.safe_load(lock.read_text()) if lock.is_file() else None
    built = set((locked or {}).get("stages", {}))
    stages = set(yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {}))
    return built, stages - built


def chain(targets: Iterable[str], root: Path) -> list[str]:
    """The DVC stages that make `targets` (output paths) and every stage upstream of them."""
    stages = yaml.safe_load((root / "dvc.yaml").read_text()).get("stages", {})
    producer = {_path(out): name for name, stage in stages.items() for out in stage.get("outs", [])}
    pending = []
    for target in targets:
        path = target.rstrip("/")
        if path not in producer:
            raise ReleaseError(f"no stage of dvc.yaml makes {target}: name stage outputs, "
                               f"e.g. {', '.join(sorted(producer)[:3])}")  # fmt: skip
        pending.append(producer[path])
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending += [
                producer[_path(d)] for d in stages[name].get("deps", []) if _path(d) in producer
            ]
    return sorted(seen)


def _path(entry) -> str:
    return entry if isinstance(entry, str) else next(iter(entry))


def check_built(root: Path, stages: list[str] | None = None) -> set[str]:
    """Refuse when a released stage is stale or was never built: its artifact would not be
    what the code and params at the tag produce. `stages`: those released (default: every
    stage built). Returns the stages of dvc.yaml not in the release."""
    built, never = built_stages(root)
    released = sorted(built) if stages is None else list(stages)
    if not released:
        raise ReleaseError("nothing is built (no stage in dvc.lock): run snakemake first")
    missing = [name for name in released if name not in built]
    if missing:
        raise ReleaseError(f"never built: {', '.join(missing)}: run snakemake for the targets, "
                           "commit dvc.lock, then release")  # fmt: skip
    status = _run([*DVC, "status", "--json", *(stages or [])], root, "dvc status")
    stale = sorted(
        name for name in json.loads(status or "{}") if name in released or name.endswith(".dvc")
    )
    if stale:
        raise ReleaseError(f"stale stages: {', '.join(stale)}: run snakemake first "
                           "(e.g. `snakemake --profile cpu`), commit dvc.lock, then release")  # fmt: skip
    return (built | never) - set(released)


def write_locks(root: Path, target: str, others: list[str]) -> list[Path]:
    """The running environment's lock for `target`, then a resolved lock for each other
    target; every resolution runs before the first file is written."""
    here = running_python()
    texts = {target: lock_text(installed(), target=target, python=here, source="as installed")}
    for other in others:
        source = f"as pip resolves envs/{other}.txt"
        texts[other] = lock_text(resolve(other, root), target=other, python=here, source=source)
    paths = []
    for name, text in texts.items():
        path = root / LOCK_DIR / f"{name}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        paths.append(path.relative_to(root))
    return paths


def commit_locks(tag: str, paths: list[Path], root: Path) -> bool:
    """Commit the lock files; False when they are unchanged since the last commit."""
    _run(["git", "add", "--", *map(str, paths)], root, "git add")
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root).returncode == 0:
        return False
    _run(["git", "commit", "-q", "-m", f"Environment locks for release {tag}"], root, "git commit")
    return True


def check_targets(target: str, others: list[str]) -> None:
    for name in (target, *others):
        if name not in device.TARGETS:
            raise ReleaseError(f"unknown target {name!r}: choose from {', '.join(device.TARGETS)}")


def release(tag: str, *, target: str | None = None, targets: Iterable[str] = (),
            remote: str | None = None, outputs: Iterable[str] = ()) -> list[str]:  # fmt: skip
    """Check, lock, commit, push, tag; returns what was done, one line each. `outputs`:
    release only the chains that make these paths (default: everything built)."""
    root = git_root()
    target = target or device.requested_target()
    others = [t for t in dict.fromkeys(targets) if t != target]
    check_targets(target, others)
    check_tag(tag, root)
    check_clean(root)
    store, is_default = remote_name(remote, root)
    stages = chain(outputs, root) if outputs else None
    never = check_built(root, stages)
    paths = write_locks(root, target, others)
    committed = commit_locks(tag, paths, root)
    pushed = _last_line(
        _run([*DVC, "push", "-r", store, *(stages or [])], root, f"dvc push -r {store}")
    )
    _run(["git", "tag", "-a", tag, "-m", f"fresnel release {tag}"], root, "git tag")
    done = [
        f"locks: {', '.join(map(str, paths))} ({'committed' if committed else 'unchanged'})",
        f"dvc push -r {store}: {pushed or 'done'}",
        f"tag {tag}: made (push it with `git push origin {tag}`)",
    ]
    if never:
        done.append(f"not in this release: {', '.join(sorted(never))}")
    if not is_default:
        done.append(f"note: {store} is not the default remote: a clone pulls with "
                    f"`dvc pull -r {store}` (or commit `dvc remote default {store}`)")  # fmt: skip
    return done
