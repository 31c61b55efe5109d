"""The Fresnel Gaussian decoder (the flagship) in the family registry (fresnel.registry).
Its chain starts with the shared data stages (data.smk: download, matte, backbones, features,
VLM density, shards); its commands include the guide's data preparation and VLM guidance."""

from fresnel.registry import Family, Smoke

FAMILY = Family(
    name="decoder",
    title="Fresnel Gaussian decoder",
    guide="000_cfe63d51d1642e51.txt",
    order=1,
    rules=("workflow/rules/data.smk", "workflow/rules/decoder.smk"),
    options=("fresnel.decoder.config:TrainConfig",),
    errors=(
        "fresnel.data.download:DownloadError",
        "fresnel.data.matte:MatteError",
        "fresnel.data.shards:ShardError",
        "fresnel.vlm.client:VLMError",
        "fresnel.vlm.stage:VLMStageError",
    ),
    demo_targets=("results/decoder_exp2.onnx", "results/decoder_exp2_eval"),
    tables=("results/decoder_exp2_eval/table.md",),
    presentation={
        "decoder_train": {
            "plots": [{"{out}/dvclive/plots/metrics": {"x": "step"}}, "{out}/renders.png"]
        },
        "decoder_evaluate": {
            "metrics": ["{out}/summary.json"],
            "plots": ["{out}/held_out.png", "{out}/psnr.png"],
        },
    },
    all_targets=lambda config: [
        f"results/decoder_exp{n}{suffix}"
        for n in config["targets"].get("decoder_experiments", [])
        for suffix in (".onnx", "_eval")
    ],
    smoke=Smoke(
        prepare=(
            "download_training_data --dataset sample --count 3 --output_dir {data}/images",
            "export_dinov2_model --source tiny-random --output {data}/dinov2.onnx",
            "export_depth_model --source tiny-random --output {data}/depth.onnx",
            "preprocess_training_data --data_dir {data}/images --dinov2_model {data}/dinov2.onnx "
            "--depth_model {data}/depth.onnx --depth_size 64",
        ),
        train="train_gaussian_decoder --data_dir {data}/images --output_dir {run} --experiment 2 "
        "--epochs 8 --batch_size 2 --image_size 32 --gaussians_per_patch 1 --save_interval 1 "
        "--val_fraction 0.34",
        checkpoints="decoder_exp2_last.pt",
        resume="--resume {latest}",
        final="decoder_exp2_last.pt",
    ),
)
