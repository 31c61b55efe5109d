"""`fresnel vpog_*`: VPOG by hand, with the guide's Hydra overrides.

fresnel vpog_render_templates --objects box,cylinder --output_dir datasets/templates/synthetic
fresnel vpog_make_dataset --objects box,cylinder --count 200 --output_dir datasets/synthetic/train_pbr_web
fresnel vpog_test_training_setup                      # the guide's test_training_setup.py
fresnel vpog_train machine=local machine.num_gpus=2   # any Hydra override
fresnel vpog_slurm_scripts --output_dir training/scripts machine.gpus=4
fresnel vpog_evaluate --run outputs/vpog --web_dir ... --templates_dir ... --output_dir ...
fresnel vpog_import_gigapose --templates_dir datasets/templates/lmo --models_dir datasets/lmo/models --output_dir ...
"""

from __future__ import annotations

import sys


def _names(objects: str) -> list[str]:
    return [n.strip() for n in objects.split(",") if n.strip()]


def _render_templates(args) -> None:
    from fresnel.vpog.synthetic import render_object_templates

    counts = render_object_templates(_names(args.objects), args.output_dir, level=args.level,
                                     image_size=args.image_size,
                                     upper_hemisphere=not args.full_sphere, progress=True)  # fmt: skip
    for name, count in counts["templates"].items():
        print(f"{name}: {count} templates in {args.output_dir}/{name}")


def _make_dataset(args) -> None:
    from fresnel.vpog.synthetic import write_synthetic_split

    stats = write_synthetic_split(_names(args.objects), args.output_dir, args.split,
                                  {args.split: args.count}, image_size=args.image_size,
                                  seed=args.seed)  # fmt: skip
    print(f"{stats['queries']} queries in {stats['shards']} shard(s) under {args.output_dir}")


def _train(args) -> None:
    from fresnel.vpog.config import compose
    from fresnel.vpog.train import train

    stats = train(compose(args.overrides), progress=not args.quiet)
    print({k: v for k, v in stats.items()})


def _setup_check(args) -> None:
    from fresnel.vpog.setup_check import run_checks

    if not run_checks(args.overrides):
        sys.exit(1)


def _slurm_scripts(args) -> None:
    from fresnel.vpog.config import compose
    from fresnel.vpog.slurm import write_scripts

    overrides = ["machine=slurm", *args.overrides]
    for path in write_scripts(compose(overrides), args.overrides, args.output_dir):
        print(path)


def _evaluate(args) -> None:
    from fresnel.vpog.evaluate import evaluate_run

    summary = evaluate_run(args.run, args.web_dir, args.templates_dir, args.output_dir,
                           max_queries=args.max_queries, seed=args.seed)  # fmt: skip
    for method, row in summary.items():
        print(method, {k: round(v, 4) for k, v in row.items()})


def _import_gigapose(args) -> None:
    from fresnel.vpog.gigapose import import_templates

    ids = [int(i) for i in _names(args.objects)] if args.objects else None
    counts = import_templates(args.templates_dir, args.models_dir, args.output_dir,
                              image_size=args.image_size, ids=ids)  # fmt: skip
    for name, count in counts.items():
        print(f"{name}: {count} templates in {args.output_dir}/{name}")


def add_commands(sub) -> None:
    def overrides(p):
        p.add_argument("overrides", nargs="*", help="Hydra overrides, key=value")

    p = sub.add_parser("vpog_render_templates", help="VPOG: render icosphere templates")
    p.add_argument("--objects", default="box,cylinder,tetra",
                   help="built-in names (box, cylinder, tetra) or mesh files, comma-separated")  # fmt: skip
    p.add_argument("--output_dir", required=True)
    p.add_argument(
        "--level",
        type=int,
        default=1,
        help="icosphere level: 0/1/2 = 42/162/642 views (upper half: 26/91/341)",
    )
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--full_sphere", action="store_true", help="not only the upper hemisphere")
    p.set_defaults(func=_render_templates)

    p = sub.add_parser("vpog_make_dataset", help="VPOG: synthetic query shards (train_pbr_web)")
    p.add_argument("--objects", default="box,cylinder,tetra")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--count", type=int, default=200, help="queries per object")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--split", choices=["train", "test"], default="train",
                   help="each split draws poses from its own seed")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_make_dataset)

    p = sub.add_parser("vpog_train", help="VPOG: train (Hydra overrides, Lightning)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    overrides(p)
    p.set_defaults(func=_train)

    p = sub.add_parser("vpog_test_training_setup", help="VPOG: check config, data, model")
    overrides(p)
    p.set_defaults(func=_setup_check)

    p = sub.add_parser("vpog_slurm_scripts", help="VPOG: write submit_slurm*.sh from the config")
    p.add_argument("--output_dir", default="training/scripts")
    overrides(p)
    p.set_defaults(func=_slurm_scripts)

    p = sub.add_parser("vpog_evaluate", help="VPOG: BOP AR and retrieval on held-out queries")
    p.add_argument("--run", required=True, help="a vpog_train save_dir")
    p.add_argument("--web_dir", required=True, help="held-out query shards")
    p.add_argument("--templates_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--max_queries", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("vpog_import_gigapose",
                       help="VPOG: templates rendered by GigaPose, into this layout")  # fmt: skip
    p.add_argument("--templates_dir", required=True,
                   help="GigaPose's templates/<dataset> (object_poses/, NNNNNN/)")  # fmt: skip
    p.add_argument("--models_dir", required=True,
                   help="BOP's models folder: obj_NNNNNN.ply (mm), models_info.json")  # fmt: skip
    p.add_argument("--output_dir", required=True)
    p.add_argument("--image_size", type=int, default=224, help="square side after the crop")
    p.add_argument("--objects", default=None, help="BOP ids, comma-separated (default: all)")
    p.set_defaults(func=_import_gigapose)
