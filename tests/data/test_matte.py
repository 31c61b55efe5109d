"""fresnel.data.matte: the crop geometry (known answers) and rembg's real code path, offline.

rembg runs a tiny ONNX stand-in for u2net (tests/rembg_fixture.py: bright = foreground).
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fresnel import io
from fresnel.data import matte
from fresnel.images import save_png
from support.rembg_fixture import write_model

SIZE = 518
GEOMETRY = {"padding": 0.2, "size": SIZE, "alpha_threshold": 0.8}
MID = (SIZE - 1) / 2  # centre of a 518-pixel row, in pixel-centre coordinates


@pytest.fixture(autouse=True)
def _u2net_home(monkeypatch, tmp_path):
    """matte sets U2NET_HOME; restore it after each test."""
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "unused-home"))


@pytest.fixture(scope="module")
def rembg():
    """Import rembg once (its first import in a fresh venv compiles numba)."""
    import rembg

    return rembg


@pytest.fixture
def model_dir(tmp_path) -> Path:
    write_model(tmp_path / "models" / "u2net.onnx")
    return tmp_path / "models"


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# --- helpers ------------------------------------------------------------------------------


def square_image(width, height, box, value=255) -> Image.Image:
    """Black RGB image with a uniform rectangle at box = (x0, y0, x1, y1)."""
    arr = np.zeros((height, width, 3), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = value
    return Image.fromarray(arr, "RGB")


def extent(img: Image.Image, level=127):
    """(first row, last row, first col, last col) of pixels brighter than `level`."""
    mask = np.asarray(img.convert("L")) > level
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return rows[0], rows[-1], cols[0], cols[-1]


def centroid(img: Image.Image):
    """(x, y) centroid of the brightness."""
    w = np.asarray(img.convert("L"), np.float64)
    ys, xs = np.mgrid[0 : w.shape[0], 0 : w.shape[1]]
    return (w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()


def make_input(root: Path, images: dict[str, Image.Image | bytes]) -> Path:
    """A download-stage output: images/<id>.png plus manifest.parquet."""
    rows = []
    for id_, img in images.items():
        rel = f"images/{id_}.png"
        if isinstance(img, bytes):
            io.write_bytes(root / rel, img)
            width = height = 0
        else:
            save_png(img, root / rel)
            width, height = img.size
        rows.append(
            {
                "id": id_,
                "file": rel,
                "source": "test",
                "origin": id_,
                "sha256": io.sha256_file(root / rel),
                "width": width,
                "height": height,
                "licence": "none",
            }
        )
    pd.DataFrame(rows).to_parquet(root / "manifest.parquet")
    return root


def run(in_dir, out_dir, model_dir, remove_background=True, on_bad_image="skip"):
    return matte.run(
        in_dir,
        out_dir,
        remove_background=remove_background,
        model="u2net",
        model_dir=model_dir,
        on_bad_image=on_bad_image,
        **GEOMETRY,
    )


# --- geometry: center_crop_composite with synthetic alpha ---------------------------------


def test_square_subject_is_centred_and_scaled():
    box = (30, 50, 150, 170)  # 120 px square, off-centre in a 300x200 image
    rgb = square_image(300, 200, box)
    out = matte.center_crop_composite(rgb, rgb.convert("L"), **GEOMETRY)
    assert out.size == (SIZE, SIZE) and out.mode == "RGB"
    cx, cy = centroid(out)
    assert abs(cx - MID) < 1 and abs(cy - MID) < 1
    r0, r1, c0, c1 = extent(out)
    expected = SIZE * 120 / int(120 * 1.2)  # = 518 / 1.2
    assert abs((r1 - r0 + 1) - expected) <= 2 and abs((c1 - c0 + 1) - expected) <= 2
    arr = np.asarray(out)
    assert arr[:30].max() == 0 and arr[-30:].max() == 0 and arr[:, :30].max() == 0


def test_non_square_bbox_uses_longer_side():
    box = (10, 100, 170, 180)  # 160 x 80
    rgb = square_image(256, 256, box)
    out = matte.center_crop_composite(rgb, rgb.convert("L"), **GEOMETRY)
    side = int(160 * 1.2)  # 192
    r0, r1, c0, c1 = extent(out)
    assert abs((c1 - c0 + 1) - SIZE * 160 / side) <= 2
    assert abs((r1 - r0 + 1) - SIZE * 80 / side) <= 2
    cx, cy = centroid(out)
    assert abs(cx - MID) < 1 and abs(cy - MID) < 1
    _, bbox, crop = matte._matte(rgb, rgb.convert("L"), **GEOMETRY)
    assert bbox == box and crop == side


def test_subject_at_image_border_is_padded_with_black():
    rgb = square_image(100, 100, (0, 0, 50, 50))  # touches the top-left corner
    out = matte.center_crop_composite(rgb, rgb.convert("L"), **GEOMETRY)
    # side 60 around centre (25, 25): box (-5, -5, 55, 55); the subject spans 5..55 of it
    r0, r1, c0, c1 = extent(out)
    lo, hi = SIZE * 5 / 60, SIZE * 55 / 60  # 43.2, 474.8
    for a, b in ((r0, r1), (c0, c1)):
        assert abs(a - lo) <= 2 and abs(b + 1 - hi) <= 2
    arr = np.asarray(out)
    # outside the source image, beyond LANCZOS ringing (3 source px = 26 px here)
    assert arr[:15].max() == 0 and arr[:, :15].max() == 0


def test_without_alpha_whole_image_is_cropped_and_padded():
    rgb = Image.new("RGB", (200, 100), (200, 100, 50))
    out = matte.center_crop_composite(rgb, None, **GEOMETRY)
    # side int(200 * 1.2) = 240, box (-20, -70, 220, 170): content rows 151.1..366.9,
    # columns 43.2..474.8 of the 518 x 518 result
    arr = np.asarray(out).astype(int)
    r0, r1, c0, c1 = extent(out, level=20)
    assert abs(r0 - 151) <= 1 and abs(r1 - 366) <= 1
    assert abs(c0 - 43) <= 1 and abs(c1 - 474) <= 1
    # black beyond LANCZOS ringing (3 source px = 6.5 px here)
    assert arr[:143].max() == 0 and arr[375:].max() == 0 and arr[:, :35].max() == 0
    assert np.abs(arr[160:358, 52:466] - [200, 100, 50]).max() <= 1


def test_composite_premultiplies_alpha():
    rgb = Image.new("RGB", (200, 200), (200, 100, 40))
    alpha = np.full((200, 200), 102, np.uint8)  # 0.4: below threshold, so not the subject
    alpha[70:130, 70:130] = 255
    out = matte.center_crop_composite(rgb, Image.fromarray(alpha, "L"), **GEOMETRY)
    arr = np.asarray(out).astype(int)
    assert np.abs(arr[259, 259] - [200, 100, 40]).max() <= 1
    assert np.abs(arr[5, 5] - [80, 40, 16]).max() <= 1  # 0.4 * rgb, inside the crop


def test_threshold_is_strict_and_empty_alpha_has_no_subject():
    alpha = np.full((50, 60), 204, np.uint8)  # exactly 0.8 * 255: not above
    alpha[10:20, 30:45] = 205
    assert matte.subject_bbox(Image.fromarray(alpha), 0.8) == (30, 10, 45, 20)
    rgb = Image.new("RGB", (60, 50), "white")
    with pytest.raises(matte.NoSubject, match=r"no subject found above alpha threshold 0\.8"):
        matte.center_crop_composite(rgb, Image.new("L", (60, 50), 204), **GEOMETRY)


def test_crop_box_is_square_and_centred():
    assert matte.crop_box((0, 0, 200, 100), 0.2) == (-20.0, -70.0, 220.0, 170.0)
    left, top, right, bottom = matte.crop_box((3, 4, 10, 8), 0.2)  # 7 x 4 -> side 8
    assert right - left == bottom - top == 8
    assert (left + right) / 2 == 6.5 and (top + bottom) / 2 == 6


# --- rembg model lookup -------------------------------------------------------------------


def test_missing_model_fails_fast_and_names_the_file(tmp_path, no_network):
    in_dir = make_input(tmp_path / "raw", {"a": square_image(64, 64, (10, 10, 40, 40))})
    empty = tmp_path / "no-models"
    start = time.monotonic()
    with pytest.raises(matte.MatteError) as info:
        run(in_dir, tmp_path / "out", empty)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert str(empty.resolve() / "u2net.onnx") in message
    assert "U2NET_HOME" in message and "matte.model_dir" in message
    assert "offline" in message.lower()
    assert not (tmp_path / "out").exists()


def test_unknown_model_is_refused(tmp_path):
    with pytest.raises(matte.MatteError, match="not supported"):
        matte.rembg_model_path("sam", tmp_path)


def test_model_path_follows_rembgs_own_lookup(tmp_path, monkeypatch, rembg):
    from rembg.sessions import sessions

    home = tmp_path / "home"
    monkeypatch.setenv("U2NET_HOME", str(home))
    flat, nested = home / "u2net.onnx", home / "models" / "u2net" / "u2net.onnx"
    assert matte.rembg_model_path("u2net", home) == flat  # none yet: where to put it
    write_model(flat)
    assert matte.rembg_model_path("u2net", home) == flat
    assert Path(sessions["u2net"].resolve_existing("u2net.onnx")) == flat
    write_model(nested)
    assert matte.rembg_model_path("u2net", home) == nested
    assert Path(sessions["u2net"].resolve_existing("u2net.onnx")) == nested
    assert matte.rembg_model_path("u2net", "") == nested  # empty model_dir: U2NET_HOME


# --- the stage, through rembg's real session ----------------------------------------------


def test_run_with_rembg_centres_subject(tmp_path, model_dir, no_network, rembg):
    square = (250, 40, 350, 140)  # 100 px square in a 400 x 240 image
    in_dir = make_input(
        tmp_path / "raw",
        {"square": square_image(400, 240, square), "black": Image.new("RGB", (160, 120))},
    )
    stats = run(in_dir, tmp_path / "out", model_dir)
    assert stats == {"accepted": 1, "rejected": 1, "remove_background": True, "model": "u2net"}
    assert json.loads((tmp_path / "out" / "rejected.json").read_text()) == [
        {"item": "black", "reason": "no subject found above alpha threshold 0.8"}
    ]
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert list(manifest.columns) == [
        "id",
        "file",
        "sha256",
        "source_sha256",
        *("x0", "y0", "x1", "y1"),
        "crop_size",
    ]
    row = manifest.iloc[0].to_dict()
    assert (row["x0"], row["y0"], row["x1"], row["y1"]) == square
    assert row["crop_size"] == 120 and row["file"] == "images/square.png"
    out_png = tmp_path / "out" / row["file"]
    assert row["sha256"] == io.sha256_file(out_png)
    assert row["source_sha256"] == io.sha256_file(in_dir / "images" / "square.png")
    out = Image.open(out_png)
    assert out.size == (SIZE, SIZE) and out.mode == "RGB"
    cx, cy = centroid(out)
    assert abs(cx - MID) < 2 and abs(cy - MID) < 2
    r0, r1, c0, c1 = extent(out)
    assert abs((r1 - r0 + 1) - SIZE / 1.2) <= 2 and abs((c1 - c0 + 1) - SIZE / 1.2) <= 2
    arr = np.asarray(out)
    assert arr[:28].max() == 0 and arr[-28:].max() == 0  # black beyond LANCZOS ringing


def test_bad_images_fail_after_all_are_processed(tmp_path, model_dir, rembg):
    in_dir = make_input(
        tmp_path / "raw",
        {
            "ok": square_image(200, 200, (50, 60, 150, 140)),
            "black": Image.new("RGB", (100, 100)),
            "broken": b"not an image",
        },
    )
    with pytest.raises(matte.MatteError) as info:
        run(in_dir, tmp_path / "out", model_dir, on_bad_image="fail")
    assert "black: no subject found" in str(info.value) and "broken:" in str(info.value)
    rejected = json.loads((tmp_path / "out" / "rejected.json").read_text())
    assert [r["item"] for r in rejected] == ["black", "broken"]
    assert (tmp_path / "out" / "images" / "ok.png").is_file()


# --- the stage without background removal ------------------------------------------------


def test_run_without_removal_crops_whole_image(tmp_path, caplog):
    img = Image.new("RGB", (200, 100), (200, 100, 50))
    in_dir = make_input(tmp_path / "raw", {"wide": img, "changed": img, "bad": b"\x89PNG"})
    io.write_bytes(in_dir / "images" / "changed.png", b"tampered")
    stats = run(in_dir, tmp_path / "out", tmp_path / "absent", remove_background=False)
    assert stats == {"accepted": 1, "rejected": 2, "remove_background": False, "model": None}
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    row = manifest.iloc[0].to_dict()
    assert (row["id"], row["x0"], row["y0"], row["x1"], row["y1"]) == ("wide", 0, 0, 200, 100)
    assert row["crop_size"] == 240
    out = Image.open(tmp_path / "out" / "images" / "wide.png")
    assert np.asarray(out).tobytes() == matte.center_crop_composite(img, None).tobytes()
    rejected = json.loads((tmp_path / "out" / "rejected.json").read_text())
    assert [r["item"] for r in rejected] == ["bad", "changed"]
    assert "rejected bad" in caplog.text and "rejected changed" in caplog.text


def test_run_resets_output_dir(tmp_path):
    in_dir = make_input(tmp_path / "raw", {"a": Image.new("RGB", (80, 80), "white")})
    stale = tmp_path / "out" / "images" / "stale.png"
    io.write_bytes(stale, b"old")
    run(in_dir, tmp_path / "out", tmp_path / "absent", remove_background=False)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "images",
        "manifest.parquet",
        "rejected.json",
    ]
