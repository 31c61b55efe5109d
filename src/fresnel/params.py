"""params.yaml loading and validation against workflow/schemas/params.schema.yaml.

Errors name the key's path (`shards.shard_size: 'fast' is not of type 'integer'`), so a
typo fails before any job runs.
"""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml does not match its schema."""


def load_schema(path: Path = SCHEMA_PATH) -> dict:
    return yaml.safe_load(path.read_text())


def _describe(error: jsonschema.ValidationError) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        return "; ".join(f"{'.'.join(filter(None, [path, k]))}: unknown key" for k in extra)
    if error.validator == "required":
        missing = error.message.split("'")[1]
        return f"{'.'.join(filter(None, [path, missing]))}: required key is missing"
    return f"{path or '<top level>'}: {error.message}"


def validate(params: dict, source: str = "params.yaml", schema: dict | None = None) -> dict:
    """Raise ParamsError listing every problem in `params`, each with its key path."""
    validator = jsonschema.Draft202012Validator(schema or load_schema())
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(e) for e in errors] or _cross_field_problems(params)
    if problems:
        lines = "\n".join(f"  {p}" for p in problems)
        raise ParamsError(f"{source} is invalid:\n{lines}")
    return params


def _cross_field_problems(params: dict) -> list[str]:
    """Rules between sections that a JSON schema cannot state readably."""
    problems = []
    decoder, vlm = params.get("decoder", {}), params.get("vlm", {})
    if decoder.get("use_vlm_guidance") and not vlm.get("use_vlm"):
        problems.append(
            "decoder.use_vlm_guidance: needs vlm.use_vlm: true (the density maps come from "
            "the vlm stage); turn one on or the other off"
        )
    return problems


def load(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    try:
        params = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from exc
    return validate(params or {}, source=str(path))
