"""params.yaml loading and validation against workflow/schemas/params.schema.yaml and the
families' sections of it (`src/fresnel/<family>/params.schema.yaml`).

Errors name the key's path (`shards.shard_size: 'fast' is not of type 'integer'`), so a
typo fails before any job runs.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from fresnel import registry

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml does not match its schema."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    """The shared schema with every family's section (and its `targets` keys) merged in."""
    schema = yaml.safe_load(path.read_text())
    for family in registry.families():
        part = yaml.safe_load(family.schema.read_text())
        schema["$defs"].update(part.get("$defs", {}))
        schema["properties"][family.name] = part["section"]
        schema["required"].append(family.name)
        schema["properties"]["targets"]["properties"].update(part.get("targets", {}))
    return schema


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return "; ".join(f"{'.'.join(filter(None, [path, k]))}: unknown key" for k in extra)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{'.'.join(filter(None, [path, missing]))}: required key is missing"
    return f"{path or '<top level>'}: {error.message}"


def validate(params: dict, source: str = "params.yaml", schema: dict | None = None,
             checks=()) -> dict:  # fmt: skip
    """Raise ParamsError listing every problem in `params`, each with its key path.
    `checks`: more functions params -> problems (the families': registry.params_checks())."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors] or _cross_field_problems(params)
    if not problems:
        problems = [p for check in checks for p in check(params)]
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ParamsError(f"{source} is invalid:\n{lines}")
    return params


def parse_command_line_values(params: dict, schema: dict | None = None) -> dict:
    """Snakemake's `--config 'decoder={train: {epochs: 5}}'` leaves nested values as strings
    ('5'). Where the schema refuses the string but accepts the YAML value it spells, use that
    value; anything else is left for `validate` to report."""
    schema = schema or load_schema()
    defs = {"$defs": schema.get("$defs", {})}

    def fits(value, subschema) -> bool:
        return jsonschema.Draft202012Validator({**subschema, **defs}).is_valid(value)

    def walk(node, subschema):
        if isinstance(node, dict):
            props = subschema.get("properties", {})
            return {k: walk(v, props[k]) if k in props else v for k, v in node.items()}
        if isinstance(node, str) and not fits(node, subschema):
            return next((v for v in _readings(node) if fits(v, subschema)), node)
        return node

    return walk(params, schema)


def ordered_like(tree, reference):
    """`tree` with its keys in `reference`'s order, others after them. Snakemake compares a
    rule's params in order, so values from --configfile must not reorder a section."""
    if not isinstance(tree, dict) or not isinstance(reference, dict):
        return tree
    keys = [key for key in reference if key in tree] + [key for key in tree if key not in reference]
    return {key: ordered_like(tree[key], reference.get(key)) for key in keys}


def _readings(text: str) -> list:
    """What a command-line string may mean: its YAML value, and a float for '3e-4' (which
    YAML 1.1 reads as a string)."""
    readings = []
    with contextlib.suppress(yaml.YAMLError):
        readings.append(yaml.safe_load(text))
    with contextlib.suppress(ValueError):
        readings.append(float(text))
    return readings


def _cross_field_problems(params: dict) -> list[str]:
    """Rules between sections that a JSON schema cannot state readably."""
    problems = []
    decoder, vlm = params.get("decoder", {}).get("train", {}), params.get("vlm", {})
    if decoder.get("use_vlm_guidance") and not vlm.get("use_vlm"):
        problems.append(
            "decoder.train.use_vlm_guidance: needs vlm.use_vlm: true (the density maps come from "
            "the vlm stage); turn one on or the other off"
        )
    url = urlsplit(str(vlm.get("vlm_url", "")))
    if url.username or url.password:
        problems.append(
            "vlm.vlm_url: holds credentials (user:token@host), which would be written to "
            "provenance records and Snakemake's metadata; remove them from the URL and put the "
            "token in the environment variable that vlm.api_key_env names"
        )
    return problems


def read_yaml(path: str | Path = "params.yaml") -> dict:
    """The file's mapping; a syntax error names the file, line and column."""
    path = Path(path)
    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None


def set_values(path: str | Path, values: dict[str, Any]) -> None:
    """Write `values` ({"decoder.train.epochs": 5, ...}) into the YAML file at `path`,
    keeping its comments, order and layout (ruamel's round trip, nulls spelled `null`)."""
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 4096
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null")
    )
    path = Path(path)
    document = rt.load(path.read_text())
    for dotted, value in values.items():
        *parents, key = dotted.split(".")
        node = document
        for parent in parents:
            node = node.setdefault(parent, {})
        node[key] = value
    with path.open("w") as stream:
        rt.dump(document, stream)


def load(path: str | Path = "params.yaml") -> dict:
    return validate(read_yaml(path), source=str(path))


def for_command(file: str | None) -> dict:
    """Params for a hand-run command: `file`, else ./params.yaml, else the repository's.
    Settings the guide's flags do not cover (hub ids, matte geometry) come from here."""
    import logging

    path = Path(file or "params.yaml")
    if file is None and not path.exists():
        path = REPO_ROOT / "params.yaml"
    logging.getLogger("fresnel").info("settings not given as flags come from %s", path)
    return load(path)
