"""Bad input to GaussianAvatars is one line naming the file or flag and the fix, before any
training step: camera JSON, images, FLAME parameters, flag ranges, PLY files."""

import json
import math
import shutil

import numpy as np
import pytest
from PIL import Image

from fresnel.avatars.data import SyntheticConfig, write_synthetic
from fresnel.cli import main

TINY = ["--iterations", "2", "--interval", "2", "--eval", "--white_background", "--sh_degree", "1"]


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars") / "subject"
    write_synthetic(root, SyntheticConfig(image_size=32, cameras=2, timesteps=2,
                                          test_timesteps=1, val_cameras=[1]))  # fmt: skip
    return root


def edit_frame(key, value):
    def edit(root):
        path = root / "transforms_train.json"
        meta = json.loads(path.read_text())
        meta["frames"][0][key] = value
        path.write_text(json.dumps(meta))
        return path.name

    return edit


def truncate(relative, keep=40):
    def edit(root):
        path = root / relative
        path.write_bytes(path.read_bytes()[:keep])
        return path.name

    return edit


def resize_first_image(root):
    frame = json.loads((root / "transforms_train.json").read_text())["frames"][0]
    path = root / frame["file_path"]
    Image.new("RGB", (16, 16)).save(path)
    return path.name


def camera_of_4096_pixels(root):
    edit_frame("w", 4096)(root)
    edit_frame("h", 4096)(root)
    return first_image(root).name  # the image that disagrees with its camera


def nan_flame_params(root):
    path = sorted((root / "flame_param").glob("*.npz"))[0]
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["expr"] = np.full_like(arrays["expr"], np.nan)
    np.savez(path, **arrays)
    return path.name


def first_image(root):
    return root / json.loads((root / "transforms_train.json").read_text())["frames"][0]["file_path"]


DATASET = {
    "NaN transform_matrix": (edit_frame("transform_matrix", [[math.nan] * 4] * 4),
                             "transform_matrix must be a finite 4x4 matrix"),
    "string transform_matrix": (edit_frame("transform_matrix", "eye(4)"),
                                "transform_matrix must be a finite 4x4 matrix"),
    "a matrix that is no pose": (edit_frame("transform_matrix", np.diag([2.0, 1, 1, 1]).tolist()),
                                 "rotation part is not a rotation"),
    "fl_x = 0": (edit_frame("fl_x", 0), "fl_x and fl_y must be > 0"),
    "w and h 4096": (camera_of_4096_pixels, "camera says w x h = 4096x4096"),
    "truncated JSON": (truncate("transforms_train.json"), "not valid JSON"),
    "an image of another size": (resize_first_image, "16x16 pixels"),
    "a truncated PNG": (lambda root: truncate(first_image(root).relative_to(root), 100)(root),
                        "unreadable image"),
    "NaN FLAME parameters": (nan_flame_params, "NaN or infinite head parameters"),
}  # fmt: skip


@pytest.mark.parametrize("case", DATASET)
def test_a_bad_dataset_is_one_line_naming_the_file_before_training(subject, tmp_path, case):
    edit, expected = DATASET[case]
    root = shutil.copytree(subject, tmp_path / "subject")
    name = edit(root)
    with pytest.raises(SystemExit) as exc:
        main(["avatars_train", "-s", str(root), "-m", str(tmp_path / "model"), *TINY])
    message = str(exc.value)
    assert expected in message and name in message and "\n" not in message, message
    assert not list((tmp_path / "model").glob("chkpnt*.pth"))


FLAGS = {
    "--iterations -5": ("--iterations -5: must be >= 1", ["--iterations", "-5"]),
    "--interval 0": ("--interval 0: must be >= 1", ["--interval", "0"]),
    "--position_lr_init nan": ("--position_lr_init nan: must be > 0",
                               ["--position_lr_init", "nan"]),
    "--densify_percentile_clone 150": ("--densify_percentile_clone 150.0: must be in 0..100",
                                       ["--densify_percentile_clone", "150"]),
    "--sh_degree 4": ("--sh_degree 4: must be in 0..3", ["--sh_degree", "4"]),
    "milestones out of order": ("--resolution_milestones must be strictly increasing",
                                ["--use_progressive_resolution",
                                 "--resolution_milestones", "300,100"]),
}  # fmt: skip


@pytest.mark.parametrize("case", FLAGS)
def test_a_flag_out_of_range_is_one_line_before_the_dataset_is_read(tmp_path, case):
    expected, flags = FLAGS[case]
    with pytest.raises(SystemExit) as exc:
        main(["avatars_train", "-s", str(tmp_path / "none"), "-m", str(tmp_path / "m"),
              *TINY, *flags])  # fmt: skip
    assert expected in str(exc.value) and "\n" not in str(exc.value), str(exc.value)


def test_help_states_each_flags_range(capsys):
    with pytest.raises(SystemExit):
        main(["avatars_train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--iterations ITERATIONS must be >= 1",
                     "--sh_degree SH_DEGREE must be in 0..3",
                     "--densify_percentile_clone DENSIFY_PERCENTILE_CLONE must be in 0..100",
                     "--position_lr_init POSITION_LR_INIT must be > 0"):  # fmt: skip
        assert expected in text, expected


def test_a_flame_model_on_the_synthetic_head_is_said_to_be_unused(subject, tmp_path, caplog):
    from fresnel.avatars.scene import load_scene

    load_scene(subject, flame_model_path=str(tmp_path / "flame2023.pkl"))
    assert "is not used: this dataset drives the built-in synthetic head" in caplog.text


PLYS = {
    "not a PLY": (lambda good: b"garbage", "not a PLY file"),
    "header only": (lambda good: good[: good.index(b"end_header\n") + 11], "truncated"),
    "truncated": (lambda good: good[:-7], "truncated"),
    "all NaN": (lambda good: good[: good.index(b"end_header\n") + 11]
                + np.full((len(good) - good.index(b"end_header\n") - 11) // 4, np.nan,
                          "<f4").tobytes(), "NaN or infinite values in x"),
}  # fmt: skip


@pytest.mark.parametrize("case", PLYS)
def test_a_bad_point_cloud_is_one_line_when_rendering(subject, tmp_path, case):
    edit, expected = PLYS[case]
    model = tmp_path / "model"
    main(["avatars_train", "-s", str(subject), "-m", str(model), *TINY, "--quiet"])
    ply = model / "point_cloud" / "iteration_2" / "point_cloud.ply"
    ply.write_bytes(edit(ply.read_bytes()))
    with pytest.raises(SystemExit) as exc:
        main(["avatars_render", "-m", str(model), "--skip_train", "--skip_val"])
    assert expected in str(exc.value) and str(ply) in str(exc.value), str(exc.value)
