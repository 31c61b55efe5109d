"""The guide's `render.py` and `metrics.py` for a trained model folder, and the frozen-at-t0
baseline that shows the rigging at work.

render: `{out}/{split}/ours_{N}/renders/{i:05d}.png` and `gt/{i:05d}.png` for the point cloud
of iteration N (the model's fine-tuned head parameters drive the mesh; held-out timesteps use
their tracked parameters, as in the paper's self-reenactment).
metrics: PSNR, SSIM and LPIPS (when its weights exist, else "unavailable") of every
`{split}/{method}` folder, into `results.json` (means) and `per_view.json`, as 3DGS writes them.
frozen baseline: the same model rendered on the mesh of timestep 0 for every frame
(`{split}/frozen_t0_{N}`): what an avatar would score that ignored the driving parameters.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from fresnel import metrics
from fresnel.avatars import regions
from fresnel.avatars.data import load_image, save_image
from fresnel.avatars.head import REGION_INDEX
from fresnel.avatars.head_params import HeadParams
from fresnel.avatars.options import AvatarOptions
from fresnel.avatars.ply import load_ply
from fresnel.avatars.scene import load_scene
from fresnel.avatars.train import AvatarTraining, frame_metrics, point_cloud_dir
from fresnel.device import resolve
from fresnel.io import write_json

log = logging.getLogger("fresnel")

ITERATION_DIR = re.compile(r"iteration_(\d+)")


def saved_iterations(model_dir) -> list[int]:
    root = Path(model_dir) / "point_cloud"
    found = (
        [ITERATION_DIR.fullmatch(p.name) for p in root.glob("iteration_*")] if root.is_dir() else []
    )
    return sorted(int(m.group(1)) for m in found if m)


def load_model(model_dir, iteration: int = -1, source=None, target: str = "cpu") -> AvatarTraining:
    """The trained avatar of `model_dir` at `iteration` (-1: the last saved), ready to render."""
    model_dir = Path(model_dir)
    args_file = model_dir / "cfg_args"
    if not args_file.is_file():
        raise FileNotFoundError(
            f"{args_file} not found: is {model_dir} a model folder (-m) of avatars_train?"
        )
    args = json.loads(args_file.read_text())
    iterations = saved_iterations(model_dir)
    if not iterations:
        raise FileNotFoundError(f"{model_dir}: no point_cloud/iteration_N; train the model first")
    iteration = iterations[-1] if iteration == -1 else iteration
    if iteration not in iterations:
        raise FileNotFoundError(
            f"{model_dir}: no point cloud of iteration {iteration}; saved: {iterations}"
        )
    source = source or args.pop("source_path")
    args.pop("source_path", None)
    options = AvatarOptions.from_dict(args, str(args_file))
    model = AvatarTraining(load_scene(source, options.flame_model_path, options.flame_masks_path),
                           options, resolve(target))  # fmt: skip
    folder = point_cloud_dir(model_dir, iteration)
    model.gaussians = load_ply(folder / "point_cloud.ply", model.gaussians.num_faces).to(
        model.device
    )
    model.params = HeadParams.load_npz(folder / "flame_param.npz").to(model.device)
    if model.calibration is not None:
        state = torch.load(folder / "color_calibration.pth", map_location="cpu", weights_only=True)
        model.calibration.load_state_dict(state)
    model.iteration = iteration
    model.active_sh = min(options.sh_degree, iteration // options.sh_degree_interval)
    return model


def render_sets(model: AvatarTraining, out_dir, splits=("train", "val", "test"),
                frozen: bool = False) -> dict[str, Path]:  # fmt: skip
    """Renders and ground truth of each split; with `frozen`, also the frozen-at-t0 baseline
    of the test split. Returns {"<split>/<method>": folder}."""
    written = {}
    for split in splits:
        methods = {"ours": None}
        if frozen and split == "test":
            methods["frozen_t0"] = model.params.select([0] * model.params.num_timesteps)
        for method, params in methods.items():
            folder = Path(out_dir) / split / f"{method}_{model.iteration}"
            for i, frame in enumerate(model.scene.frames[split]):
                save_image(
                    model.render_frame(frame, params).cpu(), folder / "renders" / f"{i:05d}.png"
                )
                save_image(model.scene.image(frame), folder / "gt" / f"{i:05d}.png")
            written[f"{split}/{method}"] = folder
            log.info("rendered %d %s views into %s", len(model.scene.frames[split]), split, folder)
    return written


def evaluate_folders(model_dir, lpips_weights: str = "") -> dict:
    """results.json / per_view.json of every `{split}/{method}_{N}` folder under model_dir."""
    model_dir = Path(model_dir)
    lpips_model, note = metrics.lpips_or_unavailable(lpips_weights or None, "lpips_weights")
    results, per_view = {}, {}
    for folder in sorted(model_dir.glob("*/*_*/renders")):
        method_dir = folder.parent
        key = f"{method_dir.parent.name}/{method_dir.name}"
        rows = {}
        for render in sorted(folder.glob("*.png")):
            gt = method_dir / "gt" / render.name
            rows[render.name] = frame_metrics(load_image(render), load_image(gt), lpips_model)
        means = {k: sum(r[k] for r in rows.values()) / len(rows) for k in next(iter(rows.values()))}
        results[key] = {"PSNR": means["psnr"], "SSIM": means["ssim"],
                        "LPIPS": means.get("lpips", note), "L1": means["l1"], "views": len(rows)}  # fmt: skip
        per_view[key] = rows
        log.info("%s: PSNR %.2f SSIM %.3f LPIPS %s", key, means["psnr"], means["ssim"],
                 f"{means['lpips']:.3f}" if "lpips" in means else note)  # fmt: skip
    write_json(model_dir / "results.json", results)
    write_json(model_dir / "per_view.json", per_view)
    return results


def evaluate_run(run_dir, data_dir, out_dir, lpips_weights: str = "", video: bool = True) -> dict:
    """The DAG's evaluation of one run: novel views (val), held-out timesteps (test) and the
    frozen-at-t0 baseline on the same test views; summary.json, a comparison picture and a
    video of the held-out renders."""
    model = load_model(run_dir, -1, data_dir)
    out_dir, n = Path(out_dir), model.iteration
    folders = render_sets(model, out_dir, ("val", "test"), frozen=True)
    results = evaluate_folders(out_dir, lpips_weights)
    trained = json.loads((Path(run_dir) / "train_summary.json").read_text())
    summary = {"iteration": n, "novel_view": results.get(f"val/ours_{n}"),
               "held_out": results.get(f"test/ours_{n}"),
               "frozen_t0": results.get(f"test/frozen_t0_{n}"), "gaussians": len(model.gaussians),
               "train_seconds": trained["seconds"], "additions": trained["additions"]}  # fmt: skip
    summary["held_out"]["face_region_PSNR"] = face_region_psnr(model, "test")
    comparison_picture(folders["test/ours"], folders["test/frozen_t0"], out_dir / "held_out.png")
    if video:
        summary["video"] = _video(folders["test/ours"], out_dir / "held_out.mp4")
    write_json(out_dir / "summary.json", summary)
    return summary


@torch.no_grad()
def face_region_psnr(model: AvatarTraining, split: str) -> float:
    """Mean PSNR over the eye, nose and mouth pixels of a split's views (the regions the
    region-adaptive loss weighs; labels rasterised from the tracked mesh)."""
    values = []
    for frame in model.scene.frames[split]:
        vertices = model.head.vertices(model.scene.params.to(model.device).select(frame.timestep))[
            0
        ]
        face_ids = regions.rasterize_faces(vertices, model.faces, frame.camera, frame.viewmat)
        mask = regions.region_map(face_ids, model.head.face_regions) > REGION_INDEX["skin"]
        if mask.any():
            image, target = model.render_frame(frame), model.scene.image(frame).to(model.device)
            mse = (image - target)[:, mask].square().mean()
            values.append(float(metrics.mse_to_psnr(mse)))
    return sum(values) / len(values) if values else float("nan")


def comparison_picture(ours: Path, frozen: Path, path: Path, columns: int = 6) -> None:
    """Rows: ground truth, this model, the frozen-at-t0 baseline, for the first test views."""
    import numpy as np
    from PIL import Image

    names = sorted(p.name for p in (ours / "renders").glob("*.png"))[:columns]
    rows = [[ours / "gt" / n for n in names], [ours / "renders" / n for n in names],
            [frozen / "renders" / n for n in names]]  # fmt: skip
    grid = np.concatenate([np.concatenate([np.asarray(Image.open(p).convert("RGB")) for p in row], 1)
                           for row in rows])  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)


def _video(folder: Path, path: Path) -> str:
    from fresnel.video import VideoUnavailable, write_video

    try:
        return write_video(sorted((folder / "renders").glob("*.png")), path, fps=10).name
    except VideoUnavailable as exc:
        log.warning("no video: %s", exc)
        return f"unavailable: {exc}"
