"""`fresnel avatars_*`: GaussianAvatars by hand, with the guide's flags.

    fresnel avatars_make_dataset --output_dir data/avatars/synthetic
    fresnel avatars_train -s DATA -m output/balanced_306 --eval --bind_to_mesh \\
        --white_background --preset balanced          # or the guide's flags one by one
    fresnel avatars_render -m output/balanced_306 --iteration 600000 --skip_train --skip_val
    fresnel avatars_metrics -m output/balanced_306
"""

from __future__ import annotations

import argparse
import logging

from fresnel import device

log = logging.getLogger("fresnel")


def _make_dataset(args) -> None:
    from fresnel.avatars.data import SyntheticConfig, write_synthetic

    config = SyntheticConfig(image_size=args.image_size, cameras=args.cameras,
                             timesteps=args.timesteps, seed=args.seed)  # fmt: skip
    print(write_synthetic(args.output_dir, config))


def _preset(args) -> dict:
    """A preset's switches (params.yaml `avatars.runs`), the guide's values for the rest."""
    if not args.preset:
        return {}
    from fresnel.avatars.options import preset_options
    from fresnel.params import for_command

    return preset_options(for_command(args.params)["avatars"], args.preset)


def _train(args) -> None:
    from fresnel.avatars.options import AvatarOptions
    from fresnel.avatars.train import train
    from fresnel.config import given_options

    options = AvatarOptions.from_dict({**_preset(args), **given_options(args, AvatarOptions)})
    if args.preset:
        logging.getLogger("fresnel").info(
            "preset %s: %s; %d iterations, resolution milestones %s (flags given override "
            "these)", args.preset, ", ".join(options.enabled()) or "no additions",
            options.iterations, options.resolution_milestones)  # fmt: skip
    target = device.announce(args.target)
    print(train(args.source_path, args.model_path, options, target, args.start_checkpoint,
                progress=not args.quiet))  # fmt: skip


def _render(args) -> None:
    from fresnel.avatars.evaluate import load_model, render_sets

    model = load_model(
        args.model_path, args.iteration, args.source_path, device.announce(args.target).name
    )
    splits = [s for s in ("train", "val", "test") if not getattr(args, f"skip_{s}")]
    folders = render_sets(model, args.model_path, splits, frozen=args.frozen_baseline)
    if args.video:
        from fresnel.video import VideoUnavailable, write_video

        for key, folder in folders.items():
            try:
                path = write_video(
                    sorted((folder / "renders").glob("*.png")), folder / "renders.mp4"
                )
                print(f"{key}: video {path}")
            except VideoUnavailable as exc:
                log.warning("no video for %s: %s", key, exc)


def _metrics(args) -> None:
    """Upstream's metrics.py -m A B ...: each model's results.json, then one table of all."""
    from fresnel.avatars.evaluate import evaluate_folders
    from fresnel.io import write_bytes

    results = {model: evaluate_folders(model, args.lpips_weights) for model in args.model_paths}
    table = metrics_table(results)
    print(table, end="")
    if args.table:
        write_bytes(args.table, table.encode())


def metrics_table(results: dict[str, dict]) -> str:
    """Markdown: one row per model folder and rendered set (`{split}/{method}_{N}`)."""
    lines = [
        "| model | set | PSNR | SSIM | LPIPS | L1 | views |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, sets in results.items():
        for key, row in sets.items():
            lpips = f"{row['LPIPS']:.4f}" if isinstance(row["LPIPS"], float) else row["LPIPS"]
            lines.append(f"| {model} | {key} | {row['PSNR']:.2f} | {row['SSIM']:.4f} | {lpips} "
                         f"| {row['L1']:.4f} | {row['views']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def add_commands(sub) -> None:
    from fresnel.avatars.options import RANGES, AvatarOptions, range_text
    from fresnel.config import add_option_flags

    p = sub.add_parser("avatars_make_dataset", help="GaussianAvatars: synthetic head dataset")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--cameras", type=int, default=6)
    p.add_argument("--timesteps", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_dataset)

    p = sub.add_parser("avatars_train", help="GaussianAvatars: train (the guide's train.py)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    p.add_argument("-s", "--source_path", required=True, help="dataset folder (NeRSemble layout)")
    p.add_argument("-m", "--model_path", required=True, help="output model folder")
    p.add_argument("--start_checkpoint", default=None, help="chkpnt{N}.pth to resume from")
    p.add_argument("--preset", default=None,
                   help="the additions of a run of params.yaml avatars.runs (baseline, "
                        "ultra_efficient, balanced, quality_first) with the guide's values and "
                        "schedule; flags given too override it")  # fmt: skip
    p.add_argument("--params", help="params file for --preset (default: ./params.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    device.add_target_argument(p)
    ranges = {flag: f"must be {range_text(flag)}" for flag in RANGES}
    add_option_flags(p, AvatarOptions, "switch", help=ranges)  # upstream's store_true, --no_<x>
    p.set_defaults(func=_train)

    p = sub.add_parser("avatars_render", help="GaussianAvatars: render a model (render.py)")
    p.add_argument("-m", "--model_path", required=True)
    p.add_argument("-s", "--source_path", default=None, help="default: the one it trained on")
    p.add_argument("--iteration", type=int, default=-1, help="-1: the last saved")
    for split in ("train", "val", "test"):
        p.add_argument(f"--skip_{split}", action="store_true")
    p.add_argument("--frozen_baseline", action="store_true",
                   help="also render test views on the timestep-0 mesh (frozen_t0_N)")  # fmt: skip
    p.add_argument("--video", action="store_true", help="renders.mp4 beside each renders/")
    device.add_target_argument(p)
    p.set_defaults(func=_render)

    p = sub.add_parser("avatars_metrics", help="GaussianAvatars: PSNR/SSIM/LPIPS (metrics.py)")
    p.add_argument("-m", "--model_paths", "--model_path", nargs="+", required=True,
                   help="one or more model folders, as upstream's metrics.py -m")  # fmt: skip
    p.add_argument("--table", default=None, help="also write the table (markdown) here")
    p.add_argument("--lpips_weights", default="", help="torchvision AlexNet weights for LPIPS")
    p.set_defaults(func=_metrics)
