"""`fresnel <command>`: every pipeline stage by hand, with the training guide's flags."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fresnel import device


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
    from fresnel.registry import params_checks

    try:
        params.validate(params.read_yaml(args.file), args.file, checks=params_checks())
    except params.ParamsError as exc:
        sys.exit(str(exc))
    print(f"{args.file} is valid")


def _lint_workflow(args) -> None:
    from fresnel.pipeline import lint

    bad = lint.unexpected()
    for where, finding in bad:
        print(f"{where}: {finding}")
    if bad:
        sys.exit(f"snakemake --lint: {len(bad)} finding(s) not explained in docs/operations.md")
    print("snakemake --lint: clean apart from the findings explained in docs/operations.md")


def _release(args) -> None:
    from fresnel.pipeline import release

    targets = [t.strip() for t in (args.targets or "").split(",") if t.strip()]
    for line in release.release(args.tag, target=args.target, targets=targets, remote=args.remote,
                                outputs=args.outputs):  # fmt: skip
        print(line)


def _demo_targets(args) -> None:
    from fresnel.registry import demo_targets

    print(" ".join(demo_targets()))


def _demo_tables(args) -> None:
    from fresnel.registry import families

    for family in families():
        for table in map(Path, family.tables):
            print(f"{family.title} ({table}):\n")
            print(table.read_text() if table.is_file() else "not built yet\n")


def _docs_tables(args) -> None:
    from fresnel.pipeline import doc_tables

    docs = sorted(Path(args.docs).glob("*.md"))
    if args.check:
        drift = doc_tables.drifted(docs, Path(args.root))
        if drift:
            sys.exit("tables whose columns or rows changed (rerun the DAG, then "
                     f"`fresnel docs-tables`): {'; '.join(drift)}")  # fmt: skip
        print("documented tables match the DAG's tables")
        return
    for doc in docs:
        for path in doc_tables.update(doc, Path(args.root)):
            print(f"{doc}: {path}")


def build_parser() -> argparse.ArgumentParser:
    from fresnel.registry import families

    parser = argparse.ArgumentParser(prog="fresnel", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    for family in families():
        family.cli().add_commands(sub)

    p = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the Snakemake DAG")
    p.add_argument("--check", action="store_true", help="fail when dvc.yaml is out of date")
    p.add_argument("--output", default="dvc.yaml")
    p.set_defaults(func=_dvc_yaml)

    p = sub.add_parser("lint-workflow", help="snakemake --lint minus documented findings")
    p.set_defaults(func=_lint_workflow)

    p = sub.add_parser("release", help="lock the environment, tag, push artifacts (a paper)")
    p.add_argument("tag", help="the git tag to make, e.g. paper-v1")
    p.add_argument("outputs", nargs="*", metavar="OUTPUT",
                   help="release only the chains that make these outputs, e.g. "
                        "results/decoder_exp2.onnx (default: every stage built)")  # fmt: skip
    p.add_argument("--target", choices=device.TARGETS, default=None,
                   help="target of this environment (default: $FRESNEL_TARGET, else cpu)")  # fmt: skip
    p.add_argument("--targets", default="",
                   help="other targets to lock, comma-separated (resolved by pip, not installed)")  # fmt: skip
    p.add_argument("--remote", default=None, help="DVC remote to push to (default: DVC's default)")
    p.set_defaults(func=_release)

    p = sub.add_parser("demo-targets", help="what `make demo` builds: every family's demo targets")
    p.set_defaults(func=_demo_targets)

    p = sub.add_parser("demo-tables", help="print every family's demo table")
    p.set_defaults(func=_demo_tables)

    p = sub.add_parser("docs-tables", help="copy the DAG's tables into the docs' table blocks")
    p.add_argument("--root", default=".", help="the folder of the run that made the tables")
    p.add_argument("--docs", default="docs")
    p.add_argument("--check", action="store_true", help="fail when a table's layout changed")
    p.set_defaults(func=_docs_tables)

    p = sub.add_parser("check-params", help="validate a params file against the schema")
    p.add_argument("file", nargs="?", default="params.yaml")
    p.set_defaults(func=_check_params)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's input or setup: their message says what to fix. The shared
    floors' errors, then each family's (fresnel.registry)."""
    from fresnel.config import ConfigError
    from fresnel.images import BadImage
    from fresnel.metrics import MetricUnavailable
    from fresnel.params import ParamsError
    from fresnel.pipeline.release import ReleaseError
    from fresnel.registry import families
    from fresnel.training import TrainingDiverged
    from fresnel.training.checkpoint import CheckpointError
    from fresnel.training.distributed import DistributedSetupError

    shared = (FileNotFoundError, PermissionError, BadImage, ParamsError, ConfigError,
              CheckpointError, MetricUnavailable, TrainingDiverged, device.TargetUnavailable,
              DistributedSetupError, ReleaseError)  # fmt: skip
    return shared + tuple(e for f in families() for e in f.error_classes())


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.func.__module__ != __name__:  # a family's command (the pipeline's need no torch)
        device.deterministic_on_cpu()
    try:
        args.func(args)
    except _user_errors() as exc:
        if args.verbose:
            raise
        sys.exit(f"fresnel {args.command}: {exc} (fresnel -v {args.command} ... for a traceback)")


if __name__ == "__main__":
    main()
