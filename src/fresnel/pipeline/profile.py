"""The profile's `config:` entries, kept when the command line has a `--config` too.

Snakemake lets a command-line option replace the profile's value of the same option whole,
so `snakemake --profile cuda --config 'launch=...'` would lose the profile's `target: cuda`
and run every GPU rule on the CPU. The Snakefile adds back each entry of the profile's
`config:` that the command line did not set (`with_profile_config`).
"""

from __future__ import annotations

import os
import sys

import yaml


def profile_names(argv: list[str] | None = None, env=os.environ) -> list[str]:
    """The profiles this snakemake was started with: `--profile` (each, in order), else
    $SNAKEMAKE_PROFILE."""
    argv = sys.argv if argv is None else argv
    names = []
    for i, arg in enumerate(argv):
        if arg == "--profile" and i + 1 < len(argv):
            names.append(argv[i + 1])
        elif arg.startswith("--profile="):
            names.append(arg.partition("=")[2])
    return names or ([env["SNAKEMAKE_PROFILE"]] if env.get("SNAKEMAKE_PROFILE") else [])


def profile_config(names: list[str]) -> dict:
    """The `config:` of those profiles (a later profile's entries win), as Snakemake reads
    them: a mapping, or a list of `key=value` strings."""
    from snakemake.cli import get_profile_dir, parse_config

    merged: dict = {}
    for name in names:
        found = get_profile_dir(name)
        if found is None:
            continue  # Snakemake itself has refused an unknown profile before this runs
        entries = (yaml.safe_load(found[1].read_text()) or {}).get("config") or {}
        merged.update(parse_config(entries) if isinstance(entries, list) else entries)
    return merged


def with_profile_config(config: dict, argv: list[str] | None = None) -> list[str]:
    """Add to `config` each entry of the profile's `config:` that it lacks (inside mappings
    too); return their dotted keys."""
    return _fill(config, profile_config(profile_names(argv)))


def _fill(config: dict, defaults: dict, prefix: str = "") -> list[str]:
    added = []
    for key, value in defaults.items():
        if key not in config:
            config[key] = value
            added.append(prefix + key)
        elif isinstance(value, dict) and isinstance(config[key], dict):
            added += _fill(config[key], value, f"{prefix}{key}.")
    return added
