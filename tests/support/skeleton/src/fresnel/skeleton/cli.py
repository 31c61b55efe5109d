"""`fresnel skeleton_*`: the toy by hand."""

from __future__ import annotations


def _make_data(args) -> None:
    from fresnel.skeleton.train import save_data

    save_data(args.output, args.seed, args.count)
    print(args.output)


def _train(args) -> None:
    from fresnel.config import options_from_args
    from fresnel.skeleton.train import ToyConfig, train

    progress = train(options_from_args(args, ToyConfig), args.output_dir, args.data, args.resume)
    print({"epochs": progress.epoch})


def _evaluate(args) -> None:
    from fresnel.skeleton.train import evaluate

    print(evaluate(args.run_dir, args.output_dir, args.data))


def add_commands(sub) -> None:
    from fresnel.config import add_option_flags
    from fresnel.skeleton.train import ToyConfig

    p = sub.add_parser("skeleton_make_data", help="Skeleton: the toy's images and noisy copies")
    p.add_argument("--output", required=True)
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_data)

    p = sub.add_parser("skeleton_train", help="Skeleton: train the toy denoiser")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data", default=None, help="skeleton_make_data's file (default: in memory)")
    p.add_argument("--resume", default=None, help="toy_last.pt to continue from")
    add_option_flags(p, ToyConfig, "negatable")
    p.set_defaults(func=_train)

    p = sub.add_parser("skeleton_evaluate", help="Skeleton: the standard table")
    p.add_argument("--run_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data", default=None)
    p.set_defaults(func=_evaluate)
