"""The skeleton family in the registry (fresnel.registry)."""

from fresnel.registry import Family, Smoke

FAMILY = Family(
    name="skeleton",
    title="Skeleton (a toy denoiser)",
    guide="none: the example of docs/developing.md",
    order=99,
    rules=("workflow/rules/skeleton.smk",),
    options=("fresnel.skeleton.train:ToyConfig",),
    errors=("fresnel.skeleton.train:ToyDataError",),
    demo_targets=("results/skeleton/eval",),
    tables=("results/skeleton/eval/table.md",),
    presentation={"skeleton_evaluate": {"metrics": ["{out}/summary.json"]}},
    all_targets=lambda config: (
        ["results/skeleton/eval"] if config["targets"].get("skeleton") else []
    ),
    smoke=Smoke(
        train="skeleton_train --output_dir {run} --epochs 80 --save_every 1000 --data {data}",
        prepare=("skeleton_make_data --output {data}",),
        checkpoints="toy_last.pt",
        resume="--resume {latest}",
        final="toy_last.pt",
    ),
)
