"""VPOG in the family registry (fresnel.registry). Its options are Hydra configs
(fresnel/vpog/configs), as the guide's users know them, not dataclasses."""

from fresnel.registry import Family, Smoke

FAMILY = Family(
    name="vpog",
    title="VPOG",
    guide="003_c6f1d822ecb5b667.txt",
    order=4,
    rules=("workflow/rules/vpog.smk",),
    errors=("fresnel.vpog.config:VPOGConfigError",),
    demo_targets=("results/vpog/eval",),
    tables=("results/vpog/eval/table.md",),
    presentation={
        "vpog_train": {"plots": ["{out}/curves.png"]},
        "vpog_evaluate": {"metrics": ["{out}/metrics.json"], "plots": ["{out}/retrieval.png"]},
    },
    all_targets=lambda config: ["results/vpog/eval"] if config["targets"].get("vpog") else [],
    smoke=Smoke(
        prepare=(
            "vpog_render_templates --objects box --output_dir {data}/templates --level 0 "
            "--image_size 32",
            "vpog_make_dataset --objects box --count 8 --image_size 32 "
            "--output_dir {data}/train_pbr_web",
        ),
        train="vpog_train --quiet data.dataloader.datasets=[{{name:synthetic,"
        "web_dir:'{data}/train_pbr_web',templates_dir:'{data}/templates'}}] save_dir={run} "
        "data.dataloader.image_size=32 data.dataloader.patch_size=8 "
        "data.dataloader.num_positive_templates=2 data.dataloader.num_negative_templates=1 "
        "model.embed_dim=32 model.encoder_depth=1 model.num_heads=2 model.cross_depth=1 "
        "model.flow_hidden=32 machine.batch_size=4 machine.num_workers=0 "
        "machine.accelerator=cpu loss.pose_samples=16 max_epochs=6",
        checkpoints="checkpoints/last.ckpt",  # a rerun of the same command resumes from it
        final="checkpoints/last.ckpt:state_dict",
    ),
)
