"""What VPOG's training loop consumes: one query with its selected templates and flow labels.

A sample is one object of one web-dataset sample (`fresnel.vpog.webdata`) matched against the
templates of its object (`fresnel.vpog.templates`, one folder per object under templates_dir).
The S = S_p + S_n templates are chosen by `fresnel.vpog.selector.TemplateSelector` on the
query's rotation: positives first (by increasing out-of-plane angle), then negatives.

Layout of a `VPOGBatch` (B samples; index 0 of the image axis is the query, 1..S the templates;
float tensors float32):
    images      [B, S+1, 3, H, W] RGB in [0, 1]
    masks       [B, S+1, H, W] bool, depths [B, S+1, H, W] camera z in metres (0 = none)
    K           [B, S+1, 3, 3], poses [B, S+1, 4, 4] object-to-camera (OpenCV)
    d_ref       [B, 3] viewing direction of the reference template: the nearest one
                (d_ref_source "nearest"), or one of the S selected templates drawn at random
                ("random_template", the guide's "or random"), so that a template at d_ref is
                not always a positive, as at test time, where the pose is unknown
    template_dirs [B, S, 3] viewing direction of each template (`geometry.viewing_direction`)
    template_indices [B, S] long, is_positive [B, S] bool
    labels      [B, S, Hp, Wp] long: -1 background, 0..Hp*Wp-1 buddy patch, Hp*Wp unseen
    flows       [B, S, Hp, Wp, 2] patch_flow in patch units, 0 where undefined (NaN)
    flow_valid  [B, S, Hp, Wp] bool: a buddy label and a dense-visible anchor pixel
    patch_visibility [B, S, Hp, Wp]; object_ids, keys: lists of B strings
Labels and flows are those of `fresnel.vpog.flow.compute_flow_labels` (query -> template).

Bad samples give None instead of a sample, with the reason logged once per kind per process:
an object without templates, a query or template size other than image_size x image_size, a
sample that fails to decode, fewer foreground query patches than min_foreground_patches.
`collate_vpog` drops them and `NoneFilteringDataLoader` skips batches left empty.

Randomness: the selection of sample i in epoch e draws from a generator seeded with
(seed, e, i) only, so it is reproducible whatever the worker, order or process (`set_epoch`).
With persistent workers the epoch reaches them only when they restart.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from fresnel.vpog.flow import BACKGROUND, anchor_pixels, compute_flow_labels
from fresnel.vpog.geometry import viewing_direction
from fresnel.vpog.selector import Selection, TemplateSelector
from fresnel.vpog.templates import (
    TemplateInfo,
    load_template_views,
    read_template_info,
    template_folders,
)
from fresnel.vpog.webdata import QuerySample, SampleRef, index_shards, load_sample

log = logging.getLogger("fresnel.vpog.dataset")


@dataclass
class _Tensors:
    """The tensor fields of a sample; a batch has the same ones with a leading batch axis."""

    images: Tensor
    masks: Tensor
    depths: Tensor
    K: Tensor
    poses: Tensor
    d_ref: Tensor
    template_dirs: Tensor
    template_indices: Tensor
    is_positive: Tensor
    labels: Tensor
    flows: Tensor
    flow_valid: Tensor
    patch_visibility: Tensor


TENSOR_FIELDS = tuple(f.name for f in fields(_Tensors))


@dataclass
class VPOGSample(_Tensors):
    """One query and its templates: a `VPOGBatch` row without the batch axis."""

    object_id: str
    key: str


@dataclass
class VPOGBatch(_Tensors):
    """A batch of samples; see the module docstring for every field's shape."""

    object_ids: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> VPOGBatch:
        """The batch with every tensor on `device`."""
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> VPOGBatch:
        """The batch in pinned memory (the DataLoader's pin_memory calls this)."""
        return self._map(lambda t: t.pin_memory())

    def _map(self, function) -> VPOGBatch:
        moved = {name: function(getattr(self, name)) for name in TENSOR_FIELDS}
        return VPOGBatch(**moved, object_ids=list(self.object_ids), keys=list(self.keys))


def collate_vpog(samples: Sequence[VPOGSample | None]) -> VPOGBatch | None:
    """Stack the non-None samples into a VPOGBatch; None when every one was None."""
    kept = [sample for sample in samples if sample is not None]
    if not kept:
        return None
    stacked = {name: torch.stack([getattr(s, name) for s in kept]) for name in TENSOR_FIELDS}
    return VPOGBatch(**stacked, object_ids=[s.object_id for s in kept], keys=[s.key for s in kept])


def selection_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed of (seed, epoch, index), all >= 0."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


D_REF_SOURCES = ("nearest", "random_template")


class VPOGDataset(Dataset):
    """Queries from the shards in `web_dir` with templates from `templates_dir` (module docs).

    Shards are indexed at construction (members' offsets, not images); query images and the
    selected template images are read in `__getitem__`.
    """

    def __init__(
        self,
        web_dir: str | Path,
        templates_dir: str | Path,
        num_positive_templates: int = 4,
        num_negative_templates: int = 2,
        patch_size: int = 16,
        image_size: int = 224,
        selection_mode: str = "nearest",
        negative_min_angle_deg: float = 90.0,
        positive_max_angle_deg: float | None = None,
        seed: int = 0,
        min_foreground_patches: int = 1,
        d_ref_source: str = "nearest",
    ) -> None:
        if d_ref_source not in D_REF_SOURCES:
            raise ValueError(f"d_ref_source must be one of {D_REF_SOURCES}, got {d_ref_source!r}")
        self.d_ref_source = d_ref_source
        if image_size % patch_size:
            raise ValueError(
                f"image_size {image_size} is not a multiple of patch_size {patch_size}"
            )
        self.web_dir, self.templates_dir = Path(web_dir), Path(templates_dir)
        self.refs, self.skipped_at_index = index_shards(web_dir)
        self.templates = self._template_infos(self.templates_dir)
        self.selectors = {
            object_id: TemplateSelector(
                info.poses[:, :3, :3],
                num_positive_templates,
                num_negative_templates,
                negative_min_angle_deg,
                selection_mode,
                positive_max_angle_deg,
                seed,
            )
            for object_id, info in self.templates.items()
        }
        self.patch_size, self.image_size = patch_size, image_size
        self.seed, self.epoch = seed, 0
        self.min_foreground_patches = min_foreground_patches
        self.dropped: Counter[str] = Counter()
        self._logged: set[str] = set()

    @staticmethod
    def _template_infos(templates_dir: Path) -> dict[str, TemplateInfo]:
        infos = [read_template_info(folder) for folder in template_folders(templates_dir)]
        if not infos:
            raise ValueError(
                f"{templates_dir}: no <object>/info.json template folders; render them with "
                "fresnel vpog_render_templates or fix templates_dir"
            )
        return {info.object_id: info for info in infos}

    def __len__(self) -> int:
        return len(self.refs)

    def set_epoch(self, epoch: int) -> None:
        """Select templates with epoch `epoch`'s generators from now on."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> VPOGSample | None:
        ref = self.refs[index]
        info = self.templates.get(ref.object_id)
        if info is None:
            return self._drop(
                "unknown object",
                f"object {ref.object_id!r} has no templates in {self.templates_dir}",
            )
        size = (self.image_size, self.image_size)
        if tuple(info.image_size) != size:
            return self._drop(
                "template size",
                f"templates of {ref.object_id!r} are {info.image_size}, not image_size {size}",
            )
        query = self._load_query(ref)
        if query is None:
            return None
        if tuple(query.rgb.shape[-2:]) != size:
            return self._drop(
                "image size",
                f"{ref.key}: query is {tuple(query.rgb.shape[-2:])}, not image_size {size}",
            )
        if self.foreground_patches(query) < self.min_foreground_patches:
            return self._drop(
                "too few foreground patches",
                f"{ref.key}: fewer than {self.min_foreground_patches} foreground patches",
            )
        return self._build(query, info, self.select(index, query), index)

    def _load_query(self, ref: SampleRef) -> QuerySample | None:
        try:
            return load_sample(ref)
        except ValueError as exc:
            return self._drop("malformed sample", str(exc))

    def select(self, index: int, query: QuerySample) -> Selection:
        """The templates of sample `index` this epoch (reproducible, module docstring)."""
        generator = torch.Generator().manual_seed(selection_seed(self.seed, self.epoch, index))
        return self.selectors[query.object_id].select(query.pose[:3, :3], generator)

    def foreground_patches(self, query: QuerySample) -> int:
        """Query patches whose anchor pixel is on the object with a depth."""
        rows, cols = anchor_pixels(query.depth.shape, self.patch_size)
        foreground = query.mask & (query.depth > 0)
        return int(foreground[rows, cols].sum())

    def _build(self, query: QuerySample, info: TemplateInfo, selection: Selection, index: int):
        indices = torch.cat((selection.positives, selection.negatives))
        template_dirs = viewing_direction(info.poses[indices][:, :3, :3]).float()
        try:
            rgb, depth, mask = load_template_views(info, indices.tolist())
        except ValueError as exc:
            return self._drop("template files", str(exc))
        poses = info.poses[indices]
        labels = [
            self._flow(query, depth[s], mask[s], info.K, poses[s]) for s in range(len(indices))
        ]
        images = torch.cat((query.rgb[None], rgb)).float() / 255
        return VPOGSample(
            images=images,
            masks=torch.cat((query.mask[None], mask)),
            depths=torch.cat((query.depth[None], depth)).float(),
            K=torch.stack((query.K, *info.K.expand(len(indices), 3, 3))).float(),
            poses=torch.cat((query.pose[None], poses)).float(),
            d_ref=self._d_ref(selection, template_dirs, index),
            template_dirs=template_dirs,
            template_indices=indices.long(),
            is_positive=torch.arange(len(indices)) < len(selection.positives),
            **{name: torch.stack([item[name] for item in labels]) for name in labels[0]},
            object_id=query.object_id,
            key=query.key,
        )

    def _d_ref(self, selection: Selection, template_dirs: Tensor, index: int) -> Tensor:
        if self.d_ref_source == "nearest":
            return selection.d_ref.float()
        seed = selection_seed(self.seed + 1, self.epoch, index)  # not the selection's stream
        drawn = torch.randint(len(template_dirs), (), generator=torch.Generator().manual_seed(seed))
        return template_dirs[drawn]

    def _flow(self, query: QuerySample, depth, mask, K, pose) -> dict[str, Tensor]:
        flow = compute_flow_labels(
            query.depth, query.mask, query.K, query.pose, depth, mask, K, pose, self.patch_size
        )
        centre = self.patch_size // 2
        is_buddy = (flow.labels != BACKGROUND) & (flow.labels < flow.unseen_label)
        return {
            "labels": flow.labels.long(),
            "flows": flow.patch_flow.nan_to_num(0.0).float(),
            "flow_valid": is_buddy & flow.dense_visible[:, :, centre, centre],
            "patch_visibility": flow.patch_visibility.float(),
        }

    def _drop(self, kind: str, message: str) -> None:
        self.dropped[kind] += 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning(
                "dropping a sample (%s): %s; later ones of this kind are not logged", kind, message
            )
        return None


class NoneFilteringDataLoader(DataLoader):
    """A DataLoader with `collate_vpog` whose iterator skips the None (all-bad) batches,
    counting them in `skipped_batches`. `shuffle` draws from a generator seeded with `seed`;
    a sampler (e.g. a DistributedSampler) may be passed instead via sampler=."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        num_workers: int = 0,
        shuffle: bool = False,
        seed: int = 0,
        **kwargs,
    ) -> None:
        kwargs.setdefault("collate_fn", collate_vpog)
        if shuffle and kwargs.get("sampler") is None:
            kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
        super().__init__(
            dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, **kwargs
        )
        self.skipped_batches = 0

    def __iter__(self):
        for batch in super().__iter__():
            if batch is None:
                self.skipped_batches += 1
                continue
            yield batch


@dataclass(frozen=True)
class WebDataloader:
    """Where the guide's loop finds the samples: `dataset.web_dataloader.datapipeline`."""

    datapipeline: Dataset


class VPOGTrainDataset:
    """The training samples as the guide's Python usage builds them:

        dataset = instantiate(cfg.data.dataloader)   # this class: configs/data/vpog_data.yaml
        loader = NoneFilteringDataLoader(dataset.web_dataloader.datapipeline,
                                         batch_size=cfg.machine.batch_size,
                                         num_workers=cfg.machine.num_workers,
                                         collate_fn=dataset.collate_fn)

    The datasets `train_dataset_id` picks (one VPOGDataset each, concatenated); `val_web_dir`
    is the validation split's, which this object leaves to the training loop."""

    collate_fn = staticmethod(collate_vpog)

    def __init__(self, datasets: Sequence, train_dataset_id: int = 0,
                 val_web_dir: str | None = None, **options) -> None:  # fmt: skip
        from torch.utils.data import ConcatDataset

        from fresnel.vpog.config import select_datasets

        parts = [VPOGDataset(entry["web_dir"], entry["templates_dir"], **options)
                 for entry in select_datasets(datasets, train_dataset_id)]  # fmt: skip
        self.val_web_dir = val_web_dir
        self.web_dataloader = WebDataloader(parts[0] if len(parts) == 1 else ConcatDataset(parts))
