"""Core ML export of a trained PBR student (the guide's `training/coreml/converter.py`).

What `convert` does, in the guide's order:
1. Reads the student architecture from the checkpoint's config (no flag needed).
2. Keeps the trained SR head (512 -> 1024 for mobilenetv3_512). `test_resolution` converts at
   another input side and bypasses SR (output side = input side) unless `use_sr` is set.
3. Input side = config data.image_size unless `test_resolution`.
4. Bakes ImageNet normalisation into the graph: three RGB `ct.ImageType` inputs `view_0..2`
   take 0..255 pixels.
5. Runs coremltools' default MIL pass pipeline, which includes constant elimination and dead
   code elimination (`common::const_elimination`, `common::dead_code_elimination`).
6. FP16 compute precision by default (fp16 weights and activations); `fp16=False` keeps FP32.
   `palettization=True` adds 8-bit k-means weight palettization (lookup tables,
   `constexpr_lut_to_dense`; needs scikit-learn).
7. minimum_deployment_target iOS 17 by default.

The graph is captured with `torch.export` (then `run_decompositions({})`), not jit.trace:
jit.trace is deprecated in torch 2.x, and torch.export is the path that also converts
attention (see DESIGN.md section 5). The package is saved atomically: written into a temp
folder beside the target, then renamed over it. It is reproducible: two conversions of one
checkpoint give the same bytes (coremltools writes the metadata map in hash order and random
item identifiers; `make_reproducible` sorts the one and derives the other from item paths).

Outputs are four float tensors `albedo` [1,3,S,S], `roughness` [1,1,S,S], `metallic`
[1,1,S,S], `normal` [1,3,S,S] (unit vectors), S = output side; the app upscales to 2048.

Running a Core ML model (`predict`) works only on macOS; on other systems this module
converts, saves and inspects, and `predict` raises instead of being called.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fresnel.images import IMAGENET_MEAN, IMAGENET_STD
from fresnel.pbr.maps import MAP_CHANNELS, NUM_VIEWS
from fresnel.pbr.student import PBRStudent, load_student
from fresnel.pbr.student_config import CoreMLOptions

INPUT_NAMES = tuple(f"view_{i}" for i in range(NUM_VIEWS))
OUTPUT_NAMES = tuple(MAP_CHANNELS)
DEPLOYMENT_TARGETS = (16, 17, 18)
PALETTE_BITS = 8
# MIL proto data types (coremltools.proto.MIL_pb2.DataType) used when inspecting a package.
_FLOAT16, _FLOAT32 = 10, 11


class CoreMLUnavailable(RuntimeError):
    """The operation needs the Core ML runtime, which only exists on macOS."""


class NormalisedStudent(nn.Module):
    """Three 0..1 images (ImageType already applied scale 1/255) -> the four maps.

    ImageType offers one scalar `scale` for all channels plus per-channel `bias`, but ImageNet
    uses a different std per channel, so (x/255 - mean)/std cannot be expressed exactly as an
    ImageType alone. The scale 1/255 stays in the ImageType; (x - mean) * (1/std) runs here,
    in the graph, with the same constants as the training data pipeline.
    """

    def __init__(self, student: PBRStudent, use_sr: bool):
        super().__init__()
        self.student, self.use_sr = student, use_sr
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 1, 3, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(IMAGENET_STD).view(1, 1, 3, 1, 1))

    def forward(self, view_0, view_1, view_2):
        views = (torch.stack([view_0, view_1, view_2], dim=1) - self.mean) * self.inv_std
        maps = self.student(views, use_sr=self.use_sr)
        return tuple(maps[name] for name in OUTPUT_NAMES)


def _deployment_target(ct, minimum_ios: int):
    if minimum_ios not in DEPLOYMENT_TARGETS:
        raise ValueError(
            f"minimum_ios={minimum_ios} is not supported; use one of {DEPLOYMENT_TARGETS}"
        )
    return getattr(ct.target, f"iOS{minimum_ios}")


def _plan(checkpoint, model: PBRStudent, cfg, test_resolution, use_sr) -> tuple[int, bool]:
    """(input side, keep SR) following the guide's flags."""
    if use_sr and model.sr is None:
        raise ValueError(
            f"{checkpoint}: --use-sr was given but this student was trained without an SR "
            f"head (model.use_sr is false); drop --use-sr"
        )
    side = int(test_resolution) if test_resolution else cfg.data.image_size
    keep_sr = model.sr is not None and (test_resolution is None or use_sr)
    if side <= 0 or side % 32:
        raise ValueError(f"--test-resolution {side}: the student needs a multiple of 32")
    return side, keep_sr


def _image_inputs(ct, side: int) -> list:
    return [
        ct.ImageType(
            name=name, shape=(1, 3, side, side), scale=1.0 / 255.0,
            color_layout=ct.colorlayout.RGB,
        )
        for name in INPUT_NAMES
    ]  # fmt: skip


def _palettize(mlmodel):
    try:
        import sklearn  # noqa: F401  (coremltools' k-means needs it)
    except ImportError as err:
        raise ImportError(
            "--palettization needs scikit-learn for k-means: pip install scikit-learn"
        ) from err
    from coremltools.optimize.coreml import (
        OpPalettizerConfig,
        OptimizationConfig,
        palettize_weights,
    )

    config = OptimizationConfig(global_config=OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS))
    return palettize_weights(mlmodel, config)


def save_package(mlmodel, output: Path) -> None:
    """Save an .mlpackage (a folder) atomically: build it beside `output`, then rename."""
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{output.name}.", dir=output.parent))
    try:
        staged = staging / output.name
        mlmodel.save(str(staged))
        make_reproducible(staged)
        if output.exists():
            os.replace(output, staging / "previous")
        os.replace(staged, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def make_reproducible(package: Path) -> None:
    """Rewrite a saved .mlpackage so that the same model is the same bytes (a DVC-tracked
    output): item identifiers derived from each item's path, the spec serialised with its
    maps in key order."""
    from coremltools.proto import Model_pb2

    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    items = manifest["itemInfoEntries"]
    ids = {old: str(uuid.uuid5(uuid.NAMESPACE_URL, info["path"])) for old, info in items.items()}
    root = items[manifest["rootModelIdentifier"]]
    manifest["itemInfoEntries"] = {ids[old]: info for old, info in items.items()}
    manifest["rootModelIdentifier"] = ids[manifest["rootModelIdentifier"]]
    # Core ML's own layout: opening the package with coremltools rewrites it the same
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")
    spec_path = package / "Data" / root["path"]
    spec = Model_pb2.Model()
    spec.ParseFromString(spec_path.read_bytes())
    spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def convert(checkpoint, output, options: CoreMLOptions | None = None, **changes) -> dict:
    """Convert a student checkpoint to `output` (.mlpackage) with `options` (the guide's
    converter flags) and any of their fields given as keywords; returns what was built."""
    import coremltools as ct

    opts = CoreMLOptions.from_dict({**asdict(options or CoreMLOptions()), **changes})
    fp16, palettization, use_sr = opts.fp16, opts.palettization, opts.use_sr
    test_resolution, minimum_ios = opts.test_resolution, opts.minimum_ios
    output = Path(output)
    if output.suffix != ".mlpackage":
        raise ValueError(f"{output}: the Core ML output must end in .mlpackage")
    target = _deployment_target(ct, minimum_ios)
    start = time.perf_counter()
    model, cfg = load_student(checkpoint)
    side, keep_sr = _plan(checkpoint, model, cfg, test_resolution, use_sr)
    wrapper = NormalisedStudent(model, keep_sr).eval()
    example = tuple(torch.rand(1, 3, side, side) for _ in INPUT_NAMES)
    with torch.no_grad():
        exported = torch.export.export(wrapper, example).run_decompositions({})
    mlmodel = ct.convert(
        exported,
        inputs=_image_inputs(ct, side),
        outputs=[ct.TensorType(name=name) for name in OUTPUT_NAMES],
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if fp16 else ct.precision.FLOAT32,
        pass_pipeline=ct.PassPipeline.DEFAULT,
        skip_model_load=sys.platform != "darwin",
    )
    if palettization:
        mlmodel = _palettize(mlmodel)
    mlmodel.short_description = (
        f"NeuroPBR student ({cfg.model.arch}): three RGB views {side}px -> albedo, roughness, "
        f"metallic, normal at {model.output_side(side, keep_sr)}px"
    )
    save_package(mlmodel, output)
    return {
        "coreml_vs_torch_max_abs_diff": _coreml_vs_torch(output, wrapper, side),
        "output": str(output),
        "checkpoint": str(checkpoint),
        "arch": cfg.model.arch,
        "input_size": side,
        "output_size": model.output_side(side, keep_sr),
        "use_sr": keep_sr,
        "fp16": fp16,
        "palettization": palettization,
        "minimum_ios": minimum_ios,
        "capture": "torch.export",
        "parameters": sum(p.numel() for p in model.parameters()),
        "package_bytes": package_bytes(output),
        "conversion_seconds": round(time.perf_counter() - start, 2),
    }


def _coreml_vs_torch(path, wrapper: NormalisedStudent, side: int) -> float | str:
    """Max |Core ML - torch| over the four maps on random pixels (macOS only)."""
    if sys.platform != "darwin":
        return f"unavailable: Core ML predict() needs macOS, this is {sys.platform}"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in INPUT_NAMES]
    got = predict(path, frames)
    pixels = [torch.from_numpy(f).permute(2, 0, 1)[None].float() / 255.0 for f in frames]
    with torch.no_grad():
        expected = wrapper(*pixels)
    return max(
        float(np.abs(np.asarray(got[name]) - e.numpy()).max())
        for name, e in zip(OUTPUT_NAMES, expected, strict=True)
    )


def package_bytes(path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _main_block(spec):
    function = spec.mlProgram.functions["main"]
    return function.block_specializations[function.opset]


def _const_dtype(op) -> int | None:
    return op.outputs[0].type.tensorType.dataType if op.type == "const" else None


def inspect_package(path) -> dict:
    """What a saved .mlpackage declares, read without the Core ML runtime (works on Linux)."""
    import coremltools as ct

    spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    ops = list(_main_block(spec).operations)
    inputs = {}
    for feature in spec.description.input:
        image = feature.type.imageType
        color = ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
        inputs[feature.name] = {"width": image.width, "height": image.height, "color": color}
    outputs = {
        feature.name: list(feature.type.multiArrayType.shape) for feature in spec.description.output
    }
    weight_dtypes = Counter(
        {_FLOAT16: "fp16", _FLOAT32: "fp32"}.get(_const_dtype(op), "other")
        for op in ops
        if op.type == "const" and op.outputs[0].type.tensorType.rank >= 2
    )
    return {
        "specification_version": spec.specificationVersion,
        "inputs": inputs,
        "outputs": outputs,
        "op_types": dict(Counter(op.type for op in ops)),
        "weight_dtypes": dict(weight_dtypes),
    }


def predict(path, views_uint8: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Run a converted package on three HxWx3 uint8 RGB views (macOS only)."""
    if sys.platform != "darwin":
        raise CoreMLUnavailable(
            f"{path}: Core ML predict() needs macOS (this is {sys.platform}); inspect the "
            f"package with inspect_package() or run the ONNX export instead"
        )
    import coremltools as ct
    from PIL import Image

    if len(views_uint8) != NUM_VIEWS:
        raise ValueError(f"expected {NUM_VIEWS} views, got {len(views_uint8)}")
    model = ct.models.MLModel(str(path))
    feed = {name: Image.fromarray(v) for name, v in zip(INPUT_NAMES, views_uint8, strict=True)}
    return model.predict(feed)
