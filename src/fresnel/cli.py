"""`fresnel <command>`: every pipeline stage by hand, with the training guide's flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def params_from(file: str | None) -> dict:
    """Settings the guide's flags do not cover (hub ids, matte geometry) come from params."""
    from fresnel import params

    path = Path(file or "params.yaml")
    if file is None and not path.exists():
        path = params.REPO_ROOT / "params.yaml"
    logging.getLogger("fresnel").info("settings not given as flags come from %s", path)
    return params.load(path)


def _params(args) -> dict:
    return params_from(args.params)


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

    cfg = _params(args)
    data_dir = Path(args.data_dir)
    output_dir = Path(args.output_dir or data_dir / "features")
    work = data_dir / "preprocessed"
    dl = cfg["download"]
    download.run(f"local:{data_dir}", work / "raw", count=args.max_images or 10**9,
                 seed=dl["seed"], min_size=dl["min_size"], on_bad_image="skip",
                 datasets=dl["datasets"])  # fmt: skip
    mcfg = {**cfg["matte"], "remove_background": args.remove_background}
    matte.run(work / "raw", work / "matted", **mcfg)
    stats = features.run(work / "matted", args.dinov2_model, args.depth_model, output_dir,
                         batch_size=args.batch_size, depth_size=args.depth_size,
                         target=args.target)  # fmt: skip
    if args.use_vlm:
        stats["vlm"] = _preprocess_vlm(args, cfg["vlm"], work, output_dir)
    print(stats)


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


def _train(args) -> None:
    """The guide's train_gaussian_decoder: train, then export the ONNX next to the checkpoints."""
    from dataclasses import fields

    from fresnel.decoder.config import TrainConfig
    from fresnel.decoder.export import export_onnx, held_out_inputs
    from fresnel.decoder.train import train
    from fresnel.decoder.trainlog import RunLogger

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    logger = RunLogger(args.output_dir, resume=bool(args.resume))
    try:
        result = train(config, args.data_dir, args.output_dir, args.device, args.resume, [logger])
    finally:
        logger.close()
    onnx = Path(args.output_dir) / f"gaussian_decoder_exp{config.experiment}.onnx"
    features, depth = held_out_inputs(result["checkpoint"], args.data_dir)
    print({**result, **export_onnx(result["checkpoint"], onnx, features, depth), "onnx": str(onnx)})


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, named as in the guide's tables."""
    from dataclasses import MISSING, fields

    from fresnel.decoder.config import TrainConfig

    for field in fields(TrainConfig):
        default = field.default if field.default is not MISSING else None
        if field.name == "experiment":
            p.add_argument("--experiment", type=int, choices=[1, 2, 3], default=3,
                           help="1=SAAG Refinement, 2=Direct, 3=FeatureGuided")  # fmt: skip
        elif isinstance(default, bool):
            p.add_argument(f"--{field.name}", action="store_true")
        else:
            kind = {"lpips_backbone": str}.get(field.name) or (
                float if isinstance(default, float) else int
            )
            p.add_argument(f"--{field.name}", type=kind, default=default)


def _decoder_inference(args) -> None:
    from fresnel.decoder.export import decoder_inference

    packed = decoder_inference(args.model, args.features, args.depth, args.output, args.ply)
    print(f"{args.output}: {packed.shape[0]} Gaussians x 14 float32"
          + (f"; {args.ply}" if args.ply else ""))  # fmt: skip


def _evaluate(args) -> None:
    from fresnel.decoder.evaluate import evaluate, markdown_table
    from fresnel.decoder.train import final_checkpoint

    checkpoint = args.checkpoint or final_checkpoint(args.run_dir)
    summary = evaluate(args.model, checkpoint, args.data_dir, args.output_dir, args.lpips_backbone)
    print(markdown_table(summary))


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

    try:
        params.load(args.file)
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


def build_parser() -> argparse.ArgumentParser:
    from fresnel.pbr import cli as pbr_cli
    from fresnel.vlm import cli as vlm_cli

    parser = argparse.ArgumentParser(prog="fresnel", description=__doc__)
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
    p.add_argument("--target", default="cpu", choices=["cpu", "cuda", "rocm", "mps"])
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

    p = sub.add_parser("train_gaussian_decoder", help="train the decoder from teacher shards")
    p.add_argument("--data_dir", default="data/shards", help="a shard folder (fresnel pack_shards)")
    p.add_argument("--output_dir", default="checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "rocm", "mps"])
    _add_train_flags(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("decoder_inference", help="ONNX decoder on one image's feature files")
    p.add_argument("features", help="{name}_dinov2.bin (37x37x384 float32)")
    p.add_argument("depth", help="{name}_depth.bin (square float32)")
    p.add_argument("output", help="out.bin: N x 14 float32 packed Gaussians")
    p.add_argument("--model", default="models/gaussian_decoder.onnx")
    p.add_argument("--ply", default=None, help="also write a 3D Gaussian Splatting PLY")
    p.set_defaults(func=_decoder_inference)

    p = sub.add_parser("evaluate_decoder", help="held-out metrics against two baselines")
    p.add_argument("--model", required=True, help="the exported decoder .onnx")
    p.add_argument("--run_dir", default="checkpoints", help="training output (last checkpoint)")
    p.add_argument("--checkpoint", default=None, help="a specific checkpoint instead")
    p.add_argument("--data_dir", default="data/shards")
    p.add_argument("--output_dir", default="evaluation")
    p.add_argument("--lpips_backbone", default=None, help="torchvision AlexNet weights file")
    p.set_defaults(func=_evaluate)

    vlm_cli.add_commands(sub)
    pbr_cli.add_commands(sub)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--check", action="store_true", help="fail when dvc.yaml is out of date")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("lint-workflow", help="snakemake --lint minus documented findings")
    p.set_defaults(func=_lint_workflow)

    p = sub.add_parser("check-params", help="validate a params file against the schema")
    p.add_argument("file", nargs="?", default="params.yaml")
    p.set_defaults(func=_check_params)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input or setup: their message says what to fix."""
    from fresnel.images import BadImage
    from fresnel.data.matte import MatteError
    from fresnel.params import ParamsError
    from fresnel.vlm.client import VLMError
    from fresnel.vlm.stage import VLMStageError

    return (FileNotFoundError, BadImage, MatteError, ParamsError, VLMError, VLMStageError)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except _user_errors() as exc:
        sys.exit(f"fresnel {args.command}: {exc}")


if __name__ == "__main__":
    main()
