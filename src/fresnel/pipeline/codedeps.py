"""Which source files a workflow script depends on: itself plus every `fresnel` module it
imports, transitively. Rules list them as inputs, so Snakemake (by mtime) and DVC (by hash)
both rerun a stage when its code changes, and only then."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = "fresnel"


@cache  # the rules share most modules: each file is parsed once per Snakefile load
def _imported_modules(path: Path) -> frozenset[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(n for n in names if n == PACKAGE or n.startswith(PACKAGE + "."))


@cache
def _module_file(src_root: Path, module: str) -> Path | None:
    base = src_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def code_files(script: str, src_root: str = "src") -> tuple[str, ...]:
    """Relative paths of `script` and the package modules it reaches, sorted."""
    root = Path(src_root)
    seen: set[Path] = set()
    todo = [Path(script)]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for module in _imported_modules(path):
            parts = module.split(".")
            # importing fresnel.a.b runs fresnel/__init__.py and fresnel/a/__init__.py too
            for depth in range(1, len(parts) + 1):
                found = _module_file(root, ".".join(parts[:depth]))
                if found is not None:
                    todo.append(found)
    return tuple(sorted(str(p) for p in seen))
