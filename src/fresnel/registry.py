"""The package's map: its floors, bottom first, and the model families that declare themselves.

A family declares itself once, in `fresnel/<name>/family.py`, as `FAMILY = Family(...)`; its
commands are `add_commands(sub)` of `fresnel/<name>/cli.py` and the schema of its params.yaml
section is `fresnel/<name>/params.schema.yaml`. `families()` finds every such package, so
adding a family edits no list: the CLI (commands, user errors), the Snakefile (rule files,
`rule all`), DVC's metrics and plots, `fresnel demo-targets` (the Makefile), the params schema
and the layering test all read it.

This module imports nothing from the package at load time (families are imported by name),
so anything may read it: the Snakefile, the CLI and the tests.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
FAMILY_FLOOR = "families"

# Shared units, bottom first. A unit imports its own modules and lower floors only, and the
# families (all on FAMILY_FLOOR) never import each other.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("fresnel", "io", "registry"),
    ("device", "config", "params", "images", "video"),
    ("provenance", "render", "metrics"),
    ("training",),
    ("data",),  # download, matte, backbones, features, shards
    ("vlm",),  # VLM density maps: guidance for the decoder's data
    (FAMILY_FLOOR,),
    ("pipeline",),
    ("cli",),
)


@dataclass(frozen=True)
class Smoke:
    """A tiny training run of the family's own commands, for the contract test
    (tests/test_contract.py): `files` are written into {work} and `prepare` makes data in
    {data} ({work}/data); `train`
    trains into {run} (all `fresnel` command lines); the run is killed when a file matching
    `checkpoints` appears in {run}, then the same command plus `resume` continues from
    {latest} (the newest such file). `final` must then equal an uninterrupted run's, byte for
    byte (`file:key`: the tensors under `key`, for formats that also store wall-clock time)."""

    train: str
    checkpoints: str
    final: str
    resume: str = ""
    prepare: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Family:
    name: str  # the package, the params.yaml section and the rule prefix
    title: str  # as its guide names it
    guide: str  # the training guide (a file of the project's guides)
    order: int  # position in tables, help and docs
    rules: tuple[str, ...]  # rule files, relative to the repository
    options: tuple[str, ...] = ()  # "module:Dataclass" loaded through config.apply_overrides
    errors: tuple[str, ...] = ()  # "module:Exception": user errors, one line through the CLI
    checks: tuple[str, ...] = ()  # "module:function": params -> problems the schema cannot state
    demo_targets: tuple[str, ...] = ()  # what `make demo` builds
    tables: tuple[str, ...] = ()  # the tables `make demo` prints (files of demo_targets)
    presentation: dict = field(default_factory=dict)  # rule -> DVC metrics / plots ({out})
    all_targets: Callable[[dict], list[str]] = lambda config: []  # `rule all`, from params
    smoke: Smoke | None = None

    @property
    def doc(self) -> str:
        return f"docs/{self.name}.md"

    @property
    def schema(self) -> Path:
        return PACKAGE_DIR / self.name / "params.schema.yaml"

    def cli(self):
        return importlib.import_module(f"fresnel.{self.name}.cli")

    def option_classes(self) -> list[type]:
        return [resolve(ref) for ref in self.options]

    def error_classes(self) -> list[type[Exception]]:
        return [resolve(ref) for ref in self.errors]


def resolve(ref: str):
    """ "package.module:Name" -> the object."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@cache
def families() -> tuple[Family, ...]:
    """Every `fresnel/<name>/family.py`'s FAMILY, in their declared order."""
    found = []
    for info in pkgutil.iter_modules([str(PACKAGE_DIR)]):
        if info.ispkg and (PACKAGE_DIR / info.name / "family.py").is_file():
            family = importlib.import_module(f"fresnel.{info.name}.family").FAMILY
            if family.name != info.name:
                raise ValueError(f"fresnel/{info.name}/family.py declares {family.name!r}")
            found.append(family)
    return tuple(sorted(found, key=lambda f: (f.order, f.name)))


def family(name: str) -> Family:
    for candidate in families():
        if candidate.name == name:
            return candidate
    raise KeyError(f"no family {name!r}: known {', '.join(f.name for f in families())}")


def floors() -> tuple[tuple[str, ...], ...]:
    """FLOORS with the family floor filled in from the registry."""
    names = tuple(f.name for f in families())
    return tuple(names if floor == (FAMILY_FLOOR,) else floor for floor in FLOORS)


def params_checks() -> list[Callable[[dict], list[str]]]:
    return [resolve(ref) for f in families() for ref in f.checks]


def demo_targets() -> list[str]:
    return [t for f in families() for t in f.demo_targets]


def rule_files() -> list[str]:
    return [r for f in families() for r in f.rules]


def presentation() -> dict:
    """What `dvc metrics show` / `dvc plots show` present of each rule's outputs."""
    return {rule: shown for f in families() for rule, shown in f.presentation.items()}
