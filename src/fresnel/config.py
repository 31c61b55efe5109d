"""One config mechanism for every family: dataclass trees, presets, Python config files and
overrides (the guides' `--config configs/my_config.py` style; nanoGPT's configurator idea).

    cfg = get_config("tiny", PRESETS, TrainConfig)          # a preset by name
    cfg = get_config("configs/pbr/x.py", PRESETS, TrainConfig)  # a file defining get_config()
    apply_overrides(cfg, {"model": {"use_gan": False}, "training.epochs": 5})

Overrides take nested dicts or dotted keys; an unknown key is an error that names it and
the known fields; CLI strings get the type of the field they replace. Config files are
Python and run as code: load only files you trust.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import sys
from collections.abc import Callable
from dataclasses import asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes"), ("false", "0", "no")


class ConfigError(ValueError):
    """An invalid option value, an unknown option name or an unusable config file."""


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}, "c.d": 2} -> {"a.b": 1, "c.d": 2}."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def apply_overrides(cfg, overrides: dict):
    """Set options of the dataclass tree `cfg` in place and return it (see module doc)."""
    for key, value in flatten(overrides).items():
        _set(cfg, key.split("."), value)
    return cfg


def _set(cfg, path: list[str], value: Any) -> None:
    target = cfg
    for depth, name in enumerate(path):
        names = {f.name for f in fields(target)}
        if name not in names:
            where = ".".join(path[:depth]) or "config"
            raise ConfigError(
                f"unknown option {'.'.join(path)!r}: {where} has no field {name!r} "
                f"(known: {', '.join(sorted(names))})"
            )
        current = getattr(target, name)
        if depth == len(path) - 1:
            if is_dataclass(current):
                raise ConfigError(f"{'.'.join(path)!r} is a section; set its fields instead")
            setattr(target, name, coerce(current, value, ".".join(path)))
        elif not is_dataclass(current):
            raise ConfigError(f"{'.'.join(path[: depth + 1])!r} is not a section")
        else:
            target = current


def coerce(current: Any, value: Any, key: str) -> Any:
    """Give `value` the type of the field it replaces (CLI strings, ints for floats, lists)."""
    if isinstance(value, str) and current is not None and not isinstance(current, str):
        if isinstance(current, bool):
            if value.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ConfigError(f"{key}={value!r}: expected true or false")
            return value.lower() in TRUE_WORDS
        try:
            return type(current)(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected {type(current).__name__}") from None
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, tuple):
        return list(value)
    return copy.deepcopy(value)


def to_dict(cfg) -> dict:
    """A plain nested dict (safe inside weights_only checkpoints)."""
    return asdict(cfg)


def load_config_file(path, expected: type, aliases: dict[str, str] | None = None):
    """Run a Python config file and return its `get_config()`, which must be an `expected`.

    `aliases` maps module names a guide's config files import to this package's modules
    ({"train_config": "fresnel.pbr.config"}), so the guide's template runs unchanged."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    spec = importlib.util.spec_from_file_location(f"_fresnel_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    with _importable_as(aliases or {}):
        spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: defines no get_config() returning a {expected.__name__}")
    cfg = module.get_config()
    if not isinstance(cfg, expected):
        raise ConfigError(
            f"{path}: get_config() returned {type(cfg).__name__}, expected "
            f"{expected.__module__}.{expected.__name__}"
        )
    return cfg


@contextlib.contextmanager
def _importable_as(aliases: dict[str, str]):
    added = [name for name in aliases if name not in sys.modules]
    for name in added:
        sys.modules[name] = importlib.import_module(aliases[name])
    try:
        yield
    finally:
        for name in added:
            del sys.modules[name]


def get_config(name_or_path, presets: dict[str, Callable], expected: type, aliases=None):
    """A preset by name (also as "<name>.py" when no such file exists) or a config file."""
    name = str(name_or_path)
    stem = name.removesuffix(".py")
    if not Path(name).is_file() and stem in presets:
        return presets[stem]()
    if name.endswith(".py") or Path(name).is_file():
        return load_config_file(name, expected, aliases)
    raise ConfigError(f"unknown config {name!r}: use one of {', '.join(presets)} or a .py file")
