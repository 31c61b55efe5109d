"""Provenance records: who made an artifact, from what, where, and how long it took.

Records live under `provenance/` (not inside the DVC-tracked outputs), so the device or
the wall time of a run never changes an output's hash: switching profiles reruns nothing.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from fresnel.io import sha256_file, write_json

PROVENANCE_DIR = Path("provenance")
# where the job ran: the GPU targets' settings and what a scheduler gave it
RECORDED_ENV = ("HSA_OVERRIDE_GFX_VERSION", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID",
                "SLURM_JOB_NODELIST", "SLURM_NTASKS")  # fmt: skip
TRACKED_PACKAGES = (
    "fresnel-pipelines", "torch", "numpy", "onnx", "onnxruntime", "transformers",
    "datasets", "rembg", "scikit-image", "pillow", "snakemake", "dvc",
)  # fmt: skip


def git_revision() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _describe_output(path: Path) -> dict:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        return {
            "kind": "directory",
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files),
        }
    if path.is_file():
        return {"kind": "file", "bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return {"kind": "missing"}


class Recorder:
    """Times a stage and writes its provenance record when the stage succeeds.

    >>> with Recorder("features", params, outputs=[out], device="cpu", seed=0) as rec:
    ...     rec.stats["computed"] = 3
    """

    def __init__(self, stage: str, params: dict, outputs, device: str = "cpu", seed=None,
                 compute: dict | None = None):  # fmt: skip
        self.stage = stage
        self.compute = compute or {}  # threads, ranks, nodes
        self.params = params
        self.outputs = [Path(o) for o in outputs]
        self.device = device
        self.seed = seed
        self.stats: dict = {}
        self.notes: list[str] = []

    def __enter__(self) -> Recorder:
        self.started = time.time()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            write_json(record_path(self.stage), self.record())

    def record(self) -> dict:
        return {
            "stage": self.stage,
            "git_revision": git_revision(),
            "params": self.params,
            "packages": package_versions(),
            "device": self.device,
            **self.compute,
            "host": platform.node(),
            "seed": self.seed,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.started)),
            "wall_time_s": round(time.time() - self.started, 3),
            "outputs": {str(o): _describe_output(o) for o in self.outputs},
            "stats": self.stats,
            "notes": self.notes,
            "env": {k: os.environ[k] for k in RECORDED_ENV if k in os.environ},
        }


def record_path(stage: str) -> Path:
    return PROVENANCE_DIR / f"{stage}.json"
