"""One config mechanism for every family: dataclass trees, presets, Python config files and
overrides (the guides' `--config configs/my_config.py` style; nanoGPT's configurator idea).

    cfg = get_config("tiny", PRESETS, TrainConfig)          # a preset by name
    cfg = get_config("configs/pbr/x.py", PRESETS, TrainConfig)  # a file defining get_config()
    apply_overrides(cfg, {"model": {"use_gan": False}, "training.epochs": 5})

Overrides take nested dicts or dotted keys; an unknown key is an error that names it and
the known fields; CLI strings get the type of the field they replace. Config files are
Python and run as code: load only files you trust.

Command lines: `add_option_flags(parser, Options, style)` gives every field a flag and
`options_from_args(args, Options, base)` loads the flags given (over a preset's values)
through `apply_overrides`; the one builder of every family's CLI. `style` is the guide's
spelling of booleans, and with each a switch can be set both ways:

    negatable   --use_amp / --no-use_amp          (argparse's BooleanOptionalAction)
    switch      --bind_to_mesh / --no_bind_to_mesh (upstream's store_true, plus its opposite)
    value       --use_vae [true|false]             (a bare flag means true)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import importlib.util
import sys
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, asdict, fields, is_dataclass
from pathlib import Path
from typing import Any

TRUE_WORDS, FALSE_WORDS = ("true", "1", "yes", "on"), ("false", "0", "no", "off")
BOOLEAN_STYLES = ("negatable", "switch", "value")


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
            kind = field_types(type(target))[name]
            setattr(target, name, coerce(current, value, ".".join(path), kind))
        elif not is_dataclass(current):
            raise ConfigError(f"{'.'.join(path[: depth + 1])!r} is not a section")
        else:
            target = current


def field_types(cls) -> dict[str, Any]:
    """Each field's declared type, optional types reduced to the type they allow besides None
    (`int | None` -> int)."""
    hints = typing.get_type_hints(cls)
    return {f.name: _non_none(hints[f.name]) for f in fields(cls)}


def _non_none(kind):
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0] if len(args) == 1 else kind
    return kind


def coerce(current: Any, value: Any, key: str, kind: Any = None) -> Any:
    """Give `value` the type of the field it replaces (CLI strings, ints for floats, lists);
    where the field holds None, its declared `kind` decides."""
    if current is None and value is not None and kind in (bool, int, float):
        current = kind()
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


def parse_bool(text: str) -> bool:
    if str(text).lower() in TRUE_WORDS:
        return True
    if str(text).lower() in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_option_flags(
    parser: argparse.ArgumentParser,
    options: type,
    style: str = "negatable",
    skip: Iterable[str] = (),
    dash: bool = False,
    help: dict[str, str] | None = None,
    choices: dict[str, Iterable] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """A flag for every field of the dataclass `options` (not those in `skip`), named after the
    field (`dash`: underscores become hyphens), its type from the annotation, its default (the
    dataclass's, or the command's own `defaults` that it passes to `options_from_args`) shown
    in the help. Flags not given stay out of the namespace: `options_from_args` then keeps the
    preset's or the dataclass's value."""
    if style not in BOOLEAN_STYLES:
        raise ValueError(f"style {style!r}: use one of {', '.join(BOOLEAN_STYLES)}")
    kinds, helps, allowed = field_types(options), help or {}, choices or {}
    for f in fields(options):
        if f.name in skip or is_dataclass(kinds[f.name]):
            continue
        default = (defaults or {}).get(f.name, f.default)
        if default is MISSING:
            default = f.default_factory()  # type: ignore[misc]
        flag = "--" + (f.name.replace("_", "-") if dash else f.name)
        text = f"{helps.get(f.name, f.metadata.get('help', ''))} (default: {default})".lstrip()
        common = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if kinds[f.name] is bool:
            _add_boolean(parser, flag, style, dash, common)
        else:
            kind = kinds[f.name] if kinds[f.name] in (int, float, str) else str
            parser.add_argument(flag, type=kind, choices=allowed.get(f.name), **common)


def _add_boolean(parser, flag: str, style: str, dash: bool, common: dict) -> None:
    if style == "negatable":
        parser.add_argument(flag, action=argparse.BooleanOptionalAction, **common)
    elif style == "value":
        parser.add_argument(flag, nargs="?", const=True, type=parse_bool, metavar="true|false",
                            **common)  # fmt: skip
    else:
        parser.add_argument(flag, action="store_const", const=True, **common)
        opposite = "--no" + ("-" if dash else "_") + flag.removeprefix("--")
        parser.add_argument(opposite, action="store_const", const=False, dest=common["dest"],
                            default=argparse.SUPPRESS, help=f"turn {flag} off")  # fmt: skip


def given_options(args: argparse.Namespace, options: type) -> dict[str, Any]:
    """The fields of `options` that the command line set."""
    return {f.name: getattr(args, f.name) for f in fields(options) if hasattr(args, f.name)}


def options_from_args(args: argparse.Namespace, options: type, base: dict | None = None):
    """`options`' defaults, then `base` (a preset), then the flags given, each through
    apply_overrides (typed, one-line errors naming the key)."""
    return apply_overrides(options(), {**(base or {}), **given_options(args, options)})
