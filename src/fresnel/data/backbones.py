"""Export DINOv2-small and Depth Anything V2 small to self-contained ONNX files.

The guide's export_dinov2_model.py / export_depth_model.py, with one contract per model:

* DINOv2: input ``pixel_values`` float32 (B, 3, 518, 518), RGB in [0, 1]; ImageNet mean/std
  normalisation happens inside the graph; output ``features`` float32 (B, 37, 37, 384), the
  patch tokens (CLS and register tokens dropped) on the 37x37 grid.
* Depth: same input; output ``depth`` float32 (B, 518, 518), relative depth as the model
  gives it.

``source`` picks the weights: ``"tiny-random"`` (the same architecture class built from a
small seeded config; for the offline demo and tests, outputs are not meaningful),
``"local:<dir>"`` (a Hugging Face model folder) or a hub id. Nothing falls back silently.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from pathlib import Path

import numpy as np

from fresnel import io
from fresnel.device import onnx_session_options
from fresnel.images import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

IMAGE_SIZE = 518
PATCH_SIZE = 14
GRID = IMAGE_SIZE // PATCH_SIZE  # 37
DINOV2_DIM = 384
MAX_ABS_DIFF = 1e-3
TINY = "tiny-random"
TINY_NOTE = "tiny-random: random weights from a small config, outputs are not meaningful features"


class SourceError(RuntimeError):
    """A requested model source cannot be loaded."""


# --------------------------------------------------------------------------- model building


def tiny_dinov2_config():
    """DINOv2-small's token layout (hidden 384, patch 14, image 518) with only 2 layers."""
    from transformers import Dinov2Config

    return Dinov2Config(
        hidden_size=DINOV2_DIM,
        num_hidden_layers=2,
        num_attention_heads=6,
        mlp_ratio=4,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )


def tiny_depth_config():
    """Depth Anything V2's structure (4 backbone stages, DPT neck) at toy widths."""
    from transformers import DepthAnythingConfig, Dinov2Config

    backbone = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
        out_indices=[1, 2, 3, 4],
        reshape_hidden_states=False,
    )
    return DepthAnythingConfig(
        backbone_config=backbone,
        patch_size=PATCH_SIZE,
        reassemble_hidden_size=32,
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
        head_hidden_size=8,
        depth_estimation_type="relative",
    )


def build_tiny(kind: str, seed: int = 0):
    """The tiny-random model for `kind` ("dinov2" or "depth"), seeded, in eval mode.

    The depth model's convolutions are re-initialised Kaiming-normal (fan-in, ReLU gain, zero
    bias): with the library's init (normal, std 0.02) its output is ~1e-7, numerically
    degenerate; with Kaiming the depth maps span O(1..100) like a real relative-depth model.
    """
    import torch
    from transformers import DepthAnythingForDepthEstimation, Dinov2Model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "dinov2":
            return Dinov2Model(tiny_dinov2_config()).eval()
        model = DepthAnythingForDepthEstimation(tiny_depth_config()).eval()
        for module in [*model.neck.modules(), *model.head.modules()]:
            if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
        return model


def load_model(kind: str, source: str, seed: int = 0):
    """Load the model for `kind` from `source`; errors name the source and the alternatives."""
    from transformers import AutoModel, DepthAnythingForDepthEstimation

    if source == TINY:
        return build_tiny(kind, seed)
    cls = AutoModel if kind == "dinov2" else DepthAnythingForDepthEstimation
    if source.startswith("local:"):
        folder = Path(source.removeprefix("local:"))
        if not (folder / "config.json").is_file():
            raise SourceError(
                f"{kind} source {source!r}: {folder} is not a model folder (no config.json)"
            )
        return cls.from_pretrained(str(folder)).eval()
    try:
        return cls.from_pretrained(source).eval()
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise SourceError(
            f"{kind} source {source!r}: cannot load this hub id"
            f"{' (HF_HUB_OFFLINE is set and it is not in the local cache)' if offline else ''}; "
            f"download it and use 'local:<dir>', or use '{TINY}' for the offline demo ({exc})"
        ) from exc


def _check_dinov2_layout(config) -> None:
    patch = config.patch_size if isinstance(config.patch_size, int) else config.patch_size[0]
    if patch != PATCH_SIZE or config.hidden_size != DINOV2_DIM:
        raise SourceError(
            f"DINOv2 model has patch size {patch} and hidden size {config.hidden_size}; the "
            f"features format needs {PATCH_SIZE} and {DINOV2_DIM} (DINOv2-small: 37x37x384)"
        )


# --------------------------------------------------------------------------- wrappers


def _normalizer():
    import torch

    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean, std


def wrap(kind: str, model):
    """An nn.Module taking [0, 1] RGB and returning the ONNX contract's output."""
    import torch

    # Eager attention (matmul, softmax, matmul) exports to a plain graph; the SDPA path
    # exports with NaN guards (IsNaN/Where) that cost ~40% of the CPU run time.
    model.set_attn_implementation("eager")

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            mean, std = _normalizer()
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, pixel_values):
            x = (pixel_values - self.mean) / self.std
            if kind == "depth":
                return self.model(pixel_values=x).predicted_depth
            tokens = self.model(pixel_values=x).last_hidden_state
            # [CLS, registers..., patches]: the patch tokens are always the last 37*37.
            # Constant target shape, so the ONNX output is typed (batch, 37, 37, 384).
            patches = tokens[:, -GRID * GRID :, :]
            return patches.reshape(-1, GRID, GRID, DINOV2_DIM)

    return Wrapper().eval()


# --------------------------------------------------------------------------- export

# The TorchScript exporter is the default: on this CPU it exports the tiny models in ~2 s
# (dynamo: ~15 s) and its graphs run 2-5x faster in ONNX Runtime (the dynamo graphs keep
# decomposed ops the ORT CPU fusions miss). Both give one self-contained file and match torch.
EXPORTERS = ("torchscript", "dynamo")


def _export_torchscript(wrapper, sample, path: Path, output_name: str, opset: int) -> None:
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings about fixed shapes
        torch.onnx.export(
            wrapper,
            (sample,),
            str(path),
            input_names=["pixel_values"],
            output_names=[output_name],
            dynamic_axes={"pixel_values": {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def _export_dynamo(wrapper, sample, path: Path, output_name: str, opset: int) -> None:
    import torch

    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.WARNING)
    try:
        program = torch.onnx.export(
            wrapper,
            (sample,),
            input_names=["pixel_values"],
            output_names=[output_name],
            dynamic_shapes={"pixel_values": {0: torch.export.Dim("batch", min=1, max=1024)}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    finally:
        for logger, level in zip(quiet, levels, strict=True):
            logger.setLevel(level)


def _declare_shapes(path: Path, output_name: str, dims: list) -> None:
    """Write the contract's (batch, ...) shapes into the graph's input and output types.

    The tracer leaves the depth output typed as e.g. (batch, batch, Squeeze_dim_2); consumers
    that read shapes from the file should see (batch, 518, 518).
    """
    import onnx

    model = onnx.load(str(path))
    for value, shape in (
        (model.graph.input[0], ["batch", 3, IMAGE_SIZE, IMAGE_SIZE]),
        (model.graph.output[0], ["batch", *dims[1:]]),
    ):
        tensor_shape = value.type.tensor_type.shape
        del tensor_shape.dim[:]
        for dim in shape:
            entry = tensor_shape.dim.add()
            if isinstance(dim, str):
                entry.dim_param = dim
            else:
                entry.dim_value = dim
    if model.graph.output[0].name != output_name:
        raise RuntimeError(f"{path}: output is {model.graph.output[0].name!r}, not {output_name!r}")
    onnx.save(model, str(path))


def _check_file(path: Path) -> int:
    """onnx.checker on the file; refuse external data; return the default-domain opset."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    if any(uses_external_data(t) for t in model.graph.initializer):
        raise RuntimeError(f"{path}: export wrote external data; expected one self-contained file")
    onnx.checker.check_model(model, full_check=True)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _verify(path: Path, wrapper, output_name: str, seed: int) -> tuple[float, float]:
    """ORT vs torch on one random batch of 2; returns (max |diff|, tolerance).

    The tolerance is MAX_ABS_DIFF for outputs of unit scale, scaled up by max |output| beyond
    that (float32 relative error), so a real depth model's O(10) outputs are judged fairly.
    """
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).random((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = wrapper(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(
        str(path), onnx_session_options(), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run([output_name], {"pixel_values": x})
    if got.shape != expected.shape:
        raise RuntimeError(f"{path}: ONNX output shape {got.shape}, torch {expected.shape}")
    diff = float(np.max(np.abs(got - expected)))
    tolerance = MAX_ABS_DIFF * max(1.0, float(np.max(np.abs(expected))))
    if not diff <= tolerance:
        raise RuntimeError(
            f"{path}: ONNX Runtime differs from torch by {diff:.3g} > {tolerance:.3g}"
        )
    return diff, tolerance


def _config_summary(kind: str, config) -> dict:
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size", "image_size")
    if kind == "dinov2":
        return {k: getattr(config, k, None) for k in (*keys, "mlp_ratio")}
    backbone = config.backbone_config
    return {
        "backbone": {k: getattr(backbone, k, None) for k in keys},
        "out_indices": list(getattr(backbone, "out_indices", []) or []),
        "reassemble_factors": list(config.reassemble_factors),
        "neck_hidden_sizes": list(config.neck_hidden_sizes),
        "fusion_hidden_size": config.fusion_hidden_size,
        "head_hidden_size": config.head_hidden_size,
        "depth_estimation_type": config.depth_estimation_type,
    }


def _output_spec(kind: str) -> dict:
    if kind == "dinov2":
        return {"features": ["B", GRID, GRID, DINOV2_DIM]}
    return {"depth": ["B", IMAGE_SIZE, IMAGE_SIZE]}


def _export(kind: str, source: str, out_path, opset: int, seed: int, exporter: str) -> dict:
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    (output_name,) = _output_spec(kind)
    started = time.perf_counter()
    model = load_model(kind, source, seed)
    if kind == "dinov2":
        _check_dinov2_layout(model.config)
    wrapper = wrap(kind, model)
    sample = torch.zeros(2, 3, IMAGE_SIZE, IMAGE_SIZE)
    export = _export_torchscript if exporter == "torchscript" else _export_dynamo
    out_path = Path(out_path)
    with io.atomic_path(out_path) as tmp:
        export(wrapper, sample, tmp, output_name, opset)
        _declare_shapes(tmp, output_name, _output_spec(kind)[output_name])
        file_opset = _check_file(tmp)
        diff, tolerance = _verify(tmp, wrapper, output_name, seed)
        digest = io.sha256_file(tmp)
    seconds = time.perf_counter() - started
    log.info(
        "exported %s (%s) to %s in %.1f s; ORT max|diff| %.2g",
        kind,
        source,
        out_path,
        seconds,
        diff,
    )
    info = {
        "source": source,
        "random_weights": source == TINY,
        "config": _config_summary(kind, model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "onnx_sha256": digest,
        "onnx_bytes": out_path.stat().st_size,
        "ort_max_abs_diff": diff,
        "ort_tolerance": tolerance,
        "opset": file_opset,
        "exporter": exporter,
        "input": {"pixel_values": ["B", 3, IMAGE_SIZE, IMAGE_SIZE]},
        "output": _output_spec(kind),
        "normalisation": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        "export_seconds": round(seconds, 2),
    }
    if source == TINY:
        info["note"] = TINY_NOTE
    return info


def export_dinov2(
    source: str, out_path, opset: int = 17, seed: int = 0, exporter: str = "torchscript"
) -> dict:
    """Export DINOv2 (patch features, 37x37x384) to `out_path`; returns provenance info."""
    return _export("dinov2", source, out_path, opset, seed, exporter)


def export_depth(
    source: str, out_path, opset: int = 17, seed: int = 0, exporter: str = "torchscript"
) -> dict:
    """Export Depth Anything V2 (relative depth, 518x518) to `out_path`; returns provenance info."""
    return _export("depth", source, out_path, opset, seed, exporter)
