"""Tables in the docs are copies of the tables a DAG run writes, never typed by hand.

Each sits between two markers, the first naming the file it copies (relative to the run's
folder) and how that run was made:

    <!-- table: results/vpog/eval/table.md (make demo, 2-core AMD EPYC VM, 2026-12-07) -->
    | method | queries | AR | ...
    <!-- /table -->

`fresnel docs-tables` rewrites every block from a run's folder; `layout` is what tests compare
between a documented table and the one the DAG writes now (its columns and row names), so a
change of the table's format fails until the docs are regenerated.
"""

from __future__ import annotations

import re
from pathlib import Path

BLOCK = re.compile(
    r"(?P<open><!-- table: (?P<path>\S+)(?P<note>[^>]*)-->\n)(?P<body>.*?)(?P<close><!-- /table -->)",
    re.S,
)


def documented(text: str) -> dict[str, str]:
    """{source path: the table as the doc shows it} of every block in `text`."""
    return {m["path"]: m["body"] for m in BLOCK.finditer(text)}


def layout(table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(column names, row names) of a markdown table: what must not drift between the DAG's
    table and its copy in the docs (the numbers may, from run to run and machine to machine)."""
    rows = [line for line in table.splitlines() if line.lstrip().startswith("|")]
    if len(rows) < 2:
        return (), ()
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    return tuple(cells[0]), tuple(row[0] for row in cells[2:])


def update(doc: Path, root: Path) -> list[str]:
    """Rewrite `doc`'s blocks from the files under `root`; the sources that were copied."""
    copied = []

    def fill(match: re.Match) -> str:
        source = root / match["path"]
        if not source.is_file():
            return match[0]
        copied.append(match["path"])
        body = source.read_text()
        return match["open"] + body + ("" if body.endswith("\n") else "\n") + match["close"]

    text = doc.read_text()
    new = BLOCK.sub(fill, text)
    if new != text:
        doc.write_text(new)
    return copied


def drifted(docs: list[Path], root: Path) -> list[str]:
    """Blocks whose table under `root` has other columns or rows than the docs show."""
    found = []
    for doc in docs:
        for path, body in documented(doc.read_text()).items():
            source = root / path
            if source.is_file() and layout(source.read_text()) != layout(body):
                found.append(f"{doc}: {path}")
    return found
