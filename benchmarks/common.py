"""Shared benchmark helpers: repeated timing and result files."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def timed(fn, repeat: int) -> dict:
    """Median and spread of `repeat` wall-clock runs of fn()."""
    return timed_interleaved({"fn": fn}, repeat)["fn"]


def timed_interleaved(fns: dict, repeat: int) -> dict:
    """Like `timed` for several functions, alternating them so that load affects all alike."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: _summary(values) for name, values in times.items()}


def _summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "max_s": round(max(times), 4), "repeat": len(times)}  # fmt: skip


def machine() -> dict:
    import os

    return {"cpu_count": os.cpu_count(), "machine": platform.machine(),
            "python": platform.python_version()}  # fmt: skip


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
