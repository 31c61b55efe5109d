"""A GaussianAvatars scene: the dataset's frames per split, its per-timestep head parameters,
the driving head (the built-in synthetic head, or FLAME from the user's licensed files) and
the cameras' extent (3DGS's `cameras_extent`, which scales the densification thresholds)."""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from fresnel.avatars.data import (
    SPLITS,
    DatasetError,
    Frame,
    check_images,
    load_image,
    read_split,
)
from fresnel.avatars.head import DrivingHead
from fresnel.avatars.head_params import HeadParams, load_param_dir
from fresnel.avatars.synthetic_head import SyntheticHead

log = logging.getLogger("fresnel")
HEAD_FILE = "head.json"  # {"head": "synthetic"} in datasets our synthetic stage writes


@dataclass
class Scene:
    root: Path
    head: DrivingHead
    frames: dict[str, list[Frame]]
    params: HeadParams  # (T, ...) the tracked parameters of every timestep
    extent: float

    def image(self, frame: Frame) -> Tensor:
        return _cached_image(frame.image)


@functools.lru_cache(maxsize=1024)
def _cached_image(path: Path) -> Tensor:
    if not path.is_file():
        raise DatasetError(f"{path} not found: the dataset's transforms_*.json names it")
    return load_image(path)


def load_scene(root, flame_model_path: str = "", flame_masks_path: str = "") -> Scene:
    root = Path(root)
    frames = {split: read_split(root, split) for split in SPLITS}
    files = sorted({f.params_file for split in frames.values() for f in split},
                   key=lambda p: _timestep_of(frames, p))  # fmt: skip
    timesteps = [_timestep_of(frames, p) for p in files]
    if timesteps != list(range(len(timesteps))):
        raise DatasetError(f"{root}: timestep_index must run 0..T-1, got {timesteps[:8]}...")
    check_images([frame for split in frames.values() for frame in split])
    params, _ = load_param_dir(root, [str(p.relative_to(root)) for p in files])
    check_finite(params, files)
    return Scene(root, driving_head(root, flame_model_path, flame_masks_path), frames, params,
                 cameras_extent(frames["train"]))  # fmt: skip


def check_finite(params: HeadParams, files: list[Path]) -> None:
    """DatasetError naming the first per-timestep file with a NaN or infinite value (a shared
    1-D `shape` is the first file's)."""
    for key, value in params.as_dict().items():
        rows = value.reshape(len(value), -1) if value.dim() > 1 else value.reshape(1, -1)
        bad = (~torch.isfinite(rows)).any(1).nonzero()
        if len(bad):
            raise DatasetError(f"{files[int(bad[0])]}: NaN or infinite head parameters ({key}); "
                               "fix or drop that timestep")  # fmt: skip


def _timestep_of(frames: dict[str, list[Frame]], params_file: Path) -> int:
    for split in frames.values():
        for frame in split:
            if frame.params_file == params_file:
                return frame.timestep
    raise AssertionError(params_file)


def driving_head(root: Path, flame_model_path: str, flame_masks_path: str) -> DrivingHead:
    marker = root / HEAD_FILE
    if marker.is_file() and json.loads(marker.read_text()).get("head") == "synthetic":
        if flame_model_path or flame_masks_path:
            log.warning("--flame_model_path / --flame_masks_path %s is not used: this dataset "
                        "drives the built-in synthetic head (%s)",
                        flame_model_path or flame_masks_path, marker)  # fmt: skip
        return SyntheticHead()
    from fresnel.avatars.flame import FlameHead

    return FlameHead(flame_model_path or None, masks_path=flame_masks_path or None)


def cameras_extent(frames: list[Frame]) -> float:
    """3DGS: 1.1 x the largest distance of a camera centre from their mean."""
    centres = torch.stack([torch.linalg.inv(f.viewmat)[:3, 3] for f in frames])
    return 1.1 * float((centres - centres.mean(0)).norm(dim=1).max())
