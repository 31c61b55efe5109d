"""Forward + backward time of the tile renderer vs the dense reference on decoder-like scenes:
N = 1369 * m Gaussians (m = 1, 4, 16 per DINOv2 patch of a 37 x 37 grid covering the image),
depth ~ U(1.5, 2.5), each about the size of its patch, opacity ~ U(0.5, 0.9), fx = fy = 1.1 W.

    python benchmarks/renderer_speed.py [--device cuda] [--repeat 3]

writes results/renderer_speed.json and .md (renderer_speed_<device>.* for other devices).
"""

from __future__ import annotations

import argparse
import torch
from common import RESULTS, save, timed, timed_interleaved
from fresnel.render import Camera, TileBasedRenderer, render_dense

GRID = 37
PER_PATCH = (1, 4, 16)
RESOLUTIONS = (64, 128, 256)
# The dense reference evaluates N*H*W Gaussian-pixel pairs; unchunked it would hold at least
# four float32 N*H*W tensors (offsets, alpha, transmittance), 16 bytes a pair: skip above 6 GB.
DENSE_MAX_BYTES = 6e9
DENSE_BYTES_PER_PAIR = 16


def decoder_scene(per_patch: int, size: int, device: str, seed: int = 0):
    """Gaussians placed like a decoder's output: per_patch per grid cell, camera space."""
    gen = torch.Generator().manual_seed(seed)
    n = GRID * GRID * per_patch
    camera = Camera(1.1 * size, 1.1 * size, size / 2, size / 2, size, size)
    patch = size / GRID
    cell = torch.arange(GRID * GRID).repeat_interleave(per_patch)
    u = (cell % GRID + torch.rand(n, generator=gen)) * patch
    v = (cell // GRID + torch.rand(n, generator=gen)) * patch
    z = 1.5 + torch.rand(n, generator=gen)
    means = torch.stack(((u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z), -1)
    sigma_px = 0.5 * patch * (0.5 + torch.rand(n, 3, generator=gen))  # ~ half a patch
    scales = sigma_px * z[:, None] / camera.fx
    quats = torch.randn(n, 4, generator=gen)
    opacities = 0.5 + 0.4 * torch.rand(n, generator=gen)
    colors = torch.rand(n, 3, generator=gen)
    inputs = [t.to(device).requires_grad_() for t in (means, scales, quats, opacities, colors)]
    return inputs, camera


def step(render, inputs, camera, target):
    """One forward + backward pass."""
    out = render(*inputs, camera)
    loss = (out.image * target).sum() + out.alpha.sum() + 0.1 * out.depth.sum()
    loss.backward()
    for t in inputs:
        t.grad = None
    if inputs[0].device.type == "cuda":
        torch.cuda.synchronize()


def measure(per_patch: int, size: int, device: str, repeat: int, tile) -> dict:
    inputs, camera = decoder_scene(per_patch, size, device)
    n = inputs[0].shape[0]
    target = torch.rand(3, size, size, device=device)
    fns = {"tile": lambda: step(tile, inputs, camera, target)}
    dense_bytes = n * size * size * DENSE_BYTES_PER_PAIR
    if dense_bytes <= DENSE_MAX_BYTES:
        fns["dense"] = lambda: step(render_dense, inputs, camera, target)
    for fn in fns.values():
        fn()  # warm-up
    times = timed_interleaved(fns, repeat) if "dense" in fns else timed(fns["tile"], repeat)
    if "dense" not in fns:
        times = {"tile": times, "dense": "skipped: N*H*W too large"}
    row = {"N": n, "resolution": size, "tile": times["tile"], "dense": times["dense"]}
    if isinstance(times["dense"], dict):
        row["speedup"] = round(times["dense"]["median_s"] / times["tile"]["median_s"], 1)
    print(row)
    return row


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"Renderer forward+backward, median seconds ({device}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads)", "",
             "| N | resolution | tile s | dense s | speedup |", "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        dense = r["dense"]["median_s"] if isinstance(r["dense"], dict) else r["dense"]
        res = f"{r['resolution']}x{r['resolution']}"
        lines.append(f"| {r['N']} | {res} | {r['tile']['median_s']} | {dense} | "
                     f"{r.get('speedup', '-')} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    tile = TileBasedRenderer()
    rows = [measure(m, s, args.device, args.repeat, tile) for m in PER_PATCH for s in RESOLUTIONS]
    suffix = "" if args.device == "cpu" else "_" + args.device.replace(":", "")
    name = f"renderer_speed{suffix}"
    save(name, {"device": args.device, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "dense_max_bytes": DENSE_MAX_BYTES,
                "results": rows})  # fmt: skip
    (RESULTS / f"{name}.md").write_text(markdown(rows, args.device))


if __name__ == "__main__":
    main()
