"""ONNX export of a trained decoder with a parity gate, the guide's ONNX inference
(`decoder_inference features.bin depth.bin out.bin`) and 3D Gaussian Splatting PLY export.

The ONNX graph maps features (B,37,37,384) and depth (B,256,256) to packed Gaussians
(B, N, 14) = [x,y,z, sx,sy,sz, qw,qx,qy,qz, opacity, r,g,b], N = 37*37*K for a fixed K.
`out.bin` is that (N, 14) array as raw little-endian float32.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fresnel import metrics
from fresnel.data.shards import ShardStream
from fresnel.decoder import gaussians
from fresnel.decoder.config import TrainConfig
from fresnel.decoder.train import batches, make_model, render_batch, split_ids
from fresnel.device import onnx_session_options
from fresnel.io import DINOV2_SHAPE, atomic_path, read_f32_bin, sha256_file, write_bytes
from fresnel.render import TileBasedRenderer
from fresnel.training import read_checkpoint
from fresnel.training.checkpoint import CheckpointError

log = logging.getLogger(__name__)

SH_C0 = 0.28209479177387814  # degree-0 spherical harmonic: colour = 0.5 + SH_C0 * f_dc
PLY_SH_REST = 45  # degree-3 SH coefficients beyond DC, written as zeros for viewer compatibility


class ExportParityError(RuntimeError):
    """ONNX Runtime disagrees with torch beyond the gate's tolerance."""


def load_checkpoint(path) -> tuple[torch.nn.Module, TrainConfig]:
    """The decoder (eval mode) and its training config from a checkpoint of `train`; the
    final weights of a run are `final_checkpoint(run_dir, checkpoint_names(experiment))`."""
    state = read_checkpoint(path)
    if "model" not in state:
        raise CheckpointError(f"{path}: holds no 'model' weights; not a decoder checkpoint")
    config = TrainConfig.from_dict(state["config"])
    model = make_model(config)
    model.load_state_dict(state["model"])
    return model.eval(), config


def _onnx_session(path):
    import onnxruntime as ort

    return ort.InferenceSession(
        str(path), onnx_session_options(), providers=["CPUExecutionProvider"]
    )


def parity(model, onnx_path, features, depth, resolution: int) -> dict:
    """Max |ORT - torch| on the packed Gaussians and PSNR of ORT renders vs torch renders."""
    with torch.no_grad():
        expected = model(features, depth)
    (got,) = _onnx_session(onnx_path).run(
        ["gaussians"], {"features": features.numpy(), "depth": depth.numpy()}
    )
    got = torch.from_numpy(got)
    renderer = TileBasedRenderer()
    with torch.no_grad():
        a = render_batch(renderer, expected, resolution).clamp(0, 1)
        b = render_batch(renderer, got, resolution).clamp(0, 1)
    return {
        "max_abs_diff": float((got - expected).abs().max()),
        "render_psnr_db": float(metrics.psnr(b, a).min()),
    }


def export_onnx(checkpoint, out_path, features, depth, opset=17, atol=1e-4, min_psnr=50.0):
    """Export, then gate: write `out_path` only when ONNX Runtime matches torch.

    features/depth: sample inputs (real held-out items) for the parity check.
    """
    model, config = load_checkpoint(checkpoint)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        torch.onnx.export(
            model, (features[:1], depth[:1]), str(tmp), input_names=["features", "depth"],
            output_names=["gaussians"], opset_version=opset, dynamo=False,
            dynamic_axes={"features": {0: "batch"}, "depth": {0: "batch"}, "gaussians": {0: "batch"}},
        )  # fmt: skip
        report = parity(model, tmp, features, depth, config.image_size)
        if report["max_abs_diff"] > atol or report["render_psnr_db"] < min_psnr:
            raise ExportParityError(
                f"{out_path}: ONNX Runtime differs from torch (max |diff| "
                f"{report['max_abs_diff']:.2e}, tolerance {atol:.0e}; render PSNR "
                f"{report['render_psnr_db']:.1f} dB, gate {min_psnr} dB); not written"
            )
    n = gaussians.NUM_PATCHES * config.gaussians_per_patch
    return {**report, "gaussians": n, "experiment": config.experiment,
            "onnx_sha256": sha256_file(out_path), "opset": opset}  # fmt: skip


def held_out_inputs(checkpoint, shard_dir, count: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and depth of up to `count` held-out images: the parity gate's inputs."""
    _, config = load_checkpoint(checkpoint)
    _, val_ids = split_ids(shard_dir, config.val_fraction, config.seed, config.max_images)
    batch = next(batches(ShardStream(shard_dir, shuffle=False), val_ids, count))
    return batch["dinov2"], batch["depth"]


def read_inputs(features_bin, depth_bin, depth_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The guide's per-image files -> (1,37,37,384) and (1,depth_size,depth_size) float32."""
    features = read_f32_bin(features_bin, DINOV2_SHAPE)
    raw = np.fromfile(depth_bin, dtype="<f4")
    side = math.isqrt(raw.size)
    if side * side != raw.size:
        raise ValueError(f"{depth_bin}: {raw.size} values is not a square depth map")
    depth = torch.from_numpy(raw.reshape(1, 1, side, side))
    if side != depth_size:
        depth = F.interpolate(depth, size=(depth_size, depth_size), mode="bilinear")
    return features[None], depth[:, 0].numpy()


def decoder_inference(model_onnx, features_bin, depth_bin, out_bin, ply=None) -> np.ndarray:
    """Run the exported decoder on one image's files; write out.bin (N,14) and maybe a PLY."""
    session = _onnx_session(model_onnx)
    depth_size = session.get_inputs()[1].shape[-1]  # the depth size the model was exported with
    features, depth = read_inputs(features_bin, depth_bin, depth_size)
    (packed,) = session.run(["gaussians"], {"features": features, "depth": depth})
    packed = np.ascontiguousarray(packed[0], dtype="<f4")
    write_bytes(out_bin, packed.tobytes())
    if ply:
        write_ply(ply, packed)
    return packed


def write_ply(path, packed: np.ndarray) -> None:
    """Standard 3DGS PLY (binary little endian): x y z, nx ny nz, f_dc_0..2, f_rest_0..44,
    opacity (logit), scale_0..2 (log), rot_0..3 (w x y z), as splat viewers expect."""
    n = packed.shape[0]
    fields = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
              + [f"f_rest_{i}" for i in range(PLY_SH_REST)]
              + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])  # fmt: skip
    g = gaussians.unpack(torch.from_numpy(packed))
    opacity = g["opacities"].clamp(1e-6, 1 - 1e-6)
    quats = F.normalize(g["quats"], dim=-1)
    columns = [g["means"], torch.zeros(n, 3), (g["colors"] - 0.5) / SH_C0,
               torch.zeros(n, PLY_SH_REST), torch.logit(opacity)[:, None],
               g["scales"].clamp_min(1e-12).log(), quats]  # fmt: skip
    data = torch.cat(columns, dim=1).numpy().astype("<f4")
    header = "\n".join(["ply", "format binary_little_endian 1.0", f"element vertex {n}",
                        *[f"property float {f}" for f in fields], "end_header"]) + "\n"  # fmt: skip
    write_bytes(path, header.encode() + data.tobytes())


def read_ply(path) -> dict[str, np.ndarray]:
    """Parse a PLY written by write_ply (for tests and tools)."""
    raw = Path(path).read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    names = [line.split()[-1] for line in head.decode().splitlines() if line.startswith("property")]
    table = np.frombuffer(body, dtype="<f4").reshape(-1, len(names))
    return {name: table[:, i] for i, name in enumerate(names)}
