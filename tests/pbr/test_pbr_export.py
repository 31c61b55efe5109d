"""Student exports: the Core ML package written on Linux (spec, fp16 weights, palettization,
normalisation baked into the graph, SR bypass) and the ONNX export's parity with torch."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fresnel.pbr import coreml, onnx_export
from fresnel.pbr.data import normalize_views
from fresnel.pbr.student import build_student, save_student
from fresnel.pbr.student_config import apply_overrides, get_student_config
from support.workspace import tree_bytes

IOS17_SPEC_VERSION = 8
TINY_SIDE = 32  # tiny_student's data.image_size


def _checkpoint(path, arch="mobilenetv3_vit", **overrides):
    cfg = apply_overrides(get_student_config("tiny_student"), {"model.arch": arch, **overrides})
    torch.manual_seed(0)
    model = build_student(cfg)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(2, 3, 3, cfg.data.image_size, cfg.data.image_size))
    save_student(path, model, cfg, epoch=1)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "best_student.pth")


@pytest.fixture(scope="module")
def default_package(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("coreml") / "pbr_model.mlpackage"
    info = coreml.convert(tiny_ckpt, out)
    print("default conversion:", info)
    return out, info


# --------------------------------------------------------------------- MIL program reading

_NP_DTYPES = {10: np.float16, 11: np.float32}


def _const_value(op):
    val = op.attributes["val"]
    tensor, ttype = val.immediateValue.tensor, val.type.tensorType
    kind = tensor.WhichOneof("value")
    if kind == "strings":
        return tensor.strings.values[0]
    if kind == "bytes":
        array = np.frombuffer(tensor.bytes.values, dtype=_NP_DTYPES[ttype.dataType])
    else:
        array = np.asarray(getattr(tensor, kind).values)
    return array.astype(np.float32).reshape([d.constant.size for d in ttype.dimensions])


def _args(op, name):
    return [a.name for a in op.inputs[name].arguments]


_ELEMENTWISE = {"mul": np.multiply, "add": np.add, "sub": np.subtract, "real_div": np.divide}


def evaluate_until_first_conv(path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run the package's preprocessing ops with numpy; return the first conv's input."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    function = spec.mlProgram.functions["main"]
    env = dict(feeds)
    for op in function.block_specializations[function.opset].operations:
        out = op.outputs[0].name
        if op.type == "const":
            if op.attributes["val"].WhichOneof("value") == "immediateValue":
                env[out] = _const_value(op)  # weights (blobs) are not preprocessing
        elif op.type in _ELEMENTWISE:
            env[out] = _ELEMENTWISE[op.type](env[_args(op, "x")[0]], env[_args(op, "y")[0]])
        elif op.type == "cast":
            dtype = {"fp16": np.float16, "fp32": np.float32}[env[_args(op, "dtype")[0]]]
            env[out] = env[_args(op, "x")[0]].astype(dtype).astype(np.float32)
        elif op.type == "stack":
            values = [env[n] for n in _args(op, "values")]
            env[out] = np.stack(values, axis=int(env[_args(op, "axis")[0]]))
        elif op.type == "reshape":
            env[out] = env[_args(op, "x")[0]].reshape(env[_args(op, "shape")[0]].astype(int))
        elif op.type == "conv":
            return env[_args(op, "x")[0]]
        else:
            raise AssertionError(f"unexpected op {op.type} before the first conv")
    raise AssertionError("no conv in the program")


# --------------------------------------------------------------------- Core ML


def test_coreml_package_declares_ios17_rgb_inputs_and_fp16_weights(default_package):
    path, info = default_package
    spec = coreml.inspect_package(path)
    assert spec["specification_version"] == IOS17_SPEC_VERSION
    assert spec["inputs"] == {
        f"view_{i}": {"width": TINY_SIDE, "height": TINY_SIDE, "color": "RGB"} for i in range(3)
    }
    side = 2 * TINY_SIDE  # the SR head is kept by default
    assert spec["outputs"] == {
        "albedo": [1, 3, side, side], "roughness": [1, 1, side, side],
        "metallic": [1, 1, side, side], "normal": [1, 3, side, side],
    }  # fmt: skip
    assert spec["weight_dtypes"].get("fp16", 0) > 50 and "fp32" not in spec["weight_dtypes"]
    assert (
        spec["op_types"]["pixel_shuffle"] == 1 and "constexpr_lut_to_dense" not in spec["op_types"]
    )
    assert spec["op_types"]["softmax"] >= 1  # the ViT's attention survived conversion
    assert info["use_sr"] and info["output_size"] == side and info["capture"] == "torch.export"
    assert info["conversion_seconds"] > 0 and info["package_bytes"] > 0
    if sys.platform != "darwin":
        assert info["coreml_vs_torch_max_abs_diff"].startswith("unavailable: ")


def test_coreml_normalisation_is_baked_in_and_equals_torch(default_package):
    path, _ = default_package
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (1, 3, TINY_SIDE, TINY_SIDE)).astype(np.float32) for _ in "abc"]
    got = evaluate_until_first_conv(path, {f"view_{i}": p for i, p in enumerate(pixels)})
    expected = normalize_views(torch.from_numpy(np.stack(pixels, axis=1)) / 255.0)
    expected = expected.flatten(0, 1).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=4e-3)  # fp16 constants and arithmetic
    assert np.abs(got - expected).max() < 0.1 * np.abs(expected).mean()


@pytest.mark.slow
def test_coreml_palettised_at_test_resolution_bypasses_sr(tiny_ckpt, default_package, tmp_path):
    out = tmp_path / "pal.mlpackage"
    shutil.copytree(default_package[0], out)  # an older package there must be replaced
    info = coreml.convert(tiny_ckpt, out, palettization=True, test_resolution=64)
    print("palettised conversion:", info)
    spec = coreml.inspect_package(out)
    assert spec["op_types"].get("constexpr_lut_to_dense", 0) > 0
    assert "pixel_shuffle" not in spec["op_types"]
    assert spec["inputs"]["view_0"]["width"] == 64 and spec["outputs"]["albedo"] == [1, 3, 64, 64]
    assert not info["use_sr"] and info["output_size"] == 64
    assert [p.name for p in tmp_path.iterdir()] == ["pal.mlpackage"]  # no temp leftovers


@pytest.mark.slow
def test_coreml_fp32_convattn_with_sr_at_test_resolution(tmp_path):
    ckpt = _checkpoint(tmp_path / "convattn.pth", "convattn")
    out = tmp_path / "convattn.mlpackage"
    info = coreml.convert(ckpt, out, fp16=False, test_resolution=64, use_sr=True)
    print("convattn fp32 conversion:", info)
    spec = coreml.inspect_package(out)
    assert spec["outputs"]["normal"] == [1, 3, 128, 128]
    assert spec["weight_dtypes"].get("fp32", 0) > 50 and "fp16" not in spec["weight_dtypes"]
    assert info["arch"] == "convattn" and info["use_sr"]
    feeds = {f"view_{i}": np.full((1, 3, 64, 64), 255.0, np.float32) for i in range(3)}
    got = evaluate_until_first_conv(out, feeds)
    expected = normalize_views(torch.ones(1, 3, 3, 64, 64)).flatten(0, 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_two_conversions_of_one_checkpoint_are_the_same_bytes(tiny_ckpt, default_package, tmp_path):
    """coremltools alone wrote random item identifiers and the metadata map in hash order."""
    path, _ = default_package
    coreml.convert(tiny_ckpt, tmp_path / "again.mlpackage")
    assert tree_bytes(tmp_path / "again.mlpackage") == tree_bytes(path)
    manifest = json.loads((path / "Manifest.json").read_text())
    assert manifest["rootModelIdentifier"] in manifest["itemInfoEntries"]


def test_convert_rejects_bad_requests(tmp_path):
    no_sr = _checkpoint(tmp_path / "no_sr.pth", **{"model.use_sr": False})
    with pytest.raises(ValueError, match=r"no_sr\.pth.*--use-sr"):
        coreml.convert(no_sr, tmp_path / "x.mlpackage", test_resolution=64, use_sr=True)
    with pytest.raises(ValueError, match="multiple of 32"):
        coreml.convert(no_sr, tmp_path / "x.mlpackage", test_resolution=50)
    with pytest.raises(ValueError, match=r"\.mlpackage"):
        coreml.convert(no_sr, tmp_path / "x.mlmodel")
    with pytest.raises(ValueError, match="minimum_ios"):
        coreml.convert(no_sr, tmp_path / "x.mlpackage", minimum_ios=12)
    assert not (tmp_path / "x.mlpackage").exists()


@pytest.mark.skipif(sys.platform == "darwin", reason="predict() is real on macOS")
def test_predict_is_gated_off_macos(tmp_path):
    frames = [np.zeros((32, 32, 3), np.uint8)] * 3
    with pytest.raises(coreml.CoreMLUnavailable, match="macOS"):
        coreml.predict(tmp_path / "pbr_model.mlpackage", frames)


# --------------------------------------------------------------------- ONNX


@pytest.mark.parametrize(
    ("arch", "use_sr"),
    [("mobilenetv3_vit", True), pytest.param("convattn", False, marks=pytest.mark.slow)],
)
def test_onnx_matches_torch(tmp_path, arch, use_sr):
    import onnxruntime as ort

    ckpt = _checkpoint(tmp_path / "student.pth", arch)
    out = tmp_path / "student.onnx"
    info = onnx_export.export_onnx(ckpt, out, input_size=64, use_sr=use_sr)
    print(arch, "max |ORT - torch|:", info["max_abs_diff"])
    assert info["max_abs_diff"] <= 1e-5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx", "student.pth"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["views"]
    outputs = session.run(None, {"views": np.zeros((3, 3, 3, 64, 64), np.float32)})
    side = 128 if use_sr else 64
    assert [o.shape for o in outputs] == [(3, c, side, side) for c in (3, 1, 1, 3)]
    assert info["output_size"] == side


def test_onnx_parity_failure_writes_nothing(tmp_path, monkeypatch):
    ckpt = _checkpoint(tmp_path / "student.pth")
    monkeypatch.setattr(
        onnx_export, "parity", lambda *a: dict.fromkeys(onnx_export.OUTPUT_NAMES, 0.5)
    )
    with pytest.raises(onnx_export.ExportParityError, match="not written"):
        onnx_export.export_onnx(ckpt, tmp_path / "student.onnx", input_size=32)
    assert [p.name for p in tmp_path.iterdir()] == ["student.pth"]


# --------------------------------------------------------------------- Core ML inference


def test_coreml_inference_pipeline_with_the_onnx_student_standing_in(tiny_ckpt, default_package,
                                                                     tmp_path):  # fmt: skip
    """The guide's coreml/run_inference.py on Linux: resize to the package's input side,
    predict (ONNX export of the same student), Lanczos to 2048, four PNGs."""
    from fresnel.pbr import coreml_inference

    package, info = default_package
    renders = tmp_path / "renders"
    renders.mkdir()
    rng = np.random.default_rng(0)
    for name in ("c.jpg", "a.png", "b.png", "d.png"):  # the first three, sorted, are used
        Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(renders / name)
    onnx = tmp_path / "student.onnx"
    onnx_export.export_onnx(tiny_ckpt, onnx, input_size=info["input_size"])
    predictor = coreml_inference.onnx_predictor(onnx)
    out = coreml_inference.run(package, renders, tmp_path / "out", predictor)

    assert out["views"] == ["a.png", "b.png", "c.jpg"] and out["output_side"] == 2048
    assert out["model_output_side"] == 2 * info["input_size"]  # the SR head
    views, _ = coreml_inference.read_views(renders, info["input_size"])
    raw = predictor(views)
    for name in ("albedo", "roughness", "metallic", "normal"):
        with Image.open(tmp_path / "out" / f"{name}.png") as image:
            assert image.size == (2048, 2048) and image.mode == ("L" if name in
                                                                  ("roughness", "metallic") else "RGB")  # fmt: skip
            big = np.asarray(image, np.float32) / 255
        small = Image.fromarray(big if big.ndim == 2 else big[..., 0], mode="F")
        back = np.asarray(small.resize(raw[name].shape[-2:][::-1], Image.BOX))
        want = raw[name][0, 0] if name != "normal" else raw[name][0, 0] * 0.5 + 0.5
        assert np.abs(back - np.clip(want, 0, 1)).mean() < 0.02, name


@pytest.mark.skipif(sys.platform == "darwin", reason="predict() is real on macOS")
def test_coreml_inference_command_says_it_needs_macos(default_package, tmp_path):
    from support.workspace import run as sh

    renders = tmp_path / "renders"
    renders.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 60, 90, 200)).save(renders / f"{i}.png")
    out = sh(f"fresnel coreml_inference {default_package[0]} --input renders --output o",
             tmp_path, check=False)  # fmt: skip
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "needs macOS" in out.stderr.strip().splitlines()[-1]
