"""Checks of the `pbr` params that the JSON schema cannot state, run when the Snakefile loads
(before any job): the teacher's and student's preset or config file with its overrides must
build a valid config, and a `local:` dataset must have the guide's input/ and output/."""

from __future__ import annotations

from pathlib import Path

from fresnel.pbr import config as teacher_config
from fresnel.pbr import student_config


def problems(params: dict) -> list[str]:
    pbr = params.get("pbr") or {}
    found = []
    for section, build in (("teacher", _teacher), ("student", _student)):
        cfg = pbr.get(section)
        if cfg is None:
            continue
        try:
            build(cfg["config"], cfg.get("overrides") or {})
        except (ValueError, FileNotFoundError) as exc:
            found.append(f"pbr.{section}: {exc}")
    source = str((pbr.get("dataset") or {}).get("source", ""))
    if source.startswith("local:"):
        root = Path(source.removeprefix("local:"))
        missing = [d for d in ("input", "output") if not (root / d).is_dir()]
        if missing:
            found.append(
                f"pbr.dataset.source: {root} has no {' or '.join(missing)} folder (the guide's "
                "layout: input/ renders and render_metadata.json, output/<material>/ maps)"
            )
    return found


def _teacher(name: str, overrides: dict) -> None:
    teacher_config.apply_overrides(teacher_config.get_config(name), overrides)


def _student(name: str, overrides: dict) -> None:
    cfg = student_config.apply_overrides(student_config.get_student_config(name), overrides)
    student_config.validate(cfg, "student config")
