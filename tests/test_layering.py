"""The package's layering rule (src/fresnel/README.md): every import points down a floor,
families never import each other, and no module imports itself through a cycle. The floors
are fresnel.registry's: its shared floors, and on the family floor every registered family."""

import ast
from pathlib import Path

from fresnel.registry import PACKAGE_DIR, floors

PACKAGE = PACKAGE_DIR
# Floors, bottom first. A unit may import its own modules and units of lower floors only.
FLOOR = {unit: level for level, units in enumerate(floors()) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(path: Path, known: set[str]) -> set[str]:
    """The fresnel modules `path` imports, lazily inside functions too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "fresnel"}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fresnel"):
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fresnel"


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(path, set(mods)) - {name} for name, path in mods.items()}


def upward_imports(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for importer, targets in edges.items():
        for target in targets:
            a, b = unit(importer), unit(target)
            if a != b and FLOOR[b] >= FLOOR[a]:
                bad.append(f"{importer} -> {target}")
    return sorted(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node, path):
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt] if nxt in path else [node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*path, nxt])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start, [start])):
            return cycle
    return None


def test_every_unit_has_a_floor():
    assert {unit(m) for m in modules()} <= set(FLOOR), (
        "a shared unit goes into fresnel.registry.FLOORS (and src/fresnel/README.md); a model "
        "family declares itself in its family.py"
    )


def test_imports_point_down_and_families_stay_apart():
    assert upward_imports(graph()) == []


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def test_the_checks_catch_a_cycle_and_an_upward_import():
    edges = {"fresnel.io": {"fresnel.training.amp"}, "fresnel.training.amp": {"fresnel.io"},
             "fresnel.decoder.train": {"fresnel.pbr.maps"}}  # fmt: skip
    assert find_cycle(edges) == ["fresnel.io", "fresnel.training.amp", "fresnel.io"]
    assert upward_imports(edges) == ["fresnel.decoder.train -> fresnel.pbr.maps",
                                     "fresnel.io -> fresnel.training.amp"]  # fmt: skip
