"""The demo DAG's wall time with every job on its rule's threads against the same DAG at an
earlier revision (BEFORE: before rules declared threads, every job counted as one core by
Snakemake while torch, BLAS and onnxruntime each took one thread per core).

    python benchmarks/demo_threads.py BEFORE [--workdir DIR]

Each revision is a clone of this repository that builds `make demo`'s targets from nothing
with the cpu profile (`cores: all`), importing its own `src/`; the two runs alternate
(BEFORE, HEAD, ...; --repeat pairs). One run of the demo takes minutes, so the default is
one pair. The clones stay in --workdir when given (their dvc.lock and outputs).
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

from common import save
from support.workspace import REPO, run


def clone(revision: str, path: Path) -> Path:
    run(f"git clone -q {REPO} {path} && git -C {path} checkout -q {revision}", REPO)
    return path


def demo_seconds(ws: Path) -> float:
    """Wall time of the demo targets built from nothing in `ws` (its outputs removed)."""
    run("rm -rf data models results logs provenance .snakemake .fresnel-runs .dvc/cache", ws)
    run("git checkout -q -- dvc.lock", ws)
    env = {"PYTHONPATH": str(ws / "src")}
    targets = run("fresnel demo-targets", ws, env=env).stdout.split()
    start = time.perf_counter()
    run(f"snakemake --profile cpu {' '.join(targets)}", ws, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="the revision to compare HEAD with")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = args.workdir or Path(tmp)
        spaces = {"before": clone(args.before, root / "before"), "head": clone(head, root / "head")}
        seconds: dict[str, list[float]] = {name: [] for name in spaces}
        for _ in range(args.repeat):
            for name, ws in spaces.items():
                seconds[name].append(round(demo_seconds(ws), 1))
                print(name, seconds[name][-1], flush=True)
    medians = {name: sorted(values)[len(values) // 2] for name, values in seconds.items()}
    save("demo_threads", {
        "revisions": {"before": args.before, "head": head},
        "seconds": seconds,
        "ratio_head_vs_before": round(medians["head"] / medians["before"], 3),
    })  # fmt: skip


if __name__ == "__main__":
    main()
