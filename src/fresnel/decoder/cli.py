"""The decoder's hand-run commands, with the guide's flags: train_gaussian_decoder,
decoder_inference, evaluate_decoder."""

from __future__ import annotations

import argparse
from pathlib import Path

from fresnel import device


def _train(args) -> None:
    """The guide's train_gaussian_decoder: train, then export the ONNX next to the checkpoints."""
    from dataclasses import fields

    from fresnel.data.shards import for_training
    from fresnel.decoder.config import TrainConfig
    from fresnel.decoder.export import export_onnx, held_out_inputs
    from fresnel.decoder.train import train
    from fresnel.training import distributed

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
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
    from dataclasses import MISSING, fields

    from fresnel.decoder.config import TrainConfig

    for field in fields(TrainConfig):
        default = field.default if field.default is not MISSING else None
        if field.name == "experiment":
            p.add_argument("--experiment", type=int, choices=[1, 2, 3], default=3,
                           help="1=SAAG Refinement, 2=Direct, 3=FeatureGuided")  # fmt: skip
        elif isinstance(default, bool):
            p.add_argument(f"--{field.name}", action=argparse.BooleanOptionalAction,
                           default=default)  # fmt: skip
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
