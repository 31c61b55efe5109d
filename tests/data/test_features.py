"""Feature extraction stage: formats, content-keyed incremental cache, batching, crash safety."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from fresnel.data import features
from support.backbone_fixture import read_outputs, tiny_backbones, write_images

DEPTH = 64
SRC = str(Path(features.__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_backbones(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(models, tmp_path_factory):
    """5 images, batch_size 4, fresh cache: (images_dir, out_dir, stats, output bytes)."""
    root = tmp_path_factory.mktemp("reference")
    images = root / "matte"
    write_images(images, list(range(5)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FRESNEL_CACHE", str(root / "cache"))
        stats = _run(models, images, root / "out", batch_size=4)
    return images, root / "out", stats, read_outputs(root / "out")


def _run(models, images, out, batch_size: int, depth_size: int = DEPTH) -> dict:
    return features.run(images, models["dinov2"], models["depth"], out, batch_size, depth_size)


def test_formats_and_values(models, reference):
    images, out, stats, _ = reference
    assert stats["images"] == 5 and stats["computed"] == 5 and stats["model_runs"] == 5
    assert stats["providers"] == ["CPUExecutionProvider"] and stats["note"] is None
    index = json.loads((out / "index.json").read_text())
    ids = [f"img{i:03d}" for i in range(5)]
    assert index == {
        "ids": ids,
        "dinov2_shape": [37, 37, 384],
        "depth_shape": [DEPTH, DEPTH],
        "dtype": "float32",
    }
    assert (out / "img000_dinov2.bin").stat().st_size == 37 * 37 * 384 * 4
    assert (out / "img000_depth.bin").stat().st_size == DEPTH * DEPTH * 4
    pngs = [np.asarray(Image.open(images / "images" / f"{i}.png")) for i in ids]
    x = np.stack(pngs).transpose(0, 3, 1, 2).astype(np.float32) / np.float32(255)
    feats = ort.InferenceSession(str(models["dinov2"])).run(None, {"pixel_values": x})[0]
    depth = ort.InferenceSession(str(models["depth"])).run(None, {"pixel_values": x})[0]
    small = torch.nn.functional.interpolate(
        torch.from_numpy(depth)[:, None], size=(DEPTH, DEPTH), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    for k, image_id in enumerate(ids):
        got = np.fromfile(out / f"{image_id}_dinov2.bin", dtype="<f4").reshape(37, 37, 384)
        np.testing.assert_array_equal(got, feats[k])
        got = np.fromfile(out / f"{image_id}_depth.bin", dtype="<f4").reshape(DEPTH, DEPTH)
        np.testing.assert_array_equal(got, small[k])


def test_incremental_by_content(models, reference, tmp_path, monkeypatch):
    images, _, _, expected = reference
    monkeypatch.setenv("FRESNEL_CACHE", str(Path(reference[1]).parent / "cache"))
    again = _run(models, images, tmp_path / "out", batch_size=4)
    assert (again["computed"], again["cached"], again["model_runs"]) == (0, 5, 0)
    assert read_outputs(tmp_path / "out") == expected
    local = tmp_path / "matte"
    write_images(local, list(range(6)))  # the 5 same PNGs plus one new image
    grown = _run(models, local, tmp_path / "out", batch_size=4)
    assert (grown["images"], grown["computed"], grown["model_runs"]) == (6, 1, 1)
    outputs = read_outputs(tmp_path / "out")
    assert len(outputs) == 6 * 2 + 1
    assert all(outputs[name] == data for name, data in expected.items() if name != "index.json")


def test_batch_size_does_not_change_bytes(models, reference, tmp_path, monkeypatch):
    images, _, _, expected = reference
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "cache"))
    stats = _run(models, images, tmp_path / "out", batch_size=1)
    assert stats["computed"] == 5
    assert read_outputs(tmp_path / "out") == expected


def test_extract_matches_stage(models, reference):
    images, _, _, expected = reference
    png = np.asarray(Image.open(images / "images" / "img003.png"))
    feats, depth = features.extract([png], models["dinov2"], models["depth"], DEPTH)
    assert feats.shape == (1, 37, 37, 384) and depth.shape == (1, DEPTH, DEPTH)
    assert feats[0].astype("<f4").tobytes() == expected["img003_dinov2.bin"]
    assert depth[0].astype("<f4").tobytes() == expected["img003_depth.bin"]


def test_missing_and_corrupt_images_are_named(models, tmp_path, monkeypatch):
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "cache"))
    images = tmp_path / "matte"
    write_images(images, [0, 1])
    (images / "images" / "img001.png").unlink()
    with pytest.raises(features.FeatureError, match=r"img001\.png"):
        _run(models, images, tmp_path / "out", batch_size=2)
    (images / "images" / "img001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(features.FeatureError, match=r"img001\.png"):
        _run(models, images, tmp_path / "out", batch_size=2)


_CHILD = """
import sys, time
sys.path.insert(0, {src!r})
from fresnel.data import features
store = features._store
def slow_store(*args):  # widen the window between batches so the kill lands mid-run
    store(*args)
    time.sleep({pause})
features._store = slow_store
features.run({images!r}, {dinov2!r}, {depth!r}, {out!r}, {batch}, {depth_size})
"""


def _child(models, images, out, cache, batch: int, pause: float) -> subprocess.Popen:
    code = _CHILD.format(
        src=SRC,
        pause=pause,
        images=str(images),
        dinov2=str(models["dinov2"]),
        depth=str(models["depth"]),
        out=str(out),
        batch=batch,
        depth_size=DEPTH,
    )
    env = {**os.environ, "FRESNEL_CACHE": str(cache)}
    return subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)


def _complete_entries(cache: Path) -> int:
    return len(list(cache.glob("features/*/*_depth.bin")))


def test_sigkill_then_rerun_is_byte_identical(models, tmp_path, monkeypatch):
    images = tmp_path / "matte"
    write_images(images, list(range(10, 16)))
    clean = _child(models, images, tmp_path / "clean", tmp_path / "cache-clean", 2, 0.0)
    victim = _child(models, images, tmp_path / "out", tmp_path / "cache", 1, 0.5)
    deadline = time.monotonic() + 60
    while _complete_entries(tmp_path / "cache") < 1 and time.monotonic() < deadline:
        assert victim.poll() is None, victim.stderr.read().decode()
        time.sleep(0.01)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    done = _complete_entries(tmp_path / "cache")
    assert 1 <= done < 6
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "cache"))
    stats = _run(models, images, tmp_path / "out", batch_size=2)
    assert stats["computed"] == 6 - done
    assert clean.wait() == 0, clean.stderr.read().decode()
    assert read_outputs(tmp_path / "out") == read_outputs(tmp_path / "clean")
