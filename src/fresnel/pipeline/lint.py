"""`snakemake --lint`, with the findings this project accepts on purpose (docs/operations.md,
"Workflow lint") filtered out; anything else fails the test command."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from fresnel.pipeline.glue import SKIP_ENV

# Software comes from pip environments per GPU target (envs/<target>.txt), not conda or
# containers: the torch build depends on the target, which a per-rule env cannot express.
ACCEPTED = {"Specify a conda environment or container for each rule."}


def findings() -> list[tuple[str, str]]:
    """(where, finding) pairs printed by `snakemake --lint`."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--lint"],
        capture_output=True, text=True, env={**os.environ, SKIP_ENV: "1"}, check=False,
    )  # fmt: skip
    where, found = "", []
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("Lints for"):
            where = line.rstrip(":")
        elif match := re.match(r"\s{4}\* (.+?):?$", line):
            found.append((where, match.group(1)))
    if result.returncode not in (0, 1) or (result.returncode == 1 and not found):
        raise RuntimeError(f"snakemake --lint failed:\n{result.stderr}")
    return found


def unexpected() -> list[tuple[str, str]]:
    return [(w, f) for w, f in findings() if f not in ACCEPTED]
