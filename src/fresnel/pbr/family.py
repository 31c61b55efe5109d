"""NeuroPBR in the family registry (fresnel.registry)."""

from fresnel.registry import Family, Smoke

# The guide's way to change a preset: a config file (`train.py --config configs/my_config.py`).
PBR_SMOKE_CONFIG = """from train_config import tiny_config


def get_config():
    cfg = tiny_config()
    cfg.training.epochs, cfg.training.gan_start_epoch, cfg.training.save_every_n_epochs = 4, 2, 1
    return cfg
"""

FAMILY = Family(
    name="pbr",
    title="NeuroPBR",
    guide="002_bb4958f64aead825.txt",
    order=2,
    rules=("workflow/rules/pbr.smk",),
    options=(
        "fresnel.pbr.config:TrainConfig",
        "fresnel.pbr.student_config:StudentConfig",
        "fresnel.pbr.student_config:CoreMLOptions",
    ),
    errors=("fresnel.pbr.coreml:CoreMLUnavailable",),
    checks=("fresnel.pbr.stage_params:problems",),
    demo_targets=("results/pbr_student.mlpackage", "results/pbr_student.onnx", "results/pbr_eval"),
    tables=("results/pbr_eval/table.md",),
    presentation={
        "pbr_teacher": {"plots": ["{out}/curves.png"]},
        "pbr_student": {"plots": ["{out}/curves.png"]},
        "pbr_evaluate": {"metrics": ["{out}/summary.json"], "plots": ["{out}/metrics.png"]},
    },
    all_targets=lambda config: (
        ["results/pbr_student.mlpackage", "results/pbr_student.onnx", "results/pbr_eval"]
        if config["targets"].get("pbr")
        else []
    ),
    smoke=Smoke(
        files={"smoke.py": PBR_SMOKE_CONFIG},
        prepare=(
            "pbr_make_dataset --data-root {data} --materials 4 --samples-per-material 1 "
            "--size 32 --no-dirty",
        ),
        train="pbr_train --config {work}/smoke.py --input-dir {data}/input "
        "--output-dir {data}/output --checkpoint-dir {run}",
        checkpoints="latest.pth",
        resume="--resume {latest}",
        final="latest.pth",
    ),
)
