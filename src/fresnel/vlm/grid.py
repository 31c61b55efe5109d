"""Prompts for the VLM and parsers that turn its free-form answers into data, or reject them.

Three questions are asked:

* ``grid_prompt(n)``: an n x n importance grid (n in 4, 8, 16), values 0.0-1.0, as JSON;
* ``FACE_PROMPT``: does the image contain a face (smart mode), yes or no;
* ``LANDMARK_PROMPT``: left_eye, right_eye, nose, mouth as NORMALISED coordinates
  (x = fraction of the width from the left, y = fraction of the height from the top, 0-1).

Parsers accept what models actually send: code fences, prose around the data, numbers as
strings, JSON or whitespace/comma/markdown-table rows, "Row 3:" labels, trailing commas.
Exactly one row too many is repaired (the odd-length row, else the last, is dropped) and the
repair recorded. Anything else that does not fit raises ``AnswerRejected`` whose ``code`` is
one of ``REJECTION_CODES`` and whose ``reason`` says what was wrong.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import numpy as np

GRID_SIZES = (4, 8, 16)
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth")
REJECTION_CODES = (
    "no_grid",
    "too_few_rows",
    "too_many_rows",
    "wrong_columns",
    "wrong_size",
    "non_numeric",
    "non_finite",
    "negative",
    "all_zero",
    "unclear_yes_no",
    "no_landmarks",
    "missing_landmark",
    "out_of_range",
)

FACE_PROMPT = (
    "Does this image contain a clearly visible human face? Answer with one word: yes or no."
)

LANDMARK_PROMPT = (
    "Locate the facial landmarks of the main face in this image. Give every position as "
    "normalised image coordinates, not pixels: x is the fraction of the image width from the "
    "left edge (0.0 to 1.0) and y is the fraction of the image height from the top edge "
    "(0.0 to 1.0). left_eye is the eye on the left side of the image, right_eye the one on the "
    "right; nose is the nose tip; mouth is the centre of the mouth. Answer with only JSON of "
    'this form: {"left_eye": [x, y], "right_eye": [x, y], "nose": [x, y], "mouth": [x, y]}'
)


def grid_prompt(n: int) -> str:
    """The importance-grid question for an n x n grid."""
    check_grid_size(n)
    return (
        "Rate where a 3D reconstruction model needs the most detail in this image. Divide the "
        f"image into a {n}x{n} grid: {n} rows from top to bottom, {n} columns from left to "
        "right. Give each cell an importance from 0.0 to 1.0: 1.0 = critical detail (eyes, "
        "text, fine facial features), 0.7 = high (mouth, nose, hands, sharp edges), "
        "0.4 = medium (skin, hair, fabric, object surfaces), 0.1 = low (plain background, "
        f"sky, empty space). Answer with only a JSON array of {n} arrays of {n} numbers, "
        "without explanation. Example of the format for a 2x2 grid: [[0.1, 0.4], [0.7, 1.0]]"
    )


def check_grid_size(n: int) -> None:
    if n not in GRID_SIZES:
        raise ValueError(f"vlm grid_size must be one of {GRID_SIZES}, got {n!r}")


class AnswerRejected(ValueError):
    """A VLM answer that cannot be used (or repaired); `code` classifies, `reason` explains."""

    def __init__(self, code: str, reason: str):
        if code not in REJECTION_CODES:
            raise ValueError(f"unknown rejection code {code!r}")
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = f"{code}: {reason}"


@dataclass(frozen=True)
class ParsedGrid:
    """An n x n grid of non-negative finite values, not all zero; `repairs` says what changed."""

    values: np.ndarray
    repairs: tuple[str, ...] = field(default=())


# ------------------------------------------------------------------------- text helpers

_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.S)
_ROW_LABEL = re.compile(r"^\s*(?:[-*]\s*)?row\s*\d+\s*[:.)=-]?\s*", re.I)
_TOKEN_SPLIT = re.compile(r"[,;\s]+")
_STRIP_CHARS = "[](){}|"
_TRAILING_COMMA = re.compile(r",\s*([\]}])")


def _candidates(text: str) -> list[str]:
    """Fenced blocks first (models put the data there), then the whole answer."""
    return [*_FENCE.findall(text), text]


def _as_float(value) -> float | None:
    """A JSON value or token as a float, None when it is not a number."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        token = value.strip().strip("\"'`*")
        try:
            return float(token)
        except ValueError:
            return None
    return None


def _json_values(text: str):
    """Every JSON value found in `text`: the whole text, else its outermost [...] / {...}."""
    attempts = [text.strip()]
    for opener, closer in (("[", "]"), ("{", "}")):
        start, end = text.find(opener), text.rfind(closer)
        if 0 <= start < end:
            attempts.append(text[start : end + 1])
    found = []
    for attempt in attempts:
        for candidate in (attempt, _TRAILING_COMMA.sub(r"\1", attempt)):
            try:
                found.append(json.loads(candidate))
                break
            except ValueError:
                continue
    return found


# ------------------------------------------------------------------------- grid


def _rows_in_json(value, n: int) -> tuple[list[list], list[str]] | None:
    """Rows from a JSON list of lists, a flat list of n*n, or a dict holding one of those."""
    if isinstance(value, dict):
        for inner in value.values():
            rows = _rows_in_json(inner, n)
            if rows is not None:
                return rows
        return None
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(row, list) for row in value):
        return [list(row) for row in value], []
    if len(value) == n * n and not any(isinstance(v, (list, dict)) for v in value):
        rows = [value[i * n : (i + 1) * n] for i in range(n)]
        return rows, [f"reshaped a flat list of {n * n} values into {n} rows"]
    return None


def _rows_in_lines(text: str) -> list[list[str]]:
    """Lines whose tokens are mostly numbers (prose and table rules are skipped)."""
    rows = []
    for line in text.splitlines():
        line = _ROW_LABEL.sub("", line)
        line = "".join(" " if ch in _STRIP_CHARS else ch for ch in line)
        tokens = [t for t in _TOKEN_SPLIT.split(line) if t]
        numeric = sum(_as_float(t) is not None for t in tokens)
        if len(tokens) >= 2 and numeric * 2 > len(tokens):
            rows.append(tokens)
    return rows


def _extract_rows(text: str, n: int) -> tuple[list[list], list[str]]:
    for candidate in _candidates(text):
        for value in _json_values(candidate):
            rows = _rows_in_json(value, n)
            if rows is not None:
                return rows
        rows = _rows_in_lines(candidate)
        if rows:
            return rows, []
    raise AnswerRejected("no_grid", "no rows of numbers found in the answer")


def _fix_row_count(rows: list[list], n: int) -> tuple[list[list], list[str]]:
    widths = {len(row) for row in rows}
    if len(widths) == 1 and n not in widths:
        raise AnswerRejected(
            "wrong_size", f"the answer is a {len(rows)}x{widths.pop()} grid, need {n}x{n}"
        )
    if len(rows) < n:
        raise AnswerRejected("too_few_rows", f"got {len(rows)} rows, need {n}")
    if len(rows) > n + 1:
        raise AnswerRejected("too_many_rows", f"got {len(rows)} rows, need {n}")
    if len(rows) == n:
        return rows, []
    odd = [i for i, row in enumerate(rows) if len(row) != n]
    drop = odd[0] if len(odd) == 1 else len(rows) - 1
    repaired = rows[:drop] + rows[drop + 1 :]
    return repaired, [f"dropped extra row {drop + 1} of {len(rows)} (need {n} rows)"]


def _numeric_grid(rows: list[list], n: int) -> np.ndarray:
    for i, row in enumerate(rows):
        if len(row) != n:
            raise AnswerRejected("wrong_columns", f"row {i + 1} has {len(row)} values, need {n}")
    values = np.empty((n, n), dtype=np.float64)
    for i, row in enumerate(rows):
        for j, raw in enumerate(row):
            value = _as_float(raw)
            if value is None:
                raise AnswerRejected(
                    "non_numeric", f"row {i + 1}, column {j + 1} is {str(raw)[:40]!r}"
                )
            values[i, j] = value
    return values


def _check_values(values: np.ndarray) -> None:
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        i, j = bad[0]
        raise AnswerRejected("non_finite", f"row {i + 1}, column {j + 1} is {values[i, j]}")
    negative = np.argwhere(values < 0)
    if negative.size:
        i, j = negative[0]
        raise AnswerRejected("negative", f"row {i + 1}, column {j + 1} is {values[i, j]}")
    if not values.any():
        raise AnswerRejected("all_zero", "every cell is 0: no importance information")


def parse_grid(text: str, n: int) -> ParsedGrid:
    """The n x n importance grid in a VLM answer; raises AnswerRejected when there is none."""
    check_grid_size(n)
    rows, repairs = _extract_rows(text, n)
    rows, more = _fix_row_count(rows, n)
    values = _numeric_grid(rows, n)
    _check_values(values)
    return ParsedGrid(values, tuple(repairs + more))


# ------------------------------------------------------------------------- yes / no

_YES = frozenset({"yes", "y", "true", "yeah", "yep", "affirmative"})
_NO = frozenset({"no", "n", "false", "nope", "none", "negative"})


def parse_yes_no(text: str) -> bool:
    """The first yes-like or no-like word of the answer decides (JSON true/false counts)."""
    for word in re.findall(r"[a-z]+", text.lower()):
        if word in _YES:
            return True
        if word in _NO:
            return False
    raise AnswerRejected("unclear_yes_no", f"no yes/no in the answer {_clip(text)!r}")


# ------------------------------------------------------------------------- landmarks

_NUMBER = r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?"
_ALIASES = {
    "lefteye": "left_eye",
    "righteye": "right_eye",
    "nose": "nose",
    "nosetip": "nose",
    "mouth": "mouth",
    "mouthcenter": "mouth",
    "mouthcentre": "mouth",
}


def _landmark_name(key: str) -> str | None:
    return _ALIASES.get(re.sub(r"[^a-z]", "", str(key).lower()))


def _point(value) -> tuple | None:
    """(x, y) raw values from [x, y], {"x": .., "y": ..} or "x, y"; None for other shapes."""
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return tuple(value)
    if isinstance(value, dict):
        lower = {str(k).lower(): v for k, v in value.items()}
        if "x" in lower and "y" in lower:
            return lower["x"], lower["y"]
    if isinstance(value, str):
        numbers = re.findall(_NUMBER, value)
        if len(numbers) == 2:
            return tuple(numbers)
    return None


def _landmarks_in_json(value) -> dict[str, tuple]:
    found: dict[str, tuple] = {}
    if isinstance(value, dict):
        for key, inner in value.items():
            name = _landmark_name(key)
            point = _point(inner)
            if name and point is not None:
                found.setdefault(name, point)
            elif isinstance(inner, (dict, list)):
                for sub, pt in _landmarks_in_json(inner).items():
                    found.setdefault(sub, pt)
    elif isinstance(value, list):
        for inner in value:
            for sub, pt in _landmarks_in_json(inner).items():
                found.setdefault(sub, pt)
    return found


def _landmarks_in_prose(text: str) -> dict[str, tuple]:
    """'left eye: (0.31, 0.42)'-style mentions."""
    found: dict[str, tuple] = {}
    pattern = re.compile(
        rf"(left[\s_-]?eye|right[\s_-]?eye|nose(?:[\s_-]?tip)?|mouth(?:[\s_-]?cent(?:er|re))?)"
        rf"[^0-9+\-.]{{0,20}}({_NUMBER})\s*[,;\s]\s*({_NUMBER})",
        re.I,
    )
    for match in pattern.finditer(text):
        name = _landmark_name(match.group(1))
        if name:
            found.setdefault(name, (match.group(2), match.group(3)))
    return found


def _collect_landmarks(text: str) -> dict[str, tuple]:
    for candidate in _candidates(text):
        for value in _json_values(candidate):
            found = _landmarks_in_json(value)
            if found:
                return found
    return _landmarks_in_prose(text)


def parse_landmarks(text: str) -> dict[str, tuple[float, float]]:
    """left_eye, right_eye, nose, mouth as normalised (x, y) in [0, 1]; else AnswerRejected."""
    found = _collect_landmarks(text)
    if not found:
        raise AnswerRejected("no_landmarks", f"no landmark coordinates in {_clip(text)!r}")
    missing = [name for name in LANDMARKS if name not in found]
    if missing:
        raise AnswerRejected("missing_landmark", f"no position for {', '.join(missing)}")
    points = {}
    for name in LANDMARKS:
        x, y = (_as_float(v) for v in found[name])
        if x is None or y is None:
            raise AnswerRejected("non_numeric", f"{name} is {found[name]!r}")
        if not (math.isfinite(x) and math.isfinite(y)):
            raise AnswerRejected("non_finite", f"{name} is ({x}, {y})")
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise AnswerRejected(
                "out_of_range",
                f"{name} ({x:g}, {y:g}) is outside 0-1: the prompt asks for fractions of the "
                "image width and height, not pixels",
            )
        points[name] = (x, y)
    return points


def _clip(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
