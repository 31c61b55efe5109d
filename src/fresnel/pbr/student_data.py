"""What the student trains on: each teacher-shard entry matched to its renders and ground
truth in the PNG dataset, and a sampler that reads every shard once per epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from fresnel.images import IMAGENET_MEAN, IMAGENET_STD
from fresnel.io import sha256_file
from fresnel.pbr.maps import MAPS, join_maps
from fresnel.pbr.teacher_shards import (
    MANIFEST,
    TeacherShardError,
    dataset_fingerprint,
    load_teacher_shard,
    read_manifest,
    resize_maps,
)


class StudentShardDataset(Dataset):
    """(inputs [3,3,image_size²], targets [8,S,S], teacher [8,S,S]) per shard entry.

    Entries are those of the shards' manifest (optionally only `samples`), matched to the
    PNG dataset by (sample, source). S = output_size; teacher maps stored at another size
    are resized (area/bilinear, normals renormalised).
    """

    def __init__(
        self,
        shards_dir,
        input_dir,
        output_dir,
        image_size: int,
        output_size: int,
        metadata_path=None,
        samples=None,
        transform_mean=IMAGENET_MEAN,
        transform_std=IMAGENET_STD,
        check_fingerprint: bool = True,
    ):
        from fresnel.pbr.data import PBRDataset

        self.shards_dir = Path(shards_dir)
        self.manifest = read_manifest(shards_dir)
        self.output_size = int(output_size)
        self.images = PBRDataset(
            input_dir,
            output_dir,
            metadata_path,
            transform_mean=transform_mean,
            transform_std=transform_std,
            image_size=image_size,
            output_size=output_size,
            curriculum_mode=self.manifest["render_curriculum"],
        )
        if check_fingerprint:
            check_dataset_matches(self.manifest, self.images, input_dir, self.shards_dir)
        keep = None if samples is None else set(samples)
        entries = [e for e in self.manifest["entries"] if keep is None or e["sample"] in keep]
        self.entries = entries
        self.image_index = _match_entries(entries, self.images, input_dir, self.shards_dir)
        self.locations = [_locate(self.manifest, e["index"]) for e in entries]
        self._cached: tuple[str | None, dict | None] = (None, None)
        self._verified: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def samples(self) -> list[str]:
        return sorted({e["sample"] for e in self.entries})

    def material_of(self, sample: str) -> str:
        return next(e["material"] for e in self.entries if e["sample"] == sample)

    def shard_of(self, i: int) -> int:
        return self.locations[i][0]

    def _shard(self, shard_idx: int) -> dict:
        """One shard in memory at a time (ShardGroupedSampler reads each once per epoch)."""
        info = self.manifest["shards"][shard_idx]
        if self._cached[0] != info["file"]:
            path = self.shards_dir / info["file"]
            if info["file"] not in self._verified:
                if sha256_file(path) != info["sha256"]:
                    raise TeacherShardError(f"{path}: sha256 differs from {MANIFEST}; regenerate")
                self._verified.add(info["file"])
            data = load_teacher_shard(path)
            want = list(range(info["first"], info["first"] + info["count"]))
            if data["indices"].tolist() != want:
                raise TeacherShardError(f"{path}: indices do not match {MANIFEST}; regenerate")
            self._cached = (info["file"], data)
        return self._cached[1]

    def teacher(self, i: int) -> torch.Tensor:
        """The teacher's packed maps [8,S,S] (float32) for item i."""
        shard_idx, row = self.locations[i]
        outputs = self._shard(shard_idx)["teacher_outputs"]
        maps = {m: outputs[m][row : row + 1].float() for m in MAPS}
        return join_maps(resize_maps(maps, self.output_size))[0]

    def __getitem__(self, i: int):
        inputs, targets = self.images[self.image_index[i]]
        return inputs, targets, self.teacher(i)


def check_dataset_matches(manifest: dict, images, input_dir, shards_dir) -> None:
    """The renders (and their materials) must be those the teacher saw."""
    entries = [
        {"sample": e["sample"], "source": e["source"], "material": images.material_of(e["sample"])}
        for e in manifest["entries"]
    ]
    if dataset_fingerprint(input_dir, entries) != manifest["dataset_fingerprint"]:
        raise TeacherShardError(
            f"{input_dir}: renders or render_metadata.json differ from those the shards in "
            f"{shards_dir} were made from; rerun teacher_infer on this dataset"
        )


def _match_entries(entries: list[dict], images, input_dir, shards_dir) -> list[int]:
    where = {tuple(e): i for i, e in enumerate(images.entries)}
    missing = [
        f"{e['sample']} ({e['source']})" for e in entries if (e["sample"], e["source"]) not in where
    ]
    if missing:
        raise TeacherShardError(
            f"{input_dir}: lacks {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
            f"listed in {Path(shards_dir) / MANIFEST}; point --input-dir at the dataset the "
            "shards were made from, or rerun teacher_infer"
        )
    return [where[(e["sample"], e["source"])] for e in entries]


def _locate(manifest: dict, index: int) -> tuple[int, int]:
    shard_idx = index // manifest["shard_size"]
    info = manifest["shards"][shard_idx]
    return shard_idx, index - info["first"]


class ShardGroupedSampler(Sampler):
    """Shuffles shard order, then items within each shard: each shard is read once an epoch."""

    def __init__(self, dataset: StudentShardDataset, seed: int, shuffle: bool = True):
        self.dataset, self.seed, self.shuffle, self.epoch = dataset, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        groups: dict[int, list[int]] = {}
        for i in range(len(self.dataset)):
            groups.setdefault(self.dataset.shard_of(i), []).append(i)
        keys = sorted(groups)
        if not self.shuffle:
            return iter([i for k in keys for i in groups[k]])
        rng = np.random.default_rng([self.seed, self.epoch])
        order = []
        for k in rng.permutation(len(keys)):
            members = groups[keys[k]]
            order += [members[j] for j in rng.permutation(len(members))]
        return iter(order)
