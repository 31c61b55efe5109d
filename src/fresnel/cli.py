"""`fresnel <command>`: every pipeline stage by hand, with the training guide's flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fresnel import device


def _params(args) -> dict:
    from fresnel.params import for_command

    return for_command(args.params)


def _download(args) -> None:
    from fresnel.data import download

    cfg = _params(args)["download"]
    stats = download.run(
        source=args.dataset, out_dir=args.output_dir, count=args.count, seed=cfg["seed"],
        min_size=cfg["min_size"], on_bad_image=args.on_bad_image, datasets=cfg["datasets"],
    )  # fmt: skip
    print(stats)


def _preprocess(args) -> None:
    """The guide's preprocess_training_data: matte (optional background removal) + features."""
    from fresnel.data import download, features, matte
    from fresnel.data.shards import PREPROCESSED

    cfg = _params(args)
    data_dir = Path(args.data_dir)
    output_dir = Path(args.output_dir or data_dir / "features")
    work = output_dir.parent / PREPROCESSED  # default: {data_dir}/preprocessed
    dl = cfg["download"]
    download.run(f"local:{data_dir}", work / "raw", count=args.max_images or 10**9,
                 seed=dl["seed"], min_size=dl["min_size"], on_bad_image="skip",
                 datasets=dl["datasets"], exclude=_outputs_of_preprocess(data_dir, output_dir))  # fmt: skip
    mcfg = {**cfg["matte"], "remove_background": args.remove_background}
    matte.run(work / "raw", work / "matted", **mcfg)
    stats = features.run(work / "matted", args.dinov2_model, args.depth_model, output_dir,
                         batch_size=args.batch_size, depth_size=args.depth_size,
                         target=device.announce(args.target).name)  # fmt: skip
    if args.use_vlm:
        stats["vlm"] = _preprocess_vlm(args, cfg["vlm"], work, output_dir)
    print(stats)


def _outputs_of_preprocess(data_dir: Path, output_dir: Path) -> tuple[Path, ...]:
    """Folders preprocess writes (this run's and the default ones of earlier runs): never
    read back as input images."""
    from fresnel.data.shards import PREPROCESSED

    outputs = {output_dir, data_dir / "features"}
    return tuple(sorted({*outputs, *(p.parent / PREPROCESSED for p in outputs)}))


def _preprocess_vlm(args, cfg: dict, work: Path, output_dir: Path) -> dict:
    """--use_vlm: `{name}_vlm_density.npy` beside the features (the guide's layout)."""
    from fresnel.io import link_or_copy
    from fresnel.vlm import stage

    stats = stage.run(
        work / "matted", work / "vlm", provider=args.vlm_provider, url=args.vlm_url,
        model=cfg["model"], grid_size=args.vlm_grid_size, smart=cfg["smart"],
        on_failure=cfg["on_failure"], size=cfg["density_size"], temperature=cfg["temperature"],
        max_tokens=cfg["max_tokens"], connect_timeout=cfg["connect_timeout"],
        read_timeout=cfg["read_timeout"], max_in_flight=cfg["max_in_flight"],
        retries=cfg["retries"], api_key_env=cfg["api_key_env"],
    )  # fmt: skip
    for density in sorted((work / "vlm").glob("*_vlm_density.npy")):
        link_or_copy(density, output_dir / density.name)
    return stats


def _export(kind: str):
    def run(args) -> None:
        from fresnel.data import backbones

        exporter = backbones.export_dinov2 if kind == "dinov2" else backbones.export_depth
        print(exporter(args.source, args.output, opset=args.opset, seed=args.seed))

    return run


def _shards(args) -> None:
    from fresnel.data.shards import pack

    print(pack(args.images_dir, args.features_dir, args.output_dir, resolution=args.resolution,
               shard_size=args.shard_size, seed=args.seed, vlm_dir=args.vlm_dir))  # fmt: skip


def _dvc_yaml(args) -> None:
    from fresnel.pipeline import dvcgen

    if args.check:
        if not dvcgen.write(args.output, check=True):
            sys.exit(f"{args.output} is out of date with the Snakemake DAG: run `fresnel dvc-yaml`")
        print(f"{args.output} is up to date")
    else:
        print(f"{args.output}: {'unchanged' if dvcgen.write(args.output) else 'written'}")


def _check_params(args) -> None:
    from fresnel import params
    from fresnel.pbr.stage_params import problems as pbr_problems

    try:
        params.validate(params.read_yaml(args.file), args.file, checks=[pbr_problems])
    except params.ParamsError as exc:
        sys.exit(str(exc))
    print(f"{args.file} is valid")


def _lint_workflow(args) -> None:
    from fresnel.pipeline import lint

    bad = lint.unexpected()
    for where, finding in bad:
        print(f"{where}: {finding}")
    if bad:
        sys.exit(f"snakemake --lint: {len(bad)} finding(s) not explained in README")
    print("snakemake --lint: clean apart from the findings explained in README")


def _release(args) -> None:
    from fresnel.pipeline import release

    targets = [t.strip() for t in (args.targets or "").split(",") if t.strip()]
    for line in release.release(args.tag, target=args.target, targets=targets, remote=args.remote):
        print(line)


def build_parser() -> argparse.ArgumentParser:
    from fresnel.avatars import cli as avatars_cli
    from fresnel.decoder import cli as decoder_cli
    from fresnel.gaze import cli as gaze_cli
    from fresnel.pbr import cli as pbr_cli
    from fresnel.vlm import cli as vlm_cli
    from fresnel.vpog import cli as vpog_cli

    parser = argparse.ArgumentParser(prog="fresnel", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("download_training_data", help="download training images")
    p.add_argument("--dataset", default="lpff", help="sample | lpff | ffhq | celeba | local:<dir>")
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--output_dir", default="images/training")
    p.add_argument("--on_bad_image", choices=["skip", "fail"], default="skip")
    p.add_argument(
        "--params", help="hub ids and splits (default: ./params.yaml, else the project's)"
    )
    p.set_defaults(func=_download)

    p = sub.add_parser("preprocess_training_data", help="matte + DINOv2 and depth features")
    p.add_argument("--data_dir", default="images/training")
    p.add_argument("--output_dir", default=None, help="default: {data_dir}/features")
    p.add_argument("--depth_size", type=int, default=256)
    p.add_argument("--remove_background", action="store_true")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--max_images", type=int, default=None)
    p.add_argument("--dinov2_model", default="models/dinov2_small.onnx")
    p.add_argument("--depth_model", default="models/depth_anything_v2_small.onnx")
    device.add_target_argument(p)
    p.add_argument("--use_vlm", action="store_true", help="also write VLM density maps")
    p.add_argument("--vlm_url", default="http://localhost:1234/v1/chat/completions")
    p.add_argument("--vlm_grid_size", type=int, choices=[4, 8, 16], default=8)
    p.add_argument("--vlm_provider", choices=["vlm", "offline"], default="vlm",
                   help="offline: face cascade + saliency, no server")  # fmt: skip
    p.add_argument(
        "--params", help="matte/vlm settings (default: ./params.yaml, else the project's)"
    )
    p.set_defaults(func=_preprocess)

    for kind, name, out, hub in (
        ("dinov2", "export_dinov2_model", "models/dinov2_small.onnx", "facebook/dinov2-small"),
        ("depth", "export_depth_model", "models/depth_anything_v2_small.onnx",
         "depth-anything/Depth-Anything-V2-Small-hf"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=f"export {kind} to ONNX")
        p.add_argument("--source", default=hub, help="hub id, local:<HF folder>, or tiny-random")
        p.add_argument("--output", default=out)
        p.add_argument("--opset", type=int, default=17)
        p.add_argument("--seed", type=int, default=0)
        p.set_defaults(func=_export(kind))

    p = sub.add_parser("pack_shards", help="pack features + targets into fp16 shards")
    p.add_argument("--images_dir", required=True)
    p.add_argument("--features_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--shard_size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vlm_dir", default=None,
                   help="folder of {name}_vlm_density.npy (preprocess --use_vlm writes them "
                        "beside the features) for --use_vlm_guidance")  # fmt: skip
    p.set_defaults(func=_shards)

    for family in (decoder_cli, vlm_cli, pbr_cli, avatars_cli, vpog_cli, gaze_cli):
        family.add_commands(sub)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--check", action="store_true", help="fail when dvc.yaml is out of date")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("lint-workflow", help="snakemake --lint minus documented findings")
    p.set_defaults(func=_lint_workflow)

    p = sub.add_parser("release", help="lock the environment, tag, push artifacts (a paper)")
    p.add_argument("tag", help="the git tag to make, e.g. paper-v1")
    p.add_argument("--target", choices=device.TARGETS, default=None,
                   help="target of this environment (default: $FRESNEL_TARGET, else cpu)")  # fmt: skip
    p.add_argument("--targets", default="",
                   help="other targets to lock, comma-separated (resolved by pip, not installed)")  # fmt: skip
    p.add_argument("--remote", default=None, help="DVC remote to push to (default: DVC's default)")
    p.set_defaults(func=_release)

    p = sub.add_parser("check-params", help="validate a params file against the schema")
    p.add_argument("file", nargs="?", default="params.yaml")
    p.set_defaults(func=_check_params)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input or setup: their message says what to fix."""
    from fresnel.avatars.data import DatasetError
    from fresnel.config import ConfigError
    from fresnel.data.download import DownloadError
    from fresnel.data.matte import MatteError
    from fresnel.data.shards import ShardError
    from fresnel.gaze.data import GazeDataError
    from fresnel.images import BadImage
    from fresnel.metrics import MetricUnavailable
    from fresnel.params import ParamsError
    from fresnel.pbr.coreml import CoreMLUnavailable
    from fresnel.pipeline.release import ReleaseError
    from fresnel.training import TrainingDiverged
    from fresnel.training.checkpoint import CheckpointError
    from fresnel.training.distributed import DistributedSetupError
    from fresnel.vlm.client import VLMError
    from fresnel.vlm.stage import VLMStageError
    from fresnel.vpog.config import VPOGConfigError

    return (FileNotFoundError, PermissionError, BadImage, MatteError, ParamsError, VLMError,
            VLMStageError, ConfigError, CheckpointError, MetricUnavailable, TrainingDiverged,
            DownloadError, ShardError, device.TargetUnavailable, CoreMLUnavailable,
            DistributedSetupError, ReleaseError, DatasetError, VPOGConfigError,
            GazeDataError)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            raise
        sys.exit(f"fresnel {args.command}: {exc} (fresnel -v {args.command} ... for a traceback)")


if __name__ == "__main__":
    main()
