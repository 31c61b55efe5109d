"""GaussianAvatars in the family registry (fresnel.registry)."""

from fresnel.registry import Family, Smoke

FAMILY = Family(
    name="avatars",
    title="GaussianAvatars",
    guide="004_523e563047612dba.txt",
    order=3,
    rules=("workflow/rules/avatars.smk",),
    options=("fresnel.avatars.options:AvatarOptions",),
    errors=("fresnel.avatars.data:DatasetError", "fresnel.avatars.ply:PlyError"),
    demo_targets=("results/avatars/synthetic/ablation",),
    tables=("results/avatars/synthetic/ablation/table.md",),
    presentation={
        "avatars_evaluate": {"metrics": ["{out}/summary.json"], "plots": ["{out}/held_out.png"]},
        "avatars_table": {"plots": ["{out}/table.png"]},
    },
    all_targets=lambda config: [
        f"results/avatars/{subject}/{table}"
        for subject in config["avatars"]["subjects"]
        for table in config["targets"].get("avatars", [])
    ],
    smoke=Smoke(
        prepare=(
            "avatars_make_dataset --output_dir {data} --image_size 24 --cameras 3 --timesteps 3",
        ),
        train="avatars_train -s {data} -m {run} --iterations 40 --interval 10 --quiet",
        checkpoints="chkpnt*.pth",
        resume="--start_checkpoint {latest}",
        final="chkpnt40.pth",
    ),
)
