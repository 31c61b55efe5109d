"""A tiny deterministic stand-in for rembg's u2net: bright pixels are foreground.

Same interface as u2net.onnx (input 1x3x320x320 float32, first output 1x1x320x320), computing
sigmoid(k * (mean over channels - t)). rembg's U2netSession feeds it (x / max(x) - mean) / std
with ImageNet mean/std, so black is about -2.0 and white about +2.4 after the channel mean;
t = 0.2 sits between them and k = 20 makes the output almost binary.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper


def bright_is_foreground_model(k: float = 20.0, t: float = 0.2) -> onnx.ModelProto:
    """The ONNX model described above (opset 17)."""
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Sub", ["mean", "t"], ["centred"]),
        helper.make_node("Mul", ["centred", "k"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bright_is_foreground",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 320, 320])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 320, 320])],
        initializer=[
            helper.make_tensor("t", TensorProto.FLOAT, [], [t]),
            helper.make_tensor("k", TensorProto.FLOAT, [], [k]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_model(path: Path) -> Path:
    """Save the model at `path` (e.g. <model_dir>/u2net.onnx) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(bright_is_foreground_model(), path)
    return path
