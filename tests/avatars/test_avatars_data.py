"""The GaussianAvatars dataset layout: the synthetic stage writes it, the reader reads it back
(cameras, splits, head parameters), and a stored picture is the teacher's render."""

from __future__ import annotations

import json

import pytest
import torch

from fresnel.avatars import data
from fresnel.avatars.head_params import HeadParams
from fresnel.avatars.synthetic_head import SyntheticHead

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CONFIG = data.SyntheticConfig(image_size=32, cameras=4, val_cameras=[1], timesteps=4,
                              test_timesteps=1)  # fmt: skip


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars") / "subject"
    return root, data.write_synthetic(root, CONFIG)


def test_the_layout_and_the_splits(dataset):
    root, counts = dataset
    assert counts["train"] == 3 * 3 and counts["val"] == 3 * 1 and counts["test"] == 1 * 4
    train, val, test = (data.read_split(root, s) for s in data.SPLITS)
    assert {f.camera_index for f in val} == {1} and {f.timestep for f in val} == {0, 1, 2}
    assert {f.timestep for f in test} == {3} and {f.camera_index for f in test} == {0, 1, 2, 3}
    assert all(f.image.is_file() and f.params_file.is_file() for f in train + val + test)
    assert (root / "canonical_flame_param.npz").is_file()


def test_cameras_round_trip_through_the_opengl_camera_to_world_matrix(dataset):
    root, _ = dataset
    frames = data.read_split(root, "train")
    viewmats = data.arc_viewmats(CONFIG)
    for frame in frames:
        assert torch.allclose(frame.viewmat, viewmats[frame.camera_index], atol=1e-5)
    c2w = torch.tensor(json.loads((root / "transforms_train.json").read_text())["frames"][0]
                       ["transform_matrix"])  # fmt: skip
    centre = c2w[:3, 3]
    assert torch.allclose(c2w[:3, 2], torch.nn.functional.normalize(centre, dim=0), atol=1e-5)
    # OpenGL: the camera looks down its -z axis, i.e. at the head from `centre`


def test_a_stored_picture_is_the_teacher_rendered_from_that_camera_and_timestep(dataset):
    root, _ = dataset
    frame = data.read_split(root, "val")[1]
    head = SyntheticHead()
    params = HeadParams.load_npz(frame.params_file)
    with torch.no_grad():
        vertices = head.vertices(params)[0]
        image = data.render_avatar(data.teacher_avatar(head, CONFIG), vertices, head.faces,
                                   frame.camera, frame.viewmat)  # fmt: skip
    stored = data.load_image(frame.image)
    assert (image.clamp(0, 1) - stored).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(stored[:, 0, 0], torch.ones(3))  # white background in the corner
    assert stored.mean() < 0.95  # and the head in view


def test_held_out_timesteps_are_new_poses(dataset):
    root, _ = dataset
    first = data.load_image(root / "images/00000_00.png")
    last = data.load_image(root / "images/00003_00.png")
    assert (first - last).abs().max() > 0.2  # the rig moved the Gaussians


def test_a_folder_without_the_layout_is_a_clear_error(tmp_path):
    with pytest.raises(data.DatasetError, match=r"transforms_train\.json not found"):
        data.read_split(tmp_path, "train")
    (tmp_path / "transforms_val.json").write_text(json.dumps({"frames": [{"file_path": "x"}]}))
    with pytest.raises(data.DatasetError, match="frame 0 lacks the key"):
        data.read_split(tmp_path, "val")
