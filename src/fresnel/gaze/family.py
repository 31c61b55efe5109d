"""GazeGaussian in the family registry (fresnel.registry)."""

from fresnel.registry import Family, Smoke

FAMILY = Family(
    name="gaze",
    title="GazeGaussian",
    guide="001_f7c5fea9cccaa539.txt",
    order=5,
    rules=("workflow/rules/gaze.smk",),
    options=(
        "fresnel.gaze.options:MeshHeadOptions",
        "fresnel.gaze.options:EstimatorOptions",
        "fresnel.gaze.options:GazeGaussianOptions",
    ),
    errors=("fresnel.gaze.data:GazeDataError",),
    demo_targets=("results/gaze/ablation",),
    tables=("results/gaze/ablation/table.md",),
    presentation={
        "gaze_train": {"plots": ["{out}/curves.png"]},
        "gaze_evaluate": {"metrics": ["{out}/metrics.json"]},
        "gaze_ablation": {"metrics": ["{out}/summary.json"], "plots": ["{out}/table.png"]},
    },
    all_targets=lambda config: ["results/gaze/ablation"] if config["targets"].get("gaze") else [],
    smoke=Smoke(
        prepare=(
            "gaze_make_synthetic --output_dir {data} --num_subjects 2 "
            "--frames_per_subject 12 --image_size 32 --num_test 1",
        ),
        train="train_meshhead --img_dir {data} --run_dir {run} --num_epochs 4 --batch_size 4 "
        "--num_workers 0",
        checkpoints="checkpoints/last.pth",  # a rerun of the same command resumes from it
        final="checkpoints/last.pth",
    ),
)
