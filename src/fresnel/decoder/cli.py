"""The Fresnel guide's hand-run commands, with its flags: the data preparation
(download_training_data, preprocess_training_data, export_dinov2_model, export_depth_model,
pack_shards), the VLM guidance (vlm_guidance, vlm_check: fresnel.vlm.cli), then
train_gaussian_decoder, decoder_inference and evaluate_decoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from fresnel import device

COMMAND_DEFAULTS = {"experiment": 3}  # the guide's train_gaussian_decoder trains FeatureGuided


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


def _train(args) -> None:
    """The guide's train_gaussian_decoder: train, then export the ONNX next to the checkpoints."""
    from fresnel.config import options_from_args
    from fresnel.data.shards import for_training
    from fresnel.decoder.config import TrainConfig
    from fresnel.decoder.export import export_onnx, held_out_inputs
    from fresnel.decoder.train import train
    from fresnel.training import distributed

    config = options_from_args(args, TrainConfig, COMMAND_DEFAULTS)
    target = device.announce(args.target)
    world = distributed.init(target.torch_device())  # one rank unless torchrun / srun
    with world.main_first():  # rank 0 packs the shards, the others then find them
        shards = for_training(args.data_dir, config.image_size, config.seed)
    try:
        result = train(config, shards, args.output_dir, target.name, args.resume, world)
    finally:
        world.close()
    if not world.main:
        return
    onnx = Path(args.output_dir) / f"gaussian_decoder_exp{config.experiment}.onnx"
    features, depth = held_out_inputs(result["checkpoint"], shards)
    print({**result, **export_onnx(result["checkpoint"], onnx, features, depth), "onnx": str(onnx)})


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, named as in the guide's tables (--flag / --no-flag for
    switches, so a switch that defaults to on, like use_amp, can be turned off)."""
    from fresnel.config import add_option_flags
    from fresnel.decoder.config import TrainConfig

    add_option_flags(p, TrainConfig, "negatable", defaults=COMMAND_DEFAULTS,
                     help={"experiment": "1=SAAG Refinement, 2=Direct, 3=FeatureGuided"},
                     choices={"experiment": (1, 2, 3)})  # fmt: skip


def _decoder_inference(args) -> None:
    from fresnel.decoder.export import decoder_inference

    packed = decoder_inference(args.model, args.features, args.depth, args.output, args.ply)
    print(f"{args.output}: {packed.shape[0]} Gaussians x 14 float32"
          + (f"; {args.ply}" if args.ply else ""))  # fmt: skip


def _evaluate(args) -> None:
    from fresnel.decoder.evaluate import evaluate, markdown_table

    checkpoint = args.checkpoint or _final_checkpoint(Path(args.run_dir), args.experiment)
    summary = evaluate(args.model, checkpoint, args.data_dir, args.output_dir, args.lpips_backbone)
    print(markdown_table(summary))


def _final_checkpoint(run_dir: Path, experiment: int | None) -> Path:
    """The run's final weights; the experiment is read from the file name when not given."""
    from fresnel.decoder.train import checkpoint_names
    from fresnel.training import final_checkpoint

    if experiment is None:
        found = sorted(run_dir.glob("decoder_exp*_last.pt"))
        if len(found) != 1:
            raise FileNotFoundError(
                f"{run_dir}: {len(found)} decoder_exp*_last.pt checkpoints; name one with "
                "--checkpoint or choose the run with --experiment"
            )
        experiment = int(found[0].name.removeprefix("decoder_exp").split("_")[0])
    return final_checkpoint(run_dir, checkpoint_names(experiment))


def add_commands(sub) -> None:
    from fresnel.vlm import cli as vlm_cli

    _add_data_commands(sub)
    vlm_cli.add_commands(sub)

    p = sub.add_parser("train_gaussian_decoder", help="train the decoder from teacher shards")
    p.add_argument("--data_dir", default="images/training",
                   help="the preprocessed image folder (packed into shards on first use) or a "
                        "shard folder (fresnel pack_shards)")  # fmt: skip
    p.add_argument("--output_dir", default="checkpoints")
    p.add_argument("--resume", default=None, help="checkpoint to resume from")
    device.add_target_argument(p)
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
    p.add_argument("--run_dir", default="checkpoints", help="training output (final weights)")
    p.add_argument("--experiment", type=int, choices=[1, 2, 3], default=None,
                   help="which run in --run_dir (default: the only one there)")  # fmt: skip
    p.add_argument("--checkpoint", default=None, help="a specific checkpoint instead")
    p.add_argument("--data_dir", default="data/shards")
    p.add_argument("--output_dir", default="evaluation")
    p.add_argument("--lpips_backbone", default=None, help="torchvision AlexNet weights file")
    p.set_defaults(func=_evaluate)


def _add_data_commands(sub) -> None:
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
