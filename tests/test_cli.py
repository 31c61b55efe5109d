"""The guide's commands by hand: download, export both backbones, preprocess, pack."""

import json

import numpy as np

from fresnel import io
from fresnel.data.download import IMAGE_SUFFIXES
from support.chat_server import ChatServer
from support.workspace import run

IMAGE_TYPES = " ".join(IMAGE_SUFFIXES)


def test_guide_quick_start_verbatim_offline(tmp_path):
    """Quick Start: download, preprocess, train on the same --data_dir; then inference."""
    run("fresnel download_training_data --dataset sample --count 3", tmp_path)
    assert len(list((tmp_path / "images/training/images").glob("*.png"))) == 3
    run(
        "fresnel export_dinov2_model --source tiny-random --output models/dinov2_small.onnx",
        tmp_path,
    )
    run("fresnel export_depth_model --source tiny-random", tmp_path)
    for _ in range(2):  # a second run must not read its own outputs back as new images
        out = run("fresnel preprocess_training_data --data_dir images/training --depth_size 64 "
                  "--use_vlm --vlm_provider offline", tmp_path)  # fmt: skip
        assert "target cpu: torch device cpu, AMP off" in out.stderr  # auto, said at start
    features = tmp_path / "images/training/features"
    ids = json.loads((features / "index.json").read_text())["ids"]
    # ids are the images' paths under --data_dir (download_training_data writes images/)
    assert ids == ["images_sample_astronaut", "images_sample_chelsea", "images_sample_coffee"]
    raw = tmp_path / "images/training/preprocessed/raw"
    assert json.loads((raw / "rejected.json").read_text()) == [
        {"item": name, "reason": f"not an image file type ({IMAGE_TYPES})", "ignored": True}
        for name in ("manifest.parquet", "rejected.json")
    ]
    assert sorted(p.name for p in features.glob("*_vlm_density.npy")) == [
        f"{i}_vlm_density.npy" for i in ids
    ]
    depth = io.read_f32_bin(features / "images_sample_coffee_depth.bin", (64, 64))
    assert np.isfinite(depth).all() and depth.std() > 0

    out = run("fresnel train_gaussian_decoder --experiment 2 --data_dir images/training "
              "--output_dir ck --epochs 1 --image_size 16 --gaussians_per_patch 1 "
              "--val_fraction 0.34 --use_vlm_guidance --vlm_weight 0.5", tmp_path)  # fmt: skip
    assert "target cpu: torch device cpu" in out.stderr
    assert "packed 3 images at 16 px" in out.stderr and "with VLM density" in out.stderr
    assert (tmp_path / "ck/decoder_exp2_last.pt").is_file()  # the final weights
    assert (tmp_path / "ck/decoder_exp2_epoch1.pt").is_file()  # the guide's name, last epoch
    assert (tmp_path / "ck/renders.png").is_file() and (tmp_path / "ck/curves.png").is_file()
    run(f"fresnel decoder_inference {features}/images_sample_coffee_dinov2.bin "
        f"{features}/images_sample_coffee_depth.bin out.bin --model ck/gaussian_decoder_exp2.onnx "
        "--ply out.ply", tmp_path)  # fmt: skip
    assert (tmp_path / "out.bin").stat().st_size == 37 * 37 * 1 * 14 * 4
    table = run("fresnel evaluate_decoder --model ck/gaussian_decoder_exp2.onnx --run_dir ck "
                f"--data_dir {features}/shards --output_dir eval", tmp_path).stdout  # fmt: skip
    assert "| decoder |" in table and "| untrained |" in table and "| bicubic |" in table

    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "images").rglob("*"))
    run("fresnel preprocess_training_data --data_dir images/training --output_dir elsewhere "
        "--depth_size 64", tmp_path)  # fmt: skip
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "images").rglob("*")) == before
    assert json.loads((tmp_path / "elsewhere/index.json").read_text())["ids"] == ids
    run("fresnel pack_shards --images_dir preprocessed/matted --features_dir "
        "elsewhere --output_dir shards --resolution 32 --shard_size 2", tmp_path)  # fmt: skip
    assert json.loads((tmp_path / "shards/manifest.json").read_text())["count"] == 3


def test_user_mistakes_are_one_line_naming_the_file_and_the_fix(tmp_path):
    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"config": {}, "x": print}))
    mistakes = {
        "train_gaussian_decoder --target cuda --data_dir nowhere": "target 'cuda'",
        "train_gaussian_decoder --data_dir nowhere": "run `fresnel preprocess_training_data",
        "download_training_data --dataset local:missing": "directory not found: missing",
        "coreml_convert evil.pth --output x.mlpackage": "evil.pth: refused",
        "evaluate_decoder --model m.onnx --run_dir nowhere": "nowhere: 0 decoder_exp*_last.pt",
    }
    for command, message in mistakes.items():
        out = run(f"fresnel {command}", tmp_path, check=False)
        last = out.stderr.strip().splitlines()[-1]
        assert out.returncode != 0 and "Traceback" not in out.stderr, command
        assert last.startswith(f"fresnel {command.split()[0]}: ") and message in last, last
        assert "weights_only=False" not in out.stderr
    verbose = run("fresnel -v train_gaussian_decoder --data_dir nowhere", tmp_path, check=False)
    assert "Traceback" in verbose.stderr


def test_check_params_names_the_bad_key(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("download: {count: fast}\n")
    out = run(f"fresnel check-params {bad}", tmp_path, check=False)
    assert out.returncode != 0 and "download.count: 'fast' is not of type 'integer'" in out.stderr


def test_vlm_guidance_offline_writes_the_three_pictures(tmp_path):
    from PIL import Image
    from skimage import data

    Image.fromarray(data.astronaut()).save(tmp_path / "astronaut.png")
    out = run("fresnel vlm_guidance astronaut.png --smart --provider offline --visualize "
              "--output vlm_test", tmp_path).stdout  # fmt: skip
    assert "offline:lbp-face, branch smart-face" in out
    names = sorted(p.name for p in (tmp_path / "vlm_test").iterdir())
    assert names == ["astronaut_density.npy", "astronaut_density.png", "astronaut_segments.png"]
    density = np.load(tmp_path / "vlm_test/astronaut_density.npy")
    row, col = np.unravel_index(np.argmax(density), density.shape)
    # eyes of the 512 px astronaut: (206, 102) and (245, 103); the map is 64 px
    assert min(abs(col * 8 - 206), abs(col * 8 - 245)) <= 12 and abs(row * 8 - 102) <= 12


def test_vlm_check_lists_the_servers_models(tmp_path):
    with ChatServer(answer=lambda request: "", models=["qwen2-vl-7b-instruct", "other"]) as srv:
        out = run(f"fresnel vlm_check --vlm_url {srv.url}", tmp_path).stdout
    assert "2 model(s) served: qwen2-vl-7b-instruct, other" in out
    refused = run("fresnel vlm_check --vlm_url http://127.0.0.1:9/v1/chat/completions "
                  "--retries 0", tmp_path, check=False)  # fmt: skip
    assert refused.returncode != 0 and "Cannot connect to VLM" in refused.stderr


def test_neuropbr_commands_chain(tmp_path):
    """The guide's NeuroPBR scripts by hand, at toy size: dataset, teacher, shards, student,
    Core ML and ONNX export, inference and evaluation."""
    (tmp_path / "one_epoch.py").write_text(
        "from fresnel.pbr.config import get_config as preset\n\n\n"
        "def get_config():\n    cfg = preset('tiny')\n    cfg.training.epochs = 1\n"
        "    cfg.data.val_ratio = 0.34\n    return cfg\n"
    )
    run("fresnel pbr_make_dataset --data-root data --materials 3 --samples-per-material 1 "
        "--size 32", tmp_path)  # fmt: skip
    run("fresnel pbr_train --config one_epoch.py --input-dir data/input "
        "--output-dir data/output --checkpoint-dir teacher", tmp_path)  # fmt: skip
    assert (tmp_path / "teacher/best_model.pth").is_file()
    run("fresnel teacher_infer --checkpoint teacher/best_model.pth --data-root data "
        "--shards-dir shards --shard-output-size 64", tmp_path)  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "shards").glob("*.pt")) == ["shard_00000.pt"]
    run("fresnel student_train --config tiny_student --shards-dir shards --input-dir data/input "
        "--output-dir data/output --checkpoint-dir student --epochs 1", tmp_path)  # fmt: skip
    student = "student/best_student.pth"
    run(f"fresnel coreml_convert {student} --output pbr.mlpackage", tmp_path)
    assert (tmp_path / "pbr.mlpackage/Manifest.json").is_file()
    run(f"fresnel export_student_onnx {student} --output pbr.onnx", tmp_path)
    run(f"fresnel run_inference --checkpoint {student} --data-root data --sample-idx 1 "
        "--out-dir maps", tmp_path)  # fmt: skip
    for name in ("albedo", "roughness", "metallic", "normal"):
        assert (tmp_path / f"maps/{name}.png").is_file()
    out = run("fresnel pbr_evaluate --data-root data --teacher teacher/best_model.pth "
              f"--student {student} --out-dir eval", tmp_path).stdout  # fmt: skip
    assert '"held_out_samples": 1' in out and (tmp_path / "eval/table.md").is_file()
