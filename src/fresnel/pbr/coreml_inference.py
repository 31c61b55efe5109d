"""The guide's `coreml/run_inference.py`: three renders -> the Core ML student -> four
2048x2048 PNG maps (`fresnel coreml_inference model.mlpackage --input DIR --output DIR`).

Steps, as on the device: the first three images of the folder (png/jpg, sorted by name),
Lanczos-resized to the package's input side (512 for the iPhone student); the model (its
trained SR head doubles the side, 512 -> 1024); every map Lanczos-upscaled to 2048 (normals
renormalised after resampling); albedo.png, roughness.png, metallic.png, normal.png.

Core ML predicts on macOS only. Elsewhere the command stops with a message saying so, and
the same pre/post-processing runs with another predictor, e.g. the ONNX export of the same
student (`onnx_predictor`): that is how it is tested on Linux.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fresnel.device import onnx_session_options
from fresnel.images import load_rgb
from fresnel.io import write_json
from fresnel.pbr.data import normalize_views
from fresnel.pbr.maps import MAPS, NUM_VIEWS, normalize_normals, save_maps

FINAL_SIDE = 2048
VIEW_SUFFIXES = (".png", ".jpg", ".jpeg")
Predictor = Callable[[list[np.ndarray]], dict[str, np.ndarray]]


def read_views(folder, side: int) -> tuple[list[np.ndarray], list[str]]:
    """The first three images of `folder` (sorted), RGB uint8, Lanczos-resized to side."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: input folder not found")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in VIEW_SUFFIXES)
    if len(paths) < NUM_VIEWS:
        raise FileNotFoundError(
            f"{folder}: holds {len(paths)} png/jpg images; the student needs {NUM_VIEWS} views"
        )
    views = [np.asarray(load_rgb(p).resize((side, side), Image.LANCZOS)) for p in paths[:NUM_VIEWS]]
    return views, [p.name for p in paths[:NUM_VIEWS]]


def upscale(values: np.ndarray, side: int) -> torch.Tensor:
    """[C, H, W] float map -> [C, side, side], Lanczos per channel (PIL float images)."""
    channels = [
        np.asarray(Image.fromarray(np.asarray(c, np.float32), mode="F").resize(
            (side, side), Image.LANCZOS))
        for c in values
    ]  # fmt: skip
    return torch.from_numpy(np.stack(channels))


def finish_maps(raw: dict[str, np.ndarray], side: int = FINAL_SIDE) -> dict[str, torch.Tensor]:
    """Model outputs ([1, C, H, W] arrays) -> maps at side x side in their value ranges."""
    maps = {name: upscale(np.asarray(raw[name])[0], side) for name in MAPS}
    for name in ("albedo", "roughness", "metallic"):
        maps[name] = maps[name].clamp(0, 1)  # Lanczos overshoots at edges
    maps["normal"] = normalize_normals(maps["normal"][None])[0]
    return maps


def coreml_predictor(package) -> Predictor:
    from fresnel.pbr import coreml

    return lambda views: coreml.predict(package, views)


def onnx_predictor(onnx_path) -> Predictor:
    """The ONNX student behind the Core ML interface: uint8 views in, the four maps out
    (the package bakes the ImageNet normalisation in; here it is applied before ONNX)."""
    import onnxruntime as ort

    from fresnel.pbr.onnx_export import INPUT_NAME, OUTPUT_NAMES

    session = ort.InferenceSession(
        str(onnx_path), onnx_session_options(), providers=["CPUExecutionProvider"]
    )

    def predict(views: list[np.ndarray]) -> dict[str, np.ndarray]:
        x01 = torch.from_numpy(np.stack(views)).permute(0, 3, 1, 2).float() / 255.0
        feed = {INPUT_NAME: normalize_views(x01)[None].numpy()}
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), feed), strict=True))

    return predict


def run(package, input_dir, output_dir, predictor: Predictor | None = None) -> dict:
    """Predict and write the four maps; see the module doc. Returns what it did."""
    from fresnel.pbr import coreml

    spec = coreml.inspect_package(package)
    side = spec["inputs"]["view_0"]["width"]
    predict = predictor or coreml_predictor(package)
    views, names = read_views(input_dir, side)
    raw = predict(views)
    save_maps(finish_maps(raw), output_dir)
    info = {"package": str(package), "views": names, "input_side": side,
            "model_output_side": int(np.asarray(raw["albedo"]).shape[-1]),
            "output_side": FINAL_SIDE}  # fmt: skip
    write_json(Path(output_dir) / "inference.json", info)
    return info
