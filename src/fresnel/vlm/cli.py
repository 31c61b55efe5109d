"""`fresnel vlm_guidance` and `fresnel vlm_check`: the guide's vlm_guidance.py by hand."""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from fresnel.vlm.client import DEFAULT_API_KEY_ENV, DEFAULT_MODEL, DEFAULT_URL

log = logging.getLogger("fresnel.vlm")


def _client_settings(args) -> dict:
    return {
        "url": args.vlm_url, "model": args.model, "read_timeout": args.timeout,
        "retries": args.retries, "api_key_env": args.api_key_env,
    }  # fmt: skip


def _provider(args):
    from fresnel.vlm.providers import OfflineProvider, VLMProvider

    if args.provider == "offline":
        return OfflineProvider()
    return VLMProvider.from_settings(
        args.grid_size, args.smart, "bilinear", **_client_settings(args)
    )


def _matted_copy(image: Path, work: Path, params_file) -> Path:
    """--remove_background: the training preprocessing (rembg + centred crop) on one image."""
    from fresnel.data import matte
    from fresnel.images import load_rgb, save_png
    from fresnel.params import for_command

    cfg = for_command(params_file)["matte"]
    remover = matte.make_remover(cfg["model"], cfg["model_dir"])
    rgb = load_rgb(image, image.stem)
    matted = matte.center_crop_composite(
        rgb, remover(rgb), cfg["padding"], cfg["size"], cfg["alpha_threshold"]
    )
    out = work / f"{image.stem}.png"
    save_png(matted, out)
    return out


def _describe(result) -> str:
    density = result.density
    row, col = np.unravel_index(int(np.argmax(density)), density.shape)
    side = density.shape[0]
    return (
        f"provider {result.provider}, branch {result.branch}, grid {result.grid_size}; "
        f"density {side}x{density.shape[1]} mean {density.mean():.3f} max {density.max():.2f} "
        f"at (x {col / side:.2f}, y {row / side:.2f}) of the image"
    )


def vlm_guidance(args) -> None:
    from PIL import Image

    from fresnel.vlm.visualize import save_visualization

    if args.verbose:
        logging.getLogger("fresnel.vlm").setLevel(logging.DEBUG)
    image = Path(args.image)
    with tempfile.TemporaryDirectory(prefix="fresnel-vlm-") as work:
        source = _matted_copy(image, Path(work), args.params) if args.remove_background else image
        result = _provider(args).density_for_file(source, args.size)
        with Image.open(source) as img:
            picture = img.convert("RGB")
    print(f"{image}: {_describe(result)}")
    for note in result.repairs + result.rejections:
        print(f"  {note}")
    if args.verbose and result.grid is not None:
        print(np.array2string(np.asarray(result.grid), precision=2))
    if args.visualize or args.output:
        paths = save_visualization(picture, result, args.output or "vlm_test", image.stem)
        for path in paths.values():
            print(f"  wrote {path}")


def vlm_check(args) -> None:
    """The guide's `curl .../v1/models` step."""
    from fresnel.vlm.client import ClientConfig, VLMClient

    models = VLMClient(ClientConfig(**_client_settings(args))).list_models()
    print(f"{len(models)} model(s) served: {', '.join(models) or '(none)'}")
    if args.model not in models:
        print(f"note: {args.model!r} is not among them; pass --model with one of the above")


def _add_client_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vlm_url", default=DEFAULT_URL, help="chat/completions URL")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name the server knows")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per answer")
    p.add_argument("--retries", type=int, default=3)
    p.add_argument("--api_key_env", default=DEFAULT_API_KEY_ENV,
                   help="environment variable holding an optional API key")  # fmt: skip


def add_commands(sub) -> None:
    p = sub.add_parser("vlm_guidance", help="density map for one image (VLM or offline)")
    p.add_argument("image")
    p.add_argument("--smart", action="store_true", help="face landmarks when there is a face")
    p.add_argument("--grid_size", type=int, choices=[4, 8, 16], default=8)
    p.add_argument("--remove_background", action="store_true",
                   help="matte first, as the training preprocessing does")  # fmt: skip
    p.add_argument("-v", "--verbose", action="store_true", help="log prompts and answers")
    p.add_argument("--visualize", action="store_true", help="write the three pictures")
    p.add_argument("--output", default=None, help="folder for the pictures (default vlm_test)")
    p.add_argument("--provider", choices=["vlm", "offline"], default="vlm",
                   help="offline: face cascade + saliency, no server")  # fmt: skip
    p.add_argument("--size", type=int, default=64, help="side of the density map")
    p.add_argument("--params", help="matte settings (default: ./params.yaml, else the project's)")
    _add_client_flags(p)
    p.set_defaults(func=vlm_guidance)

    p = sub.add_parser("vlm_check", help="list the VLM server's models (GET /v1/models)")
    _add_client_flags(p)
    p.set_defaults(func=vlm_check)
