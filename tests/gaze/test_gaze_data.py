"""The ETH-XGaze HDF5 reader against the synthetic generator's known answers."""

import shutil

import h5py
import numpy as np
import pytest
import torch

from fresnel.gaze import synthetic
from fresnel.gaze.data import GazeDataError, XGazeDataset, collate, subject_files
from fresnel.gaze.eyes import pitchyaw_to_vector


@pytest.fixture(scope="module")
def xgaze(tmp_path_factory):
    root = tmp_path_factory.mktemp("xgaze")
    synthetic.write_synthetic_xgaze(root, num_subjects=4, frames_per_subject=6, image_size=64,
                                    num_test=1, seed=3)  # fmt: skip
    return root


def _project(points: torch.Tensor, K: torch.Tensor, w2c: torch.Tensor) -> torch.Tensor:
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    uv = cam @ K.T
    return uv[:, :2] / uv[:, 2:]


def test_split_and_sample_layout(xgaze):
    train = XGazeDataset(xgaze, "train")
    test = XGazeDataset(xgaze, "test")
    assert train.subjects == ["subject0000", "subject0001", "subject0002"]
    assert test.subjects == ["subject0003"]
    assert len(train) == 18
    s = train[0]
    assert s["image"].shape == (3, 64, 64) and s["image"].min() >= 0 and s["image"].max() <= 1
    assert s["head_mask"].shape == (1, 64, 64) and set(s["head_mask"].unique().tolist()) == {0, 1}
    assert s["landmarks"].shape == (68, 2) and s["landmarks_3d"].shape == (68, 3)
    assert s["iden_code"].shape == (synthetic.IDEN_DIMS,)
    assert s["expr_code"].shape == (synthetic.EXPR_DIMS,)
    batch = collate([train[0], train[1]])
    assert batch["image"].shape == (2, 3, 64, 64) and batch["frame"].tolist() == [0, 1]
    assert batch["subject"] == ["subject0000", "subject0000"]


def test_frames_split_is_disjoint_and_complete(xgaze):
    tr = XGazeDataset(xgaze, "train", frames="train", val_fraction=0.34)
    va = XGazeDataset(xgaze, "train", frames="val", val_fraction=0.34)
    assert len(tr) + len(va) == 18 and not set(tr.index) & set(va.index)


def test_landmarks_project_onto_their_2d_positions(xgaze):
    s = XGazeDataset(xgaze, "train")[4]
    uv = _project(s["landmarks_3d"], s["K"], s["w2c"])
    assert torch.allclose(uv, s["landmarks"], atol=1e-3)


def test_pupil_sits_where_the_gaze_label_says(xgaze):
    """Known answer: the darkest eye pixels (the pupil) are where the eyeball centre plus the
    radius along the labelled gaze projects, within a pixel."""
    data = XGazeDataset(xgaze, "train")
    centres, radius = data.eye_centers("subject0001")
    checked = 0
    for k in data.frames_of("subject0001"):
        s = data[k]
        g_cam = pitchyaw_to_vector(s["gaze"].double()).float()
        g_head = s["w2c"][:3, :3].T @ g_cam
        for centre, key in zip(centres, ("right_eye_mask", "left_eye_mask"), strict=True):
            mask = s[key][0] > 0
            if mask.sum() < 12:  # an eye turned away from the camera
                continue
            dark = mask & (s["image"].sum(0) < 0.3)
            if dark.sum() < 2:  # the pupil hidden by the eyelid skin
                continue
            ys, xs = torch.nonzero(dark, as_tuple=True)
            found = torch.stack([xs.float().mean(), ys.float().mean()]) + 0.5
            expected = _project((centre + radius * g_head)[None], s["K"], s["w2c"])[0]
            assert torch.linalg.vector_norm(found - expected) < 1.0
            checked += 1
    assert checked >= 8  # 12 of the 12 eyes in this fixture (errors 0.15-0.79 px)


def test_image_channels_are_rgb(xgaze):
    """ETH-XGaze stores BGR; every synthetic skin tone has more red than blue."""
    s = XGazeDataset(xgaze, "train")[0]
    skin = s["head_mask"][0].bool() & (s["left_eye_mask"][0] == 0) & (s["right_eye_mask"][0] == 0)
    r, _, b = (s["image"][c][skin].mean() for c in range(3))
    assert r > b + 0.1


def test_ground_truth_mesh_and_eye_centres(xgaze):
    data = XGazeDataset(xgaze, "train")
    verts, faces = data.gt_mesh("subject0000")
    assert verts.shape[1] == 3 and faces.max() < len(verts)
    centres, radius = data.eye_centers("subject0000")
    assert centres.shape == (2, 3) and radius == synthetic.EYE_RADIUS
    # The landmark estimate used for real data lands near the stored centres.
    lmk = data[0]["landmarks_3d"]
    estimate = torch.stack([lmk[36:42].mean(0), lmk[42:48].mean(0)]) + torch.tensor([0, 0, 0.012])
    assert torch.linalg.vector_norm(estimate - centres, dim=1).max() < 0.006


def test_training_on_test_subjects_is_refused(xgaze, tmp_path):
    folder = xgaze / "test_copy"
    folder.mkdir(exist_ok=True)
    shutil.copy(xgaze / "subject0003.h5", folder / "subject0003.h5")
    with pytest.raises(GazeDataError, match="test subjects"):
        XGazeDataset(folder, "train")
    assert XGazeDataset(folder, "test").subjects == ["subject0003"]  # evaluating it is fine


def test_files_without_gaze_labels_are_refused(xgaze, tmp_path):
    shutil.copy(xgaze / "subject0000.h5", tmp_path / "subject0000.h5")
    with h5py.File(tmp_path / "subject0000.h5", "a") as h5:
        del h5["pitchyaw_head"], h5["face_gaze"]
    with pytest.raises(GazeDataError, match="no gaze labels"):
        XGazeDataset(tmp_path, "train")


def test_missing_folder_and_listed_file(tmp_path):
    with pytest.raises(GazeDataError, match="no such folder"):
        subject_files(tmp_path / "nope")
    (tmp_path / "train_test_split.json").write_text('{"train": ["subject0009.h5"], "test": []}')
    with pytest.raises(GazeDataError, match="not present"):
        subject_files(tmp_path)


def test_generator_is_seeded(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        synthetic.write_synthetic_xgaze(d, num_subjects=2, frames_per_subject=2, image_size=32,
                                        num_test=0, seed=1)  # fmt: skip
    with h5py.File(a / "subject0001.h5") as ha, h5py.File(b / "subject0001.h5") as hb:
        assert np.array_equal(ha["face_patch"][()], hb["face_patch"][()])
        assert np.array_equal(ha["pitchyaw_head"][()], hb["pitchyaw_head"][()])
