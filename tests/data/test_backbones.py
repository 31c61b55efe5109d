"""ONNX export of the DINOv2 and Depth Anything backbones (tiny-random, offline)."""

from __future__ import annotations

import time

import numpy as np
import onnxruntime as ort
import pytest
import torch

from fresnel import io
from fresnel.data import backbones
from support.backbone_fixture import tiny_backbones


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_backbones(tmp_path_factory)


def _ort(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"pixel_values": x})[0]


def _torch(kind: str, x: np.ndarray) -> np.ndarray:
    wrapper = backbones.wrap(kind, backbones.build_tiny(kind, seed=0))
    with torch.no_grad():
        return wrapper(torch.from_numpy(x)).numpy()


def _pixels(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, 518, 518), dtype=np.float32)


@pytest.mark.parametrize("batch", [1, 3])
def test_dinov2_shape_and_parity(models, batch):
    x = _pixels(batch, seed=batch)
    got = _ort(models["dinov2"], x)
    assert got.shape == (batch, 37, 37, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch("dinov2", x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("batch", [1, 3])
def test_depth_shape_and_parity(models, batch):
    x = _pixels(batch, seed=10 + batch)
    got = _ort(models["depth"], x)
    expected = _torch("depth", x)
    assert got.shape == (batch, 518, 518) and got.dtype == np.float32
    assert expected.std() > 0.1, "tiny depth output should not be degenerate"
    # float32 accumulation: 1e-4 relative to the output's scale (tiny depth reaches ~100)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1, np.abs(expected).max()))


def test_normalisation_is_in_the_graph(models):
    """A constant ImageNet-mean image is zero after normalisation; compare with the model."""
    mean = np.array(backbones.IMAGENET_MEAN, dtype=np.float32).reshape(1, 3, 1, 1)
    x = np.broadcast_to(mean, (1, 3, 518, 518)).copy()
    model = backbones.build_tiny("dinov2", seed=0)
    with torch.no_grad():
        raw = model(pixel_values=torch.zeros(1, 3, 518, 518)).last_hidden_state[:, 1:]
    got = _ort(models["dinov2"], x)
    np.testing.assert_allclose(got.reshape(1, -1, 384), raw.numpy(), rtol=0, atol=1e-4)


def test_single_file_and_info(models):
    folder = models["dinov2"].parent
    assert sorted(p.name for p in folder.iterdir()) == ["depth.onnx", "dinov2.onnx"]
    for kind in ("dinov2", "depth"):
        info = models[f"{kind}_info"]
        assert info["source"] == "tiny-random" and info["random_weights"] is True
        assert "not meaningful" in info["note"]
        assert info["onnx_sha256"] == io.sha256_file(models[kind])
        assert info["opset"] == 17 and info["ort_max_abs_diff"] <= info["ort_tolerance"]
        assert info["parameters"] > 0
    assert models["dinov2_info"]["config"]["hidden_size"] == 384
    assert models["dinov2_info"]["config"]["patch_size"] == 14


@pytest.mark.parametrize(
    ("kind", "name", "shape"),
    [("dinov2", "features", [37, 37, 384]), ("depth", "depth", [518, 518])],
)
def test_io_signature_with_dynamic_batch(models, kind, name, shape):
    session = ort.InferenceSession(str(models[kind]), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "pixel_values" and inp.shape[1:] == [3, 518, 518]
    assert inp.type == out.type == "tensor(float)"
    assert out.name == name and out.shape[1:] == shape
    assert isinstance(inp.shape[0], str) and isinstance(out.shape[0], str)


def test_export_from_local_folder(models, tmp_path):
    backbones.build_tiny("dinov2", seed=0).save_pretrained(tmp_path / "hf")
    info = backbones.export_dinov2(f"local:{tmp_path / 'hf'}", tmp_path / "local.onnx")
    assert info["random_weights"] is False and "note" not in info
    x = _pixels(1, seed=5)
    np.testing.assert_array_equal(_ort(tmp_path / "local.onnx", x), _ort(models["dinov2"], x))
    assert not list(tmp_path.glob("*.data")) and not list(tmp_path.glob(".tmp-*"))


def test_unknown_hub_id_offline_fails_fast(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.perf_counter()
    with pytest.raises(backbones.SourceError, match="fresnel-tests/no-such-model") as err:
        backbones.export_dinov2("fresnel-tests/no-such-model", tmp_path / "x.onnx")
    assert "local:<dir>" in str(err.value) and "tiny-random" in str(err.value)
    assert time.perf_counter() - started < 10
    assert not list(tmp_path.iterdir())


def test_missing_local_folder_is_an_error(tmp_path):
    with pytest.raises(backbones.SourceError, match="not a model folder"):
        backbones.export_depth(f"local:{tmp_path / 'nothing'}", tmp_path / "x.onnx")


def test_wrong_dinov2_layout_is_an_error():
    from transformers import Dinov2Config

    with pytest.raises(backbones.SourceError, match="37x37x384"):
        backbones._check_dinov2_layout(Dinov2Config(hidden_size=768, patch_size=14))
