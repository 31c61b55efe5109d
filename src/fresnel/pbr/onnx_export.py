"""ONNX export of a trained PBR student, gated by a parity check against torch.

The graph has ONE input, `views` float32 [B, 3 views, 3, H, W], already ImageNet-normalised:
the same tensor `PBRStudent.forward` and `PBRDataset` use, so Python inference code needs no
second preprocessing path (Core ML takes one image per view instead, because its ImageType
holds a single image; see fresnel.pbr.coreml). The batch axis is dynamic, H and W are fixed
at export. Outputs: `albedo` [B,3,S,S], `roughness` [B,1,S,S], `metallic` [B,1,S,S] in 0..1
and `normal` [B,3,S,S] unit vectors, S = H * sr_scale with the SR head, else H.

The file is exported with torch's TorchScript-based exporter (`dynamo=False`), which writes
one self-contained .onnx (no `.onnx.data` side file). It is written atomically and only if
ONNX Runtime matches torch within `atol` on seeded random inputs (batch 2, so the dynamic
batch axis is exercised too).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from fresnel.device import onnx_session_options
from fresnel.io import atomic_path, sha256_file
from fresnel.pbr.maps import MAP_CHANNELS, NUM_VIEWS
from fresnel.pbr.student import PBRStudent, load_student

INPUT_NAME = "views"
OUTPUT_NAMES = tuple(MAP_CHANNELS)
PARITY_BATCH = 2


class ExportParityError(RuntimeError):
    """ONNX Runtime disagrees with torch beyond the tolerance; nothing was written."""


class StudentForExport(nn.Module):
    """`views` -> the four maps as a tuple (ONNX outputs are positional)."""

    def __init__(self, student: PBRStudent, use_sr: bool):
        super().__init__()
        self.student, self.use_sr = student, use_sr

    def forward(self, views):
        maps = self.student(views, use_sr=self.use_sr)
        return tuple(maps[name] for name in OUTPUT_NAMES)


def _export(wrapper: nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    dynamic = {INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in OUTPUT_NAMES}}
    torch.onnx.export(
        wrapper, (example,), str(path), input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES), opset_version=opset, dynamic_axes=dynamic,
        dynamo=False,
    )  # fmt: skip


def parity(wrapper: nn.Module, onnx_path, views: torch.Tensor) -> dict[str, float]:
    """Max |ONNX Runtime - torch| per output map on `views`."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(onnx_path), onnx_session_options(), providers=["CPUExecutionProvider"]
    )
    got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: views.numpy()})
    with torch.no_grad():
        expected = wrapper(views)
    return {
        name: float((torch.from_numpy(g) - e).abs().max())
        for name, g, e in zip(OUTPUT_NAMES, got, expected, strict=True)
    }


def export_onnx(
    checkpoint,
    output,
    opset: int = 17,
    input_size: int | None = None,
    use_sr: bool = True,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict:
    """Export a student checkpoint to `output` (.onnx) if ONNX Runtime matches torch.

    input_size: input side (default: the config's data.image_size; a multiple of 32).
    use_sr: keep the trained SR head when the student has one; False bypasses it.
    """
    start = time.perf_counter()
    model, cfg = load_student(checkpoint)
    side = int(input_size or cfg.data.image_size)
    if side <= 0 or side % 32:
        raise ValueError(f"input_size={side}: the student needs a multiple of 32")
    keep_sr = use_sr and model.sr is not None
    wrapper = StudentForExport(model, keep_sr).eval()
    generator = torch.Generator().manual_seed(seed)
    views = torch.randn(PARITY_BATCH, NUM_VIEWS, 3, side, side, generator=generator)
    output = Path(output)
    with atomic_path(output) as tmp:
        _export(wrapper, views[:1], tmp, opset)
        diffs = parity(wrapper, tmp, views)
        worst = max(diffs.values())
        if not worst <= atol:  # also catches NaN
            raise ExportParityError(
                f"{output}: ONNX Runtime differs from torch by {worst:.2e} (tolerance "
                f"{atol:.0e}; per map {diffs}); not written"
            )
    return {
        "output": str(output),
        "checkpoint": str(checkpoint),
        "arch": cfg.model.arch,
        "input_size": side,
        "output_size": model.output_side(side, keep_sr),
        "use_sr": keep_sr,
        "opset": opset,
        "max_abs_diff": worst,
        "max_abs_diff_per_map": diffs,
        "atol": atol,
        "onnx_sha256": sha256_file(output),
        "export_seconds": round(time.perf_counter() - start, 2),
    }
