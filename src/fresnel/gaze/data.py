"""ETH-XGaze per-subject HDF5 files (GazeGaussian's preprocessed layout), read as torch samples.

A dataset folder (`--img_dir`) holds `subjectNNNN.h5` files and, optionally,
`train_test_split.json` ({"train": [file names], "test": [...]}). Each file holds N frames:

    face_patch        (N, H, W, 3) uint8 BGR      head_mask, left_eye_mask, right_eye_mask
    facial_landmarks  (N, 68, 2) pixels           (N, H, W) uint8 0/255
    facial_landmarks_3d (N, 68, 3) world frame    pitchyaw_head (N, 2) gaze (pitch, yaw) rad
    face_head_pose    (N, 2) (pitch, yaw) rad     latent_codes (N, iden + expr) float
    inmat             (N, 3, 3) pixel intrinsics  w2c_Rmat (N, 3, 3), w2c_Tvec (N, 3)
    pose              (N, 6) axis-angle + translation and scale (N, 1): canonical -> world
    cam_index         (N, 1)

`face_gaze` (ETH-XGaze's own key) is read when `pitchyaw_head` is absent. The file attributes
`iden_code_dims` / `expr_code_dims` split the latent code (default: GazeGaussian's 100 / 79).
Synthetic files (`fresnel.gaze.synthetic`) add `gt_mesh_vertices`, `gt_mesh_faces` and
`eyeball_centers` (canonical frame); real data has no ground-truth mesh, and its eyeball centres
are estimated from the 3D eye landmarks.

A sample is a dict of tensors: `image` (3, H, W) RGB in [0, 1]; masks (1, H, W) in {0, 1};
`landmarks` (68, 2); `landmarks_3d` (68, 3) in the canonical head frame; `K` (3, 3); `w2c`
(4, 4) canonical-to-camera (OpenCV axes); `gaze`, `head_pose` (2,); `latent_code`, `iden_code`,
`expr_code`; plus `subject` (file stem) and `frame` (int).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

SPLIT_FILE = "train_test_split.json"
DEFAULT_CODE_DIMS = (100, 79)  # GazeGaussian's nl3dmm identity / expression code sizes
GAZE_KEYS = ("pitchyaw_head", "face_gaze")
REQUIRED_KEYS = ("face_patch", "head_mask", "left_eye_mask", "right_eye_mask", "facial_landmarks",
                 "facial_landmarks_3d", "face_head_pose", "latent_codes", "inmat", "w2c_Rmat",
                 "w2c_Tvec")  # fmt: skip
EYE_LANDMARKS = (slice(36, 42), slice(42, 48))  # iBUG 68: the subject's right eye, then left
EYEBALL_RADIUS = 0.012  # metres: the human average, for real data without eyeball centres


class GazeDataError(ValueError):
    """A dataset folder or file that cannot be used (the message names it and the fix)."""


@dataclass(frozen=True)
class SubjectFile:
    path: Path
    frames: int
    iden_dims: int
    expr_dims: int
    gaze_key: str


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise GazeDataError(f"{path}: not a readable HDF5 file ({err}); re-export it") from err


def inspect_subject(path: Path) -> SubjectFile:
    """Check one subject file's keys; refuse files without gaze labels (ETH-XGaze's test set)."""
    with _open(path) as h5:
        missing = [k for k in REQUIRED_KEYS if k not in h5]
        gaze_key = next((k for k in GAZE_KEYS if k in h5), None)
        if gaze_key is None:
            raise GazeDataError(
                f"{path}: no gaze labels ({' or '.join(GAZE_KEYS)}): ETH-XGaze's test subjects "
                "ship without them; point --img_dir at the training set"
            )
        if missing:
            raise GazeDataError(f"{path}: missing {', '.join(missing)}; see fresnel.gaze.data")
        iden = int(h5.attrs.get("iden_code_dims", DEFAULT_CODE_DIMS[0]))
        expr = int(h5.attrs.get("expr_code_dims", DEFAULT_CODE_DIMS[1]))
        return SubjectFile(path, len(h5["face_patch"]), iden, expr, gaze_key)


def _read_split(img_dir: Path) -> dict | None:
    path = img_dir / SPLIT_FILE
    if not path.is_file():
        return None
    split = json.loads(path.read_text())
    if not isinstance(split, dict) or not all(isinstance(split.get(k), list) for k in split):
        raise GazeDataError(f"{path}: expected {{'train': [files], 'test': [files]}}")
    return split


def subject_files(img_dir, split: str = "train", subjects=None) -> list[Path]:
    """The subject files of `split` under img_dir (all of them without a split file).

    Training on the test set is refused: for split "train", a file the split file of img_dir or
    of its parent folder lists under "test" is an error, not a silent skip.
    """
    img_dir = Path(img_dir)
    if not img_dir.is_dir():
        raise GazeDataError(f"{img_dir}: no such folder; pass --img_dir <ETH-XGaze folder>")
    present = sorted(p.name for p in img_dir.glob("*.h5"))
    split_map = _read_split(img_dir)
    if split_map is not None and split not in split_map:
        raise GazeDataError(f"{img_dir / SPLIT_FILE}: has no {split!r} list")
    names = split_map[split] if split_map is not None else present
    if subjects is not None:
        names = [n for n in names if Path(n).stem in set(subjects) or n in set(subjects)]
    if split == "train":
        _refuse_test_subjects(img_dir, names, split_map)
    missing = [n for n in names if n not in present]
    if missing:
        raise GazeDataError(f"{img_dir}: {', '.join(missing[:3])} listed but not present")
    if not names:
        raise GazeDataError(f"{img_dir}: no subject .h5 files for split {split!r}")
    return [img_dir / n for n in names]


def _refuse_test_subjects(img_dir: Path, names: list[str], split_map: dict | None) -> None:
    parent = _read_split(img_dir.parent) if img_dir.parent != img_dir else None
    test = set((split_map or {}).get("test", [])) | set((parent or {}).get("test", []))
    clash = sorted(set(names) & test)
    if clash:
        raise GazeDataError(
            f"{img_dir}: {', '.join(clash[:3])} are test subjects in {SPLIT_FILE}; training on "
            "the test set gives no honest evaluation: point --img_dir at the training set"
        )


def _axis_angle_matrix(v: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(v))
    if angle < 1e-12:
        return np.eye(3)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def to_canonical(points: np.ndarray, pose: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """World -> canonical head frame: R^T (x - T) / S, with pose = (axis-angle R, T)."""
    rot = _axis_angle_matrix(np.asarray(pose[:3], np.float64))
    return ((points - pose[3:]) @ rot) / float(np.asarray(scale).reshape(-1)[0])


class XGazeDataset(Dataset):
    """Frames of the chosen subjects; `frames` picks all, the first (1 - val_fraction) ("train")
    or the last val_fraction ("val") of each subject's frames. Files open lazily, once per
    process (DataLoader workers each open their own handles)."""

    def __init__(self, img_dir, split: str = "train", subjects=None, frames: str = "all",
                 val_fraction: float = 0.1, max_frames: int | None = None):  # fmt: skip
        if frames not in ("all", "train", "val"):
            raise ValueError(f"frames must be all, train or val, got {frames!r}")
        self.img_dir = Path(img_dir)
        self.files = [inspect_subject(p) for p in subject_files(img_dir, split, subjects)]
        self.subjects = [f.path.stem for f in self.files]
        self.index: list[tuple[int, int]] = []
        for s, f in enumerate(self.files):
            count = min(f.frames, max_frames or f.frames)
            n_val = max(1, round(count * val_fraction)) if frames != "all" else 0
            chosen = {"all": range(count), "train": range(count - n_val),
                      "val": range(count - n_val, count)}[frames]  # fmt: skip
            self.index += [(s, i) for i in chosen]
        self._handles: dict[int, object] = {}
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def frames_of(self, subject: str) -> list[int]:
        """Dataset indices of one subject's frames."""
        s = self.subjects.index(subject)
        return [k for k, (si, _) in enumerate(self.index) if si == s]

    def _h5(self, s: int):
        if self._pid != os.getpid():  # a forked worker must not share the parent's handles
            self._handles, self._pid = {}, os.getpid()
        if s not in self._handles:
            self._handles[s] = _open(self.files[s].path)
        return self._handles[s]

    def __getitem__(self, k: int) -> dict:
        s, i = self.index[k]
        info, h5 = self.files[s], self._h5(s)
        image = h5["face_patch"][i][..., ::-1].astype(np.float32) / 255.0
        mask = lambda key: torch.from_numpy(h5[key][i].astype(np.float32) / 255.0)[None]  # noqa: E731
        w2c = np.eye(4, dtype=np.float32)
        w2c[:3, :3], w2c[:3, 3] = h5["w2c_Rmat"][i], h5["w2c_Tvec"][i]
        pose = h5["pose"][i] if "pose" in h5 else np.zeros(6, np.float32)
        scale = h5["scale"][i] if "scale" in h5 else np.ones(1, np.float32)
        code = h5["latent_codes"][i].astype(np.float32)
        lmk3d = to_canonical(h5["facial_landmarks_3d"][i].astype(np.float64), pose, scale)
        f32 = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
        return {
            "image": f32(image).permute(2, 0, 1),
            "head_mask": mask("head_mask"),
            "left_eye_mask": mask("left_eye_mask"),
            "right_eye_mask": mask("right_eye_mask"),
            "landmarks": f32(h5["facial_landmarks"][i]),
            "landmarks_3d": f32(lmk3d),
            "K": f32(h5["inmat"][i]),
            "w2c": f32(w2c),
            "gaze": f32(h5[info.gaze_key][i]),
            "head_pose": f32(h5["face_head_pose"][i]),
            "latent_code": f32(code),
            "iden_code": f32(code[: info.iden_dims]),
            "expr_code": f32(code[info.iden_dims : info.iden_dims + info.expr_dims]),
            "subject": info.path.stem,
            "frame": i,
        }

    def gt_mesh(self, subject: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The canonical ground-truth mesh of a synthetic subject; None for real data."""
        h5 = self._h5(self.subjects.index(subject))
        if "gt_mesh_vertices" not in h5:
            return None
        return (torch.as_tensor(h5["gt_mesh_vertices"][()], dtype=torch.float32),
                torch.as_tensor(h5["gt_mesh_faces"][()].astype(np.int64)))  # fmt: skip

    def eye_centers(self, subject: str) -> tuple[torch.Tensor, float]:
        """(2, 3) canonical eyeball centres (right eye first) and the eyeball radius: stored ones
        for synthetic data; for real data the eye-contour landmarks' centroid pushed back by
        the average eyeball radius (into the head, +z in the canonical frame)."""
        s = self.subjects.index(subject)
        h5 = self._h5(s)
        if "eyeball_centers" in h5:
            radius = float(h5.attrs.get("eyeball_radius", EYEBALL_RADIUS))
            return torch.as_tensor(h5["eyeball_centers"][()], dtype=torch.float32), radius
        first = self[self.frames_of(subject)[0]]["landmarks_3d"]
        centres = torch.stack([first[sl].mean(0) for sl in EYE_LANDMARKS])
        return centres + torch.tensor([0.0, 0.0, EYEBALL_RADIUS]), EYEBALL_RADIUS

    def __getstate__(self):  # h5py handles do not pickle; workers reopen them
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state


def collate(samples: list[dict]) -> dict:
    """Stack tensors, frame numbers into a tensor; keep `subject` names as a list."""
    out = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if torch.is_tensor(values[0]):
            out[key] = torch.stack(values)
        else:
            out[key] = torch.tensor(values) if isinstance(values[0], int) else values
    return out
