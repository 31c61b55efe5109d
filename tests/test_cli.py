"""The guide's commands by hand: download, export both backbones, preprocess, pack."""

import json

import numpy as np

from conftest import run
from fresnel import io


def test_guide_commands_chain_offline(tmp_path):
    run("fresnel download_training_data --dataset sample --count 3 --output_dir raw", tmp_path)
    assert len(list((tmp_path / "raw/images").glob("*.png"))) == 3
    run(
        "fresnel export_dinov2_model --source tiny-random --output models/dinov2_small.onnx",
        tmp_path,
    )
    run("fresnel export_depth_model --source tiny-random", tmp_path)
    run("fresnel preprocess_training_data --data_dir raw/images --depth_size 64", tmp_path)
    features = tmp_path / "raw/images/features"
    ids = json.loads((features / "index.json").read_text())["ids"]
    assert ids == ["sample_astronaut", "sample_chelsea", "sample_coffee"]
    depth = io.read_f32_bin(features / "sample_coffee_depth.bin", (64, 64))
    assert np.isfinite(depth).all() and depth.std() > 0
    run(
        "fresnel pack_shards --images_dir raw/images/preprocessed/matted "
        f"--features_dir {features} --output_dir shards --resolution 32 --shard_size 2",
        tmp_path,
    )
    assert json.loads((tmp_path / "shards/manifest.json").read_text())["count"] == 3

    run("fresnel train_gaussian_decoder --experiment 2 --data_dir shards --output_dir ck "
        "--epochs 1 --image_size 16 --gaussians_per_patch 1 --val_fraction 0.34", tmp_path)  # fmt: skip
    assert (tmp_path / "ck/decoder_exp2_epoch1.pt").is_file()
    assert (tmp_path / "ck/renders.png").is_file() and (tmp_path / "ck/curves.png").is_file()
    run(f"fresnel decoder_inference {features}/sample_coffee_dinov2.bin "
        f"{features}/sample_coffee_depth.bin out.bin --model ck/gaussian_decoder_exp2.onnx "
        "--ply out.ply", tmp_path)  # fmt: skip
    assert (tmp_path / "out.bin").stat().st_size == 37 * 37 * 1 * 14 * 4
    table = run("fresnel evaluate_decoder --model ck/gaussian_decoder_exp2.onnx --run_dir ck "
                "--data_dir shards --output_dir eval", tmp_path).stdout  # fmt: skip
    assert "| decoder |" in table and "| untrained |" in table and "| bicubic |" in table


def test_check_params_names_the_bad_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("download: {count: fast}\n")
    out = run(f"fresnel check-params {bad}", tmp_path, check=False)
    assert out.returncode != 0 and "download.count: 'fast' is not of type 'integer'" in out.stderr
