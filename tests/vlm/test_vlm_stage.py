"""The VLM stage end to end against a loopback chat server: cache, failures, secrets."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage import data

from fresnel import io
from fresnel.images import save_png
from fresnel.vlm import stage
from fresnel.vlm.client import VLMConnectionError
from fresnel.vlm.grid import FACE_PROMPT, LANDMARK_PROMPT
from fresnel.vlm.providers import VLMProvider
from fresnel.vlm.stage import VLMStageError
from support.chat_server import ChatServer, Reply, image_sha, prompt_of

SECRET = "sk-stage-test-0d9a2f71-SECRET"
KEY_ENV = "FRESNEL_TEST_STAGE_KEY"
FACE = {"left_eye": [0.3, 0.4], "right_eye": [0.7, 0.4], "nose": [0.5, 0.6], "mouth": [0.5, 0.8]}


# ----------------------------------------------------------------------------- fixtures


def _image(seed: int, side: int = 64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def _write_manifest(images_dir: Path, images: dict[str, Image.Image]) -> dict[str, str]:
    """Save `images` as PNGs with a manifest.parquet; return id -> sha256."""
    rows = []
    for item_id, img in images.items():
        rel = f"images/{item_id}.png"
        save_png(img, images_dir / rel)
        rows.append({"id": item_id, "file": rel, "sha256": io.sha256_file(images_dir / rel)})
    pd.DataFrame(rows).to_parquet(images_dir / "manifest.parquet")
    return {row["id"]: row["sha256"] for row in rows}


def _grid_text(n: int, hot: tuple[int, int] = (0, 0)) -> str:
    grid = np.full((n, n), 0.1)
    grid[hot] = 1.0
    return "```json\n" + json.dumps(grid.tolist()) + "\n```"


class Script:
    """Answers by question: grid (size n, hot cell), face yes/no, landmarks; per-image overrides."""

    def __init__(self, n=8, hot=(0, 0), face=None, landmarks=FACE, overrides=None):
        self.n, self.hot, self.face, self.landmarks = n, hot, face or {}, landmarks
        self.overrides = overrides or {}

    def __call__(self, request):
        sha = image_sha(request)
        prompt = prompt_of(request)
        if sha in self.overrides:
            return self.overrides[sha](request)
        if prompt == FACE_PROMPT:
            return "Yes, there is a face." if self.face.get(sha) else "No."
        if prompt == LANDMARK_PROMPT:
            return json.dumps(self.landmarks)
        return _grid_text(self.n, self.hot)


def _run(images_dir, out_dir, server, cache_dir, **overrides):
    settings = {
        "provider": "vlm",
        "url": server.url,
        "model": "test-vlm",
        "grid_size": 8,
        "size": 32,
        "read_timeout": 2.0,
        "connect_timeout": 0.5,
        "retries": 2,
        "backoff": 0.01,
        "max_in_flight": 2,
        "api_key_env": KEY_ENV,
        "cache_dir": cache_dir,
        **overrides,
    }
    return stage.run(images_dir, out_dir, **settings)


def _index(out_dir) -> dict:
    return json.loads((Path(out_dir) / "index.json").read_text())["items"]


def _failed(out_dir) -> list:
    return json.loads((Path(out_dir) / "failed.json").read_text())


@pytest.fixture
def dirs(tmp_path):
    images = tmp_path / "matte"
    images.mkdir()
    return images, tmp_path / "vlm", tmp_path / "cache"


# ----------------------------------------------------------------------------- answers


@pytest.mark.parametrize("n", [4, 8, 16])
def test_good_grid_answers_for_every_size(dirs, n):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1), "b": _image(2)})
    with ChatServer(Script(n=n, hot=(n - 1, 1))) as server:
        stats = _run(images, out, server, cache, grid_size=n, size=32)
        assert server.requests == 2 and server.model_requests == 1
    assert stats["computed"] == 2 and stats["failed"] == 0 and stats["branches"] == {"grid": 2}
    for item_id in ("a", "b"):
        density = np.load(out / f"{item_id}_vlm_density.npy")
        assert density.dtype == np.float32 and density.shape == (32, 32)
        assert density.mean() == pytest.approx(1.0, abs=1e-5) and density.min() >= 0
        row, col = np.unravel_index(density.argmax(), density.shape)
        assert (row * n // 32, col * n // 32) == (n - 1, 1)
        entry = _index(out)[item_id]
        assert entry["provider"] == "vlm:test-vlm" and entry["branch"] == "grid"
        assert entry["grid_size"] == n and entry["status"] == "computed"
        assert entry["repairs"] == [] and entry["rejections"] == []
    assert _failed(out) == []


def test_smart_mode_face_yes_uses_landmarks_face_no_uses_grid(dirs):
    images, out, cache = dirs
    shas = _write_manifest(images, {"face": _image(1), "scene": _image(2)})
    script = Script(face={shas["face"]: True}, hot=(7, 7))
    with ChatServer(script) as server:
        stats = _run(images, out, server, cache, smart=True, size=40)
        assert server.per_image == {shas["face"]: 2, shas["scene"]: 2}
    assert stats["branches"] == {"grid": 1, "smart-face": 1}
    index = _index(out)
    assert index["face"]["branch"] == "smart-face" and index["scene"]["branch"] == "grid"
    assert index["face"]["landmarks"]["left_eye"] == [0.3, 0.4]
    face = np.load(out / "face_vlm_density.npy")
    row, col = np.unravel_index(face.argmax(), face.shape)
    assert row == 15 and col in (11, 27)  # an eye: (0.3 | 0.7, 0.4) of 40 px
    scene = np.load(out / "scene_vlm_density.npy")
    row, col = np.unravel_index(scene.argmax(), scene.shape)
    assert (row // 5, col // 5) == (7, 7)  # the hot cell (7, 7) of the 8x8 grid, 5 px each


def test_smart_mode_records_rejected_landmarks_and_uses_the_grid(dirs):
    images, out, cache = dirs
    shas = _write_manifest(images, {"a": _image(1)})
    pixels = {**FACE, "mouth": [140, 300]}
    with ChatServer(Script(face={shas["a"]: True}, landmarks=pixels)) as server:
        _run(images, out, server, cache, smart=True)
        assert server.requests == 3  # face, landmarks, grid
    entry = _index(out)["a"]
    assert entry["branch"] == "grid"
    assert entry["rejections"] == [
        "landmarks: out_of_range: mouth (140, 300) is outside 0-1: the prompt asks for "
        "fractions of the image width and height, not pixels"
    ]


def test_chatty_and_oversized_answers_are_repaired_and_recorded(dirs):
    images, out, cache = dirs
    shas = _write_manifest(images, {"a": _image(1), "b": _image(2)})
    rows = [" ".join(["0.2"] * 4) for _ in range(5)]
    extra = "Here you go!\n" + "\n".join(rows) + "\nLet me know if you need more."
    script = Script(n=4, overrides={shas["a"]: lambda request: extra})
    with ChatServer(script) as server:
        _run(images, out, server, cache, grid_size=4)
    assert _index(out)["a"]["repairs"] == ["grid: dropped extra row 5 of 5 (need 4 rows)"]
    assert _index(out)["b"]["repairs"] == []


def test_single_image_without_the_stage(tmp_path):
    """The path a `vlm_guidance.py image.jpg --smart` style command takes (no cache)."""
    path = tmp_path / "face.jpg"
    _image(1).save(path, format="JPEG")
    sha = io.sha256_file(path)
    with ChatServer(Script(face={sha: True})) as server:
        provider = VLMProvider.from_settings(url=server.url, model="test-vlm", smart=True)
        result = provider.density_for_file(path, 24)
        assert server.per_image == {sha: 2}  # the JPEG bytes were sent as they are
    assert (result.provider, result.branch, result.grid_size) == ("vlm:test-vlm", "smart-face", 8)
    assert result.density.shape == (24, 24)


# ----------------------------------------------------------------------------- cache


def test_rerun_and_added_image_ask_only_about_new_images(dirs):
    images, out, cache = dirs
    first = {"a": _image(1), "b": _image(2), "c": _image(3)}
    shas = _write_manifest(images, first)
    with ChatServer(Script()) as server:
        _run(images, out, server, cache)
        before = {p.name: p.read_bytes() for p in out.glob("*.npy")}
        assert server.requests == 3

        stats = _run(images, out, server, cache)
        assert server.requests == 3 and server.model_requests == 1  # not even a model check
        assert stats["cached"] == 3 and stats["computed"] == 0 and stats["requests"] == 0
        assert {p.name: p.read_bytes() for p in out.glob("*.npy")} == before
        assert {e["status"] for e in _index(out).values()} == {"cached"}

        shas = _write_manifest(images, {**first, "d": _image(4)})
        stats = _run(images, out, server, cache)
        assert server.requests == 4 and server.per_image[shas["d"]] == 1
        assert all(server.per_image[shas[k]] == 1 for k in first)
        assert stats["cached"] == 3 and stats["computed"] == 1
    cached = json.loads(next(cache.glob("*.json")).read_text())
    assert cached["key"]["model"] == "test-vlm" and cached["key"]["grid_size"] == 8
    assert cached["answer"]["exchanges"][0]["answer"] == _grid_text(8)  # the raw text


def test_cache_key_covers_grid_size_smart_and_model(dirs):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1)})
    with ChatServer(Script(n=4)) as server:
        _run(images, out, server, cache, grid_size=4)
        _run(images, out, server, cache, grid_size=4, model="other-vlm")
        assert server.requests == 2
        server.answer = Script(n=8)
        _run(images, out, server, cache, grid_size=8)
        _run(images, out, server, cache, grid_size=8, smart=True)
        assert server.requests == 3 + 2  # smart: the face question (no), then the grid
        _run(images, out, server, cache, grid_size=8, smart=True)
        _run(images, out, server, cache, grid_size=4, model="other-vlm")
        assert server.requests == 5


def test_identical_images_are_asked_once(dirs):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1), "copy_of_a": _image(1)})
    with ChatServer(Script()) as server:
        _run(images, out, server, cache)
        assert server.requests == 1
    index = _index(out)
    assert index["a"]["cache_key"] == index["copy_of_a"]["cache_key"]


# ----------------------------------------------------------------------------- failures


def test_failed_images_are_not_cached_and_retried_next_run(dirs):
    images, out, cache = dirs
    shas = _write_manifest(images, {"a": _image(1), "bad": _image(2), "c": _image(3)})
    garbage = Script(overrides={shas["bad"]: lambda request: "I'd rather describe the colours."})
    with ChatServer(garbage) as server:
        stats = _run(images, out, server, cache, on_failure="uniform")
    assert stats["failed"] == 1 and stats["uniform"] == 1
    assert _failed(out) == [
        {
            "id": "bad",
            "reason": "grid answer rejected: no_grid: no rows of numbers found in the answer",
        }
    ]
    np.testing.assert_array_equal(np.load(out / "bad_vlm_density.npy"), np.ones((32, 32)))
    assert _index(out)["bad"]["status"] == "failed" and _index(out)["bad"]["branch"] == "uniform"
    assert len(list(cache.glob("*.json"))) == 2

    with ChatServer(Script()) as server:
        stats = _run(images, out, server, cache, on_failure="uniform")
        assert dict(server.per_image) == {shas["bad"]: 1}
    assert stats["computed"] == 1 and stats["cached"] == 2 and _failed(out) == []


def test_on_failure_fail_lists_every_failed_image_after_trying_all(dirs):
    images, out, cache = dirs
    shas = _write_manifest(images, {"a": _image(1), "b": _image(2), "c": _image(3)})
    script = Script(
        overrides={
            shas["a"]: lambda request: Reply(400, {"error": "image too large"}),
            shas["c"]: lambda request: json.dumps([[1, 2, 3]] * 8),
        }
    )
    with ChatServer(script) as server:
        with pytest.raises(VLMStageError) as info:
            _run(images, out, server, cache, on_failure="fail")
        assert server.requests == 3  # the 400 is not retried
    message = str(info.value)
    assert "2 image(s)" in message and "'uniform'" in message
    assert "a: VLM request to" in message and "HTTP 400" in message and "image too large" in message
    assert "c: grid answer rejected: wrong_size: the answer is a 8x3 grid, need 8x8" in message
    assert [f["id"] for f in _failed(out)] == ["a", "c"]
    assert (out / "b_vlm_density.npy").is_file() and not (out / "a_vlm_density.npy").exists()


def test_timeouts_fail_the_image_and_leave_it_uncached(dirs):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1)})
    with ChatServer(Script(), delay=lambda number: 0.5 if number > 0 else 0) as server:
        _run(images, out, server, cache, read_timeout=0.1, retries=1, on_failure="uniform")
        assert server.requests == 2
    assert "no complete answer within the read timeout of 0.1 s" in _failed(out)[0]["reason"]
    assert not list(cache.glob("*.json"))


def test_a_server_that_is_down_stops_the_stage_with_the_url(dirs):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1)})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    with pytest.raises(VLMConnectionError, match=r"Cannot connect to VLM at .*start LM Studio"):
        stage.run(images, out, url=url, cache_dir=cache, on_failure="uniform", retries=0,
                  connect_timeout=0.5)  # fmt: skip


def test_in_flight_limit_holds_for_the_stage(dirs):
    images, out, cache = dirs
    _write_manifest(images, {f"i{k}": _image(k) for k in range(6)})
    with ChatServer(Script(), delay=0.1) as server:
        _run(images, out, server, cache, max_in_flight=3)
        assert server.max_concurrent == 3 and server.requests == 6


def test_changed_or_missing_files_are_reported(dirs):
    images, out, cache = dirs
    _write_manifest(images, {"a": _image(1), "b": _image(2), "c": _image(3)})
    save_png(_image(9), images / "images/a.png")
    (images / "images/b.png").unlink()
    with ChatServer(Script()) as server:
        _run(images, out, server, cache, on_failure="uniform")
        assert server.requests == 1
    reasons = {f["id"]: f["reason"] for f in _failed(out)}
    assert "differs from the manifest sha256" in reasons["a"]
    assert "file not found" in reasons["b"]


def test_bad_settings_are_named():
    for settings, match in (
        ({"provider": "magic"}, "provider"),
        ({"grid_size": 5}, "grid_size"),
        ({"on_failure": "skip"}, "on_failure"),
        ({"size": 0}, "size"),
        ({"url": "localhost:1234"}, "vlm settings: vlm url must be an http"),
    ):
        with pytest.raises(VLMStageError, match=match):
            stage.run("/nonexistent", "/nonexistent/out", **settings)
    with pytest.raises(VLMStageError, match="manifest not found"):
        stage.run("/nonexistent", "/nonexistent/out")


# ----------------------------------------------------------------------------- secrets


def test_api_key_reaches_the_server_and_no_file_or_log(dirs, tmp_path, monkeypatch, caplog):
    images, out, _ = dirs
    monkeypatch.setenv(KEY_ENV, SECRET)
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "fresnel-cache"))
    shas = _write_manifest(images, {"good": _image(1), "denied": _image(2)})
    overloaded_once = []

    def hostile(request):  # echoes the Authorization header into every error body
        auth = server.headers[-1].get("Authorization", "")
        if image_sha(request) == shas["denied"]:
            return Reply(403, {"error": f"forbidden for {auth}"})
        if not overloaded_once:
            overloaded_once.append(True)
            return Reply(500, {"error": f"overloaded, retry ({auth})"})
        return _grid_text(8)

    log_file = tmp_path / "logs" / "vlm.log"
    log_file.parent.mkdir()
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    caplog.set_level(logging.DEBUG)
    try:
        with ChatServer(hostile) as server, pytest.raises(VLMStageError) as info:
            _run(images, out, server, cache_dir=None, max_in_flight=1, on_failure="fail")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert {h.get("Authorization") for h in server.headers} == {f"Bearer {SECRET}"}
    assert server.requests == 3  # good: a 500 then a retry that succeeded; denied: one 403
    assert "forbidden for Bearer ***" in str(info.value)
    assert (out / "good_vlm_density.npy").is_file()
    cache = tmp_path / "fresnel-cache" / "vlm"
    written = [p for root in (out, cache, log_file.parent) for p in root.rglob("*") if p.is_file()]
    assert len(written) >= 5  # density, index, failed, a cache entry, the log
    assert "retry" in log_file.read_text()  # the log did record the failures
    for path in written:
        assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text and SECRET not in str(info.value)


# ----------------------------------------------------------------------------- offline


def test_offline_provider_needs_no_server_and_no_cache(dirs):
    images, out, cache = dirs
    astronaut = Image.fromarray(data.astronaut())
    _write_manifest(images, {"astronaut": astronaut, "noise": _image(5, side=96)})
    stats = stage.run(images, out, provider="offline", size=64, cache_dir=cache)
    assert stats["provider"] == "offline" and stats["requests"] == 0
    index = _index(out)
    assert (index["astronaut"]["provider"], index["astronaut"]["branch"]) == (
        "offline:lbp-face",
        "smart-face",
    )
    assert (index["noise"]["provider"], index["noise"]["branch"]) == (
        "offline:saliency",
        "saliency",
    )
    density = np.load(out / "astronaut_vlm_density.npy")
    row, col = np.unravel_index(density.argmax(), density.shape)
    assert abs(row - 102 / 8) <= 1.5 and min(abs(col - 206 / 8), abs(col - 245 / 8)) <= 1.5
    assert not cache.exists()
