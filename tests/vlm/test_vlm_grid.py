"""Prompts and answer parsing: grids (4, 8, 16), yes/no, landmarks; repairs and rejections."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fresnel.vlm.grid import (
    FACE_PROMPT,
    LANDMARK_PROMPT,
    LANDMARKS,
    AnswerRejected,
    grid_prompt,
    parse_grid,
    parse_landmarks,
    parse_yes_no,
)


def _grid(n: int, seed: int = 0) -> np.ndarray:
    return np.round(np.random.default_rng(seed).uniform(0.05, 1.0, (n, n)), 2)


def _rejected(code: str, text: str, n: int = 4) -> AnswerRejected:
    with pytest.raises(AnswerRejected) as info:
        parse_grid(text, n)
    assert info.value.code == code, info.value.reason
    assert info.value.reason.startswith(code)
    return info.value


@pytest.mark.parametrize("n", [4, 8, 16])
def test_prompt_names_the_size_and_json_format(n):
    prompt = grid_prompt(n)
    assert f"{n}x{n}" in prompt and f"JSON array of {n} arrays of {n} numbers" in prompt


def test_prompt_rejects_other_sizes():
    with pytest.raises(ValueError, match="4, 8, 16"):
        grid_prompt(5)


@pytest.mark.parametrize("n", [4, 8, 16])
def test_plain_json_grid(n):
    values = _grid(n, n)
    parsed = parse_grid(json.dumps(values.tolist()), n)
    np.testing.assert_array_equal(parsed.values, values)
    assert parsed.repairs == ()


@pytest.mark.parametrize("n", [4, 8, 16])
def test_fenced_and_chatty_json(n):
    values = _grid(n, 1)
    text = (
        f"Sure! Here is the {n}x{n} importance grid [row-major]:\n```json\n"
        f"{json.dumps(values.tolist(), indent=1)}\n```\nThe eyes matter most (1.0)."
    )
    np.testing.assert_array_equal(parse_grid(text, n).values, values)


def test_numbers_as_strings_and_trailing_commas():
    values = _grid(4, 2)
    rows = ",\n".join("[" + ", ".join(f'"{v}"' for v in row) + ",]" for row in values)
    np.testing.assert_array_equal(parse_grid(f"[{rows},]", 4).values, values)


def test_whitespace_rows_with_labels_and_prose():
    values = _grid(8, 3)
    lines = [f"Row {i + 1}: " + "  ".join(f"{v:.2f}" for v in row) for i, row in enumerate(values)]
    text = "I rated 64 cells of the image.\n" + "\n".join(lines) + "\nHope this helps!"
    np.testing.assert_allclose(parse_grid(text, 8).values, values)


def test_comma_rows_and_markdown_table():
    values = _grid(4, 4)
    table = ["| c1 | c2 | c3 | c4 |", "|---|---|---|---|"]
    table += ["| " + " | ".join(str(v) for v in row) + " |" for row in values]
    np.testing.assert_array_equal(parse_grid("\n".join(table), 4).values, values)
    commas = "\n".join(", ".join(str(v) for v in row) for row in values)
    np.testing.assert_array_equal(parse_grid(commas, 4).values, values)


def test_dict_wrapper_and_flat_list_are_repaired_or_accepted():
    values = _grid(4, 5)
    wrapped = json.dumps({"grid": values.tolist(), "note": "eyes"})
    np.testing.assert_array_equal(parse_grid(wrapped, 4).values, values)
    flat = parse_grid(json.dumps(values.ravel().tolist()), 4)
    np.testing.assert_array_equal(flat.values, values)
    assert flat.repairs == ("reshaped a flat list of 16 values into 4 rows",)


def test_one_extra_row_is_dropped_and_recorded():
    values = _grid(4, 6)
    parsed = parse_grid(json.dumps([*values.tolist(), [0.5, 0.5, 0.5, 0.5]]), 4)
    np.testing.assert_array_equal(parsed.values, values)
    assert parsed.repairs == ("dropped extra row 5 of 5 (need 4 rows)",)


def test_extra_row_with_odd_length_is_the_one_dropped():
    values = _grid(4, 7)
    rows = [[0, 1, 2], *values.tolist()]  # a short header row first
    parsed = parse_grid(json.dumps(rows), 4)
    np.testing.assert_array_equal(parsed.values, values)
    assert parsed.repairs == ("dropped extra row 1 of 5 (need 4 rows)",)


def test_rejections_have_specific_reasons():
    good = _grid(4, 8).tolist()
    assert (
        "row 3 has 3 values"
        in _rejected("wrong_columns", json.dumps([*good[:2], good[2][:3], good[3]])).reason
    )
    assert "got 3 rows, need 4" in _rejected("too_few_rows", json.dumps(good[:3])).reason
    _rejected("too_many_rows", json.dumps(good + good[:2]))
    assert (
        "'high'" in _rejected("non_numeric", json.dumps([[*good[0][:3], "high"], *good[1:]])).reason
    )
    _rejected("all_zero", json.dumps(np.zeros((4, 4)).tolist()))
    assert "-0.5" in _rejected("negative", json.dumps([[-0.5, *good[0][1:]], *good[1:]])).reason
    _rejected("non_finite", "[" + ",".join(["[NaN, 1, 1, 1]"] + ["[1, 1, 1, 1]"] * 3) + "]")
    _rejected("non_finite", "\n".join(["1 1 1 inf"] + ["1 1 1 1"] * 3))
    _rejected("no_grid", "I cannot rate this image, sorry.")


def test_wrong_sized_grid_for_the_asked_size():
    reason = _rejected("wrong_size", json.dumps(_grid(8, 9).tolist()), n=4).reason
    assert "8x8 grid, need 4x4" in reason
    assert (
        "4x4 grid, need 8x8" in _rejected("wrong_size", json.dumps(_grid(4, 9).tolist()), 8).reason
    )
    _rejected("too_few_rows", json.dumps(_grid(8, 9)[:5].tolist()), n=8)


def test_yes_no_is_parsed_robustly():
    for text in ("Yes.", "yes", "YES, there is a face.", "Answer: yes", '{"face": true}', "y"):
        assert parse_yes_no(text) is True, text
    for text in ("No.", "no face here", "**No**", '{"has_face": false}', "There is no face."):
        assert parse_yes_no(text) is False, text
    with pytest.raises(AnswerRejected) as info:
        parse_yes_no("The picture shows a landscape.")
    assert info.value.code == "unclear_yes_no"
    assert "yes or no" in FACE_PROMPT


def test_landmarks_prompt_asks_for_normalised_coordinates():
    assert "normalised" in LANDMARK_PROMPT and "not pixels" in LANDMARK_PROMPT
    assert all(name in LANDMARK_PROMPT for name in LANDMARKS)


def test_landmarks_json_fenced_and_aliases():
    points = {"left_eye": [0.35, 0.4], "right_eye": [0.65, 0.41], "nose": [0.5, 0.55]}
    text = "```json\n" + json.dumps({**points, "Mouth Center": {"x": "0.5", "y": 0.7}}) + "\n```"
    parsed = parse_landmarks(text)
    assert parsed == {
        "left_eye": (0.35, 0.4),
        "right_eye": (0.65, 0.41),
        "nose": (0.5, 0.55),
        "mouth": (0.5, 0.7),
    }


def test_landmarks_in_prose():
    text = "Left eye: (0.3, 0.4), right eye: (0.7, 0.4); nose tip at 0.5, 0.6 and mouth 0.5,0.8"
    assert parse_landmarks(text)["mouth"] == (0.5, 0.8)
    assert parse_landmarks(text)["nose"] == (0.5, 0.6)


def test_landmark_rejections():
    base = {"left_eye": [0.3, 0.4], "right_eye": [0.7, 0.4], "nose": [0.5, 0.6]}
    cases = {
        "missing_landmark": base,
        "out_of_range": {**base, "mouth": [256, 400]},
        "non_numeric": {**base, "mouth": ["centre", 0.8]},
    }
    for code, answer in cases.items():
        with pytest.raises(AnswerRejected) as info:
            parse_landmarks(json.dumps(answer))
        assert info.value.code == code
    with pytest.raises(AnswerRejected, match="not pixels"):
        parse_landmarks(json.dumps({**base, "mouth": [256, 400]}))
    with pytest.raises(AnswerRejected) as info:
        parse_landmarks("I see a face but cannot locate its features.")
    assert info.value.code == "no_landmarks"
