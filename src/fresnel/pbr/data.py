"""The NeuroPBR dataset on disk and in memory, and the leak-free train/val split.

Layout (the guide's):
    input/clean/sample_XXXX/{0,1,2}.png     three renders of one material
    input/dirty/sample_XXXX/{0,1,2}.png     optional artifact-heavy renders
    input/render_metadata.json              {"sample_XXXX": "material_name", ...}
    output/<material_name>/{albedo,roughness,metallic,normal}.png

Render curriculum (config.data.render_curriculum; use_dirty=True means 2):
    0 clean renders only; 1 every sample once per source it exists in (a sample in both
    folders is queued twice); 2 dirty renders only.

The guide's split shuffles samples, so renders of one material land in train and val.
split_by_material splits materials instead: no material is on both sides.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fresnel.images import IMAGENET_MEAN, IMAGENET_STD, load_rgb
from fresnel.pbr.maps import MAPS, join_maps, load_material, resize_chw

VIEW_FILES = ("0.png", "1.png", "2.png")
SOURCES = ("clean", "dirty")
CURRICULUM_SOURCES = {0: ("clean",), 1: ("clean", "dirty"), 2: ("dirty",)}
METADATA_NAME = "render_metadata.json"


def _stats(values, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)


def dataset_dirs(data_root=None, input_dir=None, output_dir=None) -> tuple[Path, Path]:
    """The guide's `--data-root D` means input_dir=D/input and output_dir=D/output."""
    if data_root is not None:
        input_dir = input_dir or Path(data_root) / "input"
        output_dir = output_dir or Path(data_root) / "output"
    if input_dir is None or output_dir is None:
        raise ValueError("give --data-root, or both --input-dir and --output-dir")
    return Path(input_dir), Path(output_dir)


def normalize_views(x01: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """[..., 3, H, W] in [0,1] -> (x - mean) / std per colour channel."""
    return (x01 - _stats(mean, x01)) / _stats(std, x01)


def denormalize_views(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """Inverse of normalize_views (no clamping)."""
    return x * _stats(std, x) + _stats(mean, x)


def load_views(paths: Iterable[str | os.PathLike], image_size: int | None = None) -> torch.Tensor:
    """Three render PNGs -> [3 views, 3, S, S] float32 in [0,1] (S = image_size or native)."""
    paths, views = list(paths), []
    for path in paths:
        rgb = np.asarray(load_rgb(path), dtype=np.float32) / 255.0
        view = torch.from_numpy(rgb.transpose(2, 0, 1).copy())
        views.append(view if image_size is None else resize_chw(view, image_size).clamp(0, 1))
    sizes = {tuple(v.shape) for v in views}
    if len(sizes) != 1:
        raise ValueError(
            f"renders {[str(p) for p in paths]} differ in size {sizes}; pass image_size to resize"
        )
    return torch.stack(views)


def read_metadata(path: str | os.PathLike, input_dir: str | os.PathLike) -> dict[str, str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: render_metadata.json not found. Create {Path(input_dir) / METADATA_NAME} "
            "mapping every sample_XXXX folder to its material folder, e.g. "
            '{"sample_0000": "wood_oak"}'
        )
    try:
        metadata = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); fix or regenerate it") from None
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise ValueError(f'{path}: must be a JSON object {{"sample_XXXX": "material_name"}}')
    return metadata


def _sample_folders(input_dir: Path, source: str) -> list[str]:
    folder = input_dir / source
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name.startswith("sample_"))


class PBRDataset(Dataset):
    """(views, packed PBR target) pairs; see the module docstring for layout and curriculum.

    `ds[i]` -> inputs [3, 3, image_size, image_size] normalised with transform_mean/std,
    targets [8, S, S] (S = output_size or image_size; None keeps the native size).
    `samples` restricts the dataset to those sample names (e.g. one side of a split).
    """

    def __init__(
        self,
        input_dir: str | os.PathLike,
        output_dir: str | os.PathLike,
        metadata_path: str | os.PathLike | None = None,
        transform_mean=IMAGENET_MEAN,
        transform_std=IMAGENET_STD,
        image_size: int | None = None,
        output_size: int | None = None,
        use_dirty: bool = False,
        curriculum_mode: int = 0,
        samples: Iterable[str] | None = None,
    ):
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        self.metadata_path = Path(metadata_path or self.input_dir / METADATA_NAME)
        self.mean, self.std = tuple(transform_mean), tuple(transform_std)
        self.image_size = image_size
        self.output_size = output_size if output_size is not None else image_size
        self.curriculum_mode = 2 if use_dirty else int(curriculum_mode)
        if self.curriculum_mode not in CURRICULUM_SOURCES:
            raise ValueError(
                f"curriculum_mode must be 0 (clean), 1 (clean + dirty) or 2 (dirty), "
                f"got {curriculum_mode}"
            )
        self.metadata = read_metadata(self.metadata_path, self.input_dir)
        self.entries = self._scan(None if samples is None else set(samples))
        self.materials = sorted({self.metadata[s] for s, _ in self.entries})
        self._check_complete()

    @property
    def sources(self) -> tuple[str, ...]:
        return CURRICULUM_SOURCES[self.curriculum_mode]

    def _scan(self, wanted: set[str] | None) -> list[tuple[str, str]]:
        found = {source: _sample_folders(self.input_dir, source) for source in self.sources}
        unlisted = sorted({s for names in found.values() for s in names} - set(self.metadata))
        if unlisted:
            raise KeyError(
                f"{unlisted[0]}: sample folder(s) {unlisted} not in {self.metadata_path}; "
                "ensure metadata lists every sample_* folder"
            )
        entries = sorted(
            (sample, source)
            for source, names in found.items()
            for sample in names
            if wanted is None or sample in wanted
        )
        if wanted is not None:
            unknown = sorted(wanted - {s for s, _ in entries})
            if unknown:
                raise ValueError(
                    f"requested samples {unknown} have no folder under "
                    f"{[str(self.input_dir / s) for s in self.sources]}"
                )
        if not entries:
            raise FileNotFoundError(
                f"No samples found: no sample_* folders under "
                f"{' or '.join(str(self.input_dir / s) for s in self.sources)} "
                f"(curriculum {self.curriculum_mode}). Verify input/clean or input/dirty and the "
                f"material folders in {self.output_dir} contain all required PNGs"
            )
        return entries

    def _check_complete(self) -> None:
        problems = []
        for sample, source in self.entries:
            folder = self.input_dir / source / sample
            missing = [name for name in VIEW_FILES if not (folder / name).is_file()]
            if missing:
                problems.append(f"{folder}: missing {missing}")
        for material in self.materials:
            folder = self.output_dir / material
            missing = [f"{m}.png" for m in MAPS if not (folder / f"{m}.png").is_file()]
            if missing:
                problems.append(f"{folder}: missing {missing}")
        if problems:
            raise FileNotFoundError(
                "incomplete dataset; every sample needs 0.png, 1.png, 2.png and every material "
                "albedo/roughness/metallic/normal.png:\n  " + "\n  ".join(problems)
            )

    def material_of(self, sample: str) -> str:
        try:
            return self.metadata[sample]
        except KeyError:
            raise KeyError(f"{sample}: not listed in {self.metadata_path}") from None

    @property
    def samples(self) -> list[str]:
        """Unique sample names, sorted."""
        return sorted({s for s, _ in self.entries})

    def __len__(self) -> int:
        return len(self.entries)

    def view_paths(self, index: int) -> list[Path]:
        sample, source = self.entries[index]
        return [self.input_dir / source / sample / name for name in VIEW_FILES]

    def target(self, index: int) -> torch.Tensor:
        """Packed [8,S,S] ground truth of entry `index`."""
        material = self.material_of(self.entries[index][0])
        return join_maps(load_material(self.output_dir / material, self.output_size))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        views = load_views(self.view_paths(index), self.image_size)
        return normalize_views(views, self.mean, self.std), self.target(index)


def _material_lookup(material_of: Callable[[str], str] | Mapping[str, str]):
    return material_of.__getitem__ if isinstance(material_of, Mapping) else material_of


def split_by_material(
    samples: Iterable[str],
    material_of: Callable[[str], str] | Mapping[str, str],
    val_ratio: float,
    seed: int,
) -> tuple[list[str], list[str]]:
    """Deterministic train/val split of samples with no material on both sides.

    Materials (sorted, then shuffled with `seed`) go to val until round(n * val_ratio) of
    them are there, at least one when val_ratio > 0 and there are >= 2 materials, and never
    all of them. Samples keep their input order within each side.
    """
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    samples = list(dict.fromkeys(samples))
    lookup = _material_lookup(material_of)
    materials = sorted({lookup(s) for s in samples})
    random.Random(seed).shuffle(materials)
    n_val = round(len(materials) * val_ratio)
    if val_ratio > 0 and len(materials) >= 2:
        n_val = min(max(n_val, 1), len(materials) - 1)
    val_materials = set(materials[:n_val])
    train = [s for s in samples if lookup(s) not in val_materials]
    val = [s for s in samples if lookup(s) in val_materials]
    return train, val


def shared_materials(
    train: Iterable[str], val: Iterable[str], material_of: Callable | Mapping
) -> set[str]:
    """Materials that have samples on both sides of a split (empty for a leak-free split)."""
    lookup = _material_lookup(material_of)
    return {lookup(s) for s in train} & {lookup(s) for s in val}


def check_no_material_leak(train, val, material_of) -> None:
    """Raise ValueError naming every material that is in both train and val."""
    leaked = shared_materials(train, val, material_of)
    if leaked:
        raise ValueError(
            f"train and val share materials {sorted(leaked)}; split with split_by_material"
        )
