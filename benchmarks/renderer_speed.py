"""Forward + backward time of the tile renderer vs the dense reference on decoder-like scenes:
N = 1369 * m Gaussians (m = 1, 4, 16 per DINOv2 patch of a 37 x 37 grid covering the image),
depth ~ U(1.5, 2.5), each about the size of its patch, opacity ~ U(0.5, 0.9), fx = fy = 1.1 W.

    python benchmarks/renderer_speed.py [--device cuda] [--repeat 3] [--threads 2]

writes results/renderer_speed.json and .md (renderer_speed_<device>.* for other devices).
The load average is recorded: other jobs on the machine inflate the times.
"""

from __future__ import annotations

import argparse
import os

import torch

from common import RESULTS, save, timed_interleaved
from fresnel.render import Camera, TileBasedRenderer
from fresnel.render.dense import render_dense

GRID = 37
PER_PATCH = (1, 4, 16)
RESOLUTIONS = (64, 128, 256)
# The dense reference evaluates all N*H*W Gaussian-pixel pairs. It runs in row blocks, but is
# skipped where evaluating them at once would take > 6 GB at 16 bytes a pair (four float32
# values: power/alpha, 1 - alpha, transmittance, weight): those runs take minutes each.
DENSE_MAX_BYTES = 6e9
DENSE_BYTES_PER_PAIR = 16
DENSE_WARMUP_PAIRS = 5e7


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
    if inputs[0].device.type != "cpu":
        torch.accelerator.synchronize(inputs[0].device)


def measure(per_patch: int, size: int, device: str, repeat: int, tile) -> dict:
    inputs, camera = decoder_scene(per_patch, size, device)
    n = inputs[0].shape[0]
    target = torch.rand(3, size, size, device=device)
    fns = {"tile": lambda: step(tile, inputs, camera, target)}
    pairs = n * size * size
    if pairs * DENSE_BYTES_PER_PAIR <= DENSE_MAX_BYTES:
        fns["dense"] = lambda: step(render_dense, inputs, camera, target)
    for name, fn in fns.items():
        if name == "tile" or pairs <= DENSE_WARMUP_PAIRS:
            fn()  # warm-up (skipped for long dense runs: nothing there to warm up)
    times = timed_interleaved(fns, repeat)
    row = {"N": n, "resolution": size, "tile": times["tile"]}
    row["dense"] = times.get("dense", "skipped: N*H*W too large")
    if "dense" in times:
        row["speedup"] = round(times["dense"]["median_s"] / times["tile"]["median_s"], 1)
    print(row, flush=True)
    return row


def markdown(rows: list[dict], meta: dict) -> str:
    lines = [
        f"Renderer forward + backward, median of {meta['repeat']} runs (seconds): "
        f"{meta['device']}, torch {meta['torch']}, {meta['threads']} threads, "
        f"load average {meta['load_before']} before / {meta['load_after']} after.",
        "",
        "| N | resolution | tile s | dense s | speedup |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        dense = r["dense"]["median_s"] if isinstance(r["dense"], dict) else r["dense"]
        res = f"{r['resolution']}x{r['resolution']}"
        lines.append(
            f"| {r['N']} | {res} | {r['tile']['median_s']} | {dense} | {r.get('speedup', '-')} |"
        )
    return "\n".join(lines) + "\n"


def target(rows: list[dict]) -> dict:
    """The goal: 256x256, 5476 Gaussians, tile <= 0.5 s and >= 10x faster than dense."""
    row = next(r for r in rows if r["N"] == 5476 and r["resolution"] == 256)
    met = row["tile"]["median_s"] <= 0.5 and row.get("speedup", 0) >= 10
    return {"N": 5476, "resolution": 256, "tile_s": row["tile"]["median_s"],
            "speedup": row.get("speedup"), "met": met}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = [round(x, 2) for x in os.getloadavg()]
    tile = TileBasedRenderer()
    rows = [measure(m, s, args.device, args.repeat, tile) for m in PER_PATCH for s in RESOLUTIONS]
    meta = {"device": args.device, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "repeat": args.repeat, "load_before": load_before,
            "load_after": [round(x, 2) for x in os.getloadavg()]}  # fmt: skip
    name = "renderer_speed" if args.device == "cpu" else f"renderer_speed_{args.device}"
    name = name.replace(":", "")
    save(name, {**meta, "dense_max_bytes": DENSE_MAX_BYTES, "target": target(rows),
                "results": rows})  # fmt: skip
    (RESULTS / f"{name}.md").write_text(markdown(rows, meta))


if __name__ == "__main__":
    main()
