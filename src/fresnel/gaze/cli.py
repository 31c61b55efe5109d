"""`fresnel` commands of GazeGaussian, with the guide's flags.

fresnel gaze_make_synthetic --output_dir ./data/ETH-XGaze-synthetic --num_subjects 5
fresnel train_meshhead --batch_size 1 --name meshhead --img_dir ./data/ETH-XGaze --num_epochs 10 \
    --num_workers 8 --early_stopping --patience 5
fresnel train_gaze_estimator --img_dir ./data/ETH-XGaze --split test --output estimator.pth
fresnel train_gazegaussian --batch_size 1 --name gazegaussian_dit --img_dir ./data/ETH-XGaze \
    --num_epochs 30 --num_workers 2 --lr 0.0001 --clip_grad --load_meshhead_checkpoint ...
fresnel test_gazegaussian --load_gazegaussian_checkpoint ... --img_dir ... --output_dir ...
"""

from __future__ import annotations

import argparse
import json


def _make_synthetic(args) -> None:
    from fresnel.gaze.synthetic import write_synthetic_xgaze

    summary = write_synthetic_xgaze(args.output_dir, args.num_subjects, args.frames_per_subject,
                                    args.image_size, args.num_test, args.seed, progress=True)  # fmt: skip
    print(json.dumps(summary))


def _train_meshhead(args) -> None:
    from fresnel.config import options_from_args
    from fresnel.gaze.meshhead import train_meshhead
    from fresnel.gaze.options import MeshHeadOptions

    stats = train_meshhead(options_from_args(args, MeshHeadOptions))
    print(json.dumps(stats, default=str))


def _train_estimator(args) -> None:
    from fresnel.config import options_from_args
    from fresnel.gaze.data import XGazeDataset
    from fresnel.gaze.estimator import save_estimator, train_estimator
    from fresnel.gaze.options import EstimatorOptions

    data = XGazeDataset(args.img_dir, args.split)
    model, stats = train_estimator(data, options_from_args(args, EstimatorOptions))
    save_estimator(model, args.output, {"trained_on": data.subjects, "split": args.split, **stats})
    print(json.dumps({"output": args.output, "subjects": data.subjects, **stats}, default=str))


def _train_gazegaussian(args) -> None:
    from fresnel.config import options_from_args
    from fresnel.gaze.options import GazeGaussianOptions
    from fresnel.gaze.train import train_gazegaussian

    print(json.dumps(train_gazegaussian(options_from_args(args, GazeGaussianOptions)), default=str))


def _test_gazegaussian(args) -> None:
    from fresnel.gaze import redirect

    result = redirect.test_gazegaussian(args.load_gazegaussian_checkpoint, args.img_dir,
                                        args.output_dir, args.gaze_estimator, args.split,
                                        args.frames, args.num_samples, args.lpips_weights)  # fmt: skip
    print(json.dumps(result, default=str))


def _flags(p: argparse.ArgumentParser, options: type, **kwargs) -> None:
    """The guide's spelling of switches: `--flag true|false` (a bare `--flag` means true)."""
    from fresnel.config import add_option_flags

    add_option_flags(p, options, "value", **kwargs)


def add_commands(sub) -> None:
    p = sub.add_parser("gaze_make_synthetic", help="GazeGaussian: synthetic ETH-XGaze subjects")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--num_subjects", type=int, default=5)
    p.add_argument("--frames_per_subject", type=int, default=48)
    p.add_argument("--image_size", type=int, default=64)
    p.add_argument("--num_test", type=int, default=2, help="the last N subjects are the test split")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_synthetic)

    from fresnel.gaze.options import EstimatorOptions, GazeGaussianOptions, MeshHeadOptions

    p = sub.add_parser("train_meshhead", help="GazeGaussian step 1: the canonical MeshHead")
    _flags(p, MeshHeadOptions)
    p.set_defaults(func=_train_meshhead)

    p = sub.add_parser("train_gaze_estimator", help="GazeGaussian: gaze / head-pose estimator")
    p.add_argument("--img_dir", required=True)
    p.add_argument("--split", default="train", help="train_test_split.json list to train on")
    p.add_argument("--output", required=True)
    _flags(p, EstimatorOptions)
    p.set_defaults(func=_train_estimator)

    p = sub.add_parser("train_gazegaussian", help="GazeGaussian step 2 (DiT, VAE, orthogonality)")
    _flags(p, GazeGaussianOptions, choices={"neural_renderer_type": ("dit", "unet")},
           help={"clip_grad": "clip the gradient norm (--clip_norm)"})  # fmt: skip
    p.set_defaults(func=_train_gazegaussian)

    p = sub.add_parser("test_gazegaussian", help="GazeGaussian: redirected samples and metrics")
    p.add_argument("--load_gazegaussian_checkpoint", required=True)
    p.add_argument("--img_dir", default="./data/ETH-XGaze")
    p.add_argument("--output_dir", default="./results/redirected_samples")
    p.add_argument("--gaze_estimator", default=None,
                   help="evaluation estimator, not trained on these subjects (for the metrics)")  # fmt: skip
    p.add_argument("--split", default="train")
    p.add_argument("--frames", choices=["all", "train", "val"], default="val")
    p.add_argument("--num_samples", type=int, default=4)
    p.add_argument("--lpips_weights", default=None)
    p.set_defaults(func=_test_gazegaussian)
