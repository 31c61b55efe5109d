"""VPOGDataset and its loader on one box: shapes, the self-template's exact labels, nearest
positives, reproducible selection, dropped bad samples and distributed sampling."""

import dataclasses
import io
import logging
import math
import tarfile

import pytest
import torch
from torch.utils.data import DistributedSampler

from fresnel.vpog.dataset import (
    NoneFilteringDataLoader,
    VPOGBatch,
    VPOGDataset,
    collate_vpog,
    selection_seed,
)
from fresnel.vpog.flow import BACKGROUND
from fresnel.vpog.geometry import out_of_plane_angle, viewing_direction
from fresnel.vpog.objects import box, cylinder
from fresnel.vpog.templates import render_templates, save_templates
from fresnel.vpog.webdata import encode_sample, render_queries, render_query, write_shards

SIZE, PATCH, SP, SN = 32, 8, 3, 2
SELF_TEMPLATE = 5  # the template the extra query is rendered at
SELF_KEY = "000099_000000"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vpog_dataset")
    obj = box()
    templates = render_templates(obj, level=0, image_size=SIZE, progress=False)
    save_templates(templates, root / "templates")
    queries = render_queries(obj, 5, image_size=SIZE, seed=0)
    own = render_query(obj, templates.poses[SELF_TEMPLATE], templates.K, SIZE, SELF_KEY)
    write_shards([*queries, own], root / "web", samples_per_shard=4)
    return root, templates


def make(root, web="web", **kwargs) -> VPOGDataset:
    options = (
        dict(
            num_positive_templates=SP, num_negative_templates=SN, patch_size=PATCH, image_size=SIZE
        )
        | kwargs
    )
    return VPOGDataset(root / web, root / "templates", **options)


def test_a_batch_has_the_documented_shapes(data):
    root, _ = data
    dataset = make(root)
    assert len(dataset) == 6
    batch = next(iter(NoneFilteringDataLoader(dataset, batch_size=4)))
    B, S, G = 4, SP + SN, SIZE // PATCH
    expected = {
        "images": (B, S + 1, 3, SIZE, SIZE),
        "masks": (B, S + 1, SIZE, SIZE),
        "depths": (B, S + 1, SIZE, SIZE),
        "K": (B, S + 1, 3, 3),
        "poses": (B, S + 1, 4, 4),
        "d_ref": (B, 3),
        "template_dirs": (B, S, 3),
        "template_indices": (B, S),
        "is_positive": (B, S),
        "labels": (B, S, G, G),
        "flows": (B, S, G, G, 2),
        "flow_valid": (B, S, G, G),
        "patch_visibility": (B, S, G, G),
    }
    assert {name: tuple(getattr(batch, name).shape) for name in expected} == expected
    assert len(batch) == 4 and batch.object_ids == ["box"] * 4
    assert batch.keys == [f"000000_{i:06d}" for i in range(4)]
    assert (
        batch.images.dtype == torch.float32 and 0 <= batch.images.min() <= batch.images.max() <= 1
    )
    assert batch.labels.dtype == torch.long and batch.masks.dtype == torch.bool
    assert torch.isfinite(batch.flows).all()
    assert torch.equal(batch.is_positive[0], torch.tensor([True] * SP + [False] * SN))
    moved = batch.to("cpu")
    assert isinstance(moved, VPOGBatch) and torch.equal(moved.labels, batch.labels)


def test_the_template_at_the_query_pose_labels_each_patch_with_itself(data):
    root, templates = data
    dataset = make(root)
    sample = dataset[5]
    assert sample.key == SELF_KEY and int(sample.template_indices[0]) == SELF_TEMPLATE
    assert torch.equal(sample.images[0], sample.images[1])  # both on black
    assert torch.allclose(
        sample.d_ref, viewing_direction(templates.poses[SELF_TEMPLATE, :3, :3]).float()
    )
    labels, grid = sample.labels[0], SIZE // PATCH
    own = torch.arange(grid * grid).reshape(grid, grid)
    foreground = labels != BACKGROUND
    assert foreground.sum() >= 2
    assert torch.equal(labels[foreground], own[foreground])
    assert torch.equal(sample.flow_valid[0], foreground)
    assert sample.flows[0].abs().max() < 1e-5
    assert torch.allclose(sample.patch_visibility[0][foreground], torch.tensor(1.0))


def test_positives_are_the_nearest_templates_by_out_of_plane_angle(data):
    root, templates = data
    dataset = make(root)
    template_R = templates.poses[:, :3, :3]
    for index in range(len(dataset)):
        sample = dataset[index]
        angles = out_of_plane_angle(sample.poses[0, :3, :3].double(), template_R)
        # float32 poses may reorder exact ties: compare the angles, not the indices
        positives = sample.template_indices[:SP]
        assert torch.allclose(angles[positives], torch.sort(angles).values[:SP], atol=1e-6)
        negatives = sample.template_indices[SP:]
        assert not set(negatives.tolist()) & set(positives.tolist())
        if int((angles >= math.radians(90)).sum()) >= SN:
            assert (angles[negatives] >= math.radians(90)).all()
        expected_dirs = viewing_direction(templates.poses[sample.template_indices, :3, :3])
        assert torch.allclose(sample.template_dirs, expected_dirs.float())


def test_selection_depends_on_seed_epoch_and_index_only(data):
    root, _ = data
    first, second = make(root, seed=3), make(root, seed=3)
    order = [4, 0, 2]
    a = collate_vpog([first[i] for i in order])
    b = collate_vpog([second[i] for i in reversed(order)])
    assert torch.equal(a.template_indices, b.template_indices.flip(0))
    assert torch.equal(a.images, b.images.flip(0)) and torch.equal(a.labels, b.labels.flip(0))
    negatives = {}
    for epoch in range(4):
        first.set_epoch(epoch)
        negatives[epoch] = tuple(first[0].template_indices[SP:].tolist())
    first.set_epoch(0)
    assert tuple(first[0].template_indices[SP:].tolist()) == negatives[0]
    assert len(set(negatives.values())) > 1  # negatives are redrawn each epoch
    assert selection_seed(3, 0, 0) != selection_seed(3, 1, 0) != selection_seed(3, 0, 1)


def test_workers_give_the_same_batches(data):
    root, _ = data
    serial = list(NoneFilteringDataLoader(make(root), batch_size=2))
    parallel = list(NoneFilteringDataLoader(make(root), batch_size=2, num_workers=2))
    assert [b.keys for b in serial] == [b.keys for b in parallel]
    for x, y in zip(serial, parallel, strict=True):
        assert torch.equal(x.template_indices, y.template_indices)
        assert torch.equal(x.flows, y.flows)


def test_shuffling_is_seeded(data):
    root, _ = data
    keys = [
        [b.keys for b in NoneFilteringDataLoader(make(root), batch_size=2, shuffle=True, seed=s)]
        for s in (1, 1, 2)
    ]
    flat = [sorted(key for batch in run for key in batch) for run in keys]
    assert keys[0] == keys[1] and flat[0] == flat[2]


def test_a_distributed_sampler_splits_the_samples(data):
    root, _ = data
    dataset = make(root)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)
        loader = NoneFilteringDataLoader(dataset, batch_size=2, sampler=sampler)
        seen += [key for batch in loader for key in batch.keys]
    assert sorted(seen) == [*sorted(f"000000_{i:06d}" for i in range(5)), SELF_KEY]


def test_bad_samples_are_dropped_without_a_crash(data, caplog):
    root, _ = data
    good = render_queries(box(), 2, image_size=SIZE, seed=11)
    large = render_queries(box(), 1, image_size=2 * SIZE, seed=12)  # the wrong image size
    other = render_queries(cylinder(), 1, image_size=SIZE, seed=13)  # no templates for it
    broken = render_queries(box(), 1, image_size=SIZE, seed=14)  # its depth will go
    shards = write_shards(
        [large[0], good[0], other[0], broken[0], good[1]], root / "bad", samples_per_shard=10
    )
    _drop_member(shards[0], f"{broken[0].key}.depth.png")
    caplog.set_level(logging.WARNING)
    dataset = make(root, web="bad")
    assert len(dataset) == 4 and dataset.skipped_at_index == 1
    loader = NoneFilteringDataLoader(dataset, batch_size=1)
    keys = [key for batch in loader for key in batch.keys]
    assert keys == [good[0].key, good[1].key] and loader.skipped_batches == 2
    assert dataset.dropped == {"image size": 1, "unknown object": 1}
    assert (
        "missing member(s) depth.png" in caplog.text
        and "'cylinder' has no templates" in caplog.text
    )
    batch = next(iter(NoneFilteringDataLoader(dataset, batch_size=4)))
    assert batch.keys == keys  # the two good ones of the four
    assert collate_vpog([None, None]) is None


def _scaled_rotation(sample):
    pose = sample.pose.clone()
    pose[:3, :3] *= 2
    return {"pose": pose}


BAD_QUERIES = {
    "all-zero K": lambda q: dataclasses.replace(q, K=torch.zeros(3, 3, dtype=torch.float64)),
    "NaN in K": lambda q: dataclasses.replace(q, K=q.K.clone().fill_diagonal_(math.nan)),
    "negative focal length": lambda q: dataclasses.replace(q, K=q.K * torch.tensor([[-1.0], [1.0], [1.0]], dtype=torch.float64)),
    "NaN in the pose": lambda q: dataclasses.replace(q, pose=q.pose.clone().fill_(math.nan)),
    "pose that is not a rotation": lambda q: dataclasses.replace(q, **_scaled_rotation(q)),
}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_QUERIES)
def test_a_bad_query_is_skipped_with_one_line_and_the_rest_train(data, bad, tmp_path, caplog):
    root, _ = data
    good = render_queries(box(), 2, image_size=SIZE, seed=21)
    broken = BAD_QUERIES[bad](render_queries(box(), 1, image_size=SIZE, seed=22)[0])
    write_shards([good[0], broken, good[1]], tmp_path / "web", samples_per_shard=10)
    caplog.set_level(logging.WARNING)
    dataset = VPOGDataset(tmp_path / "web", root / "templates", num_positive_templates=SP,
                          num_negative_templates=SN, patch_size=PATCH, image_size=SIZE)  # fmt: skip
    keys = [key for batch in NoneFilteringDataLoader(dataset, batch_size=2) for key in batch.keys]
    assert keys == [good[0].key, good[1].key]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and broken.key in warnings[0] and "\n" not in warnings[0]


def test_too_few_foreground_patches_drop_the_sample(data):
    root, _ = data
    dataset = make(root, min_foreground_patches=SIZE * SIZE)
    assert dataset[0] is None and dataset.dropped == {"too few foreground patches": 1}
    assert list(NoneFilteringDataLoader(dataset, batch_size=3)) == []


def test_configuration_errors_are_raised_at_construction(data, tmp_path):
    root, _ = data
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        make(root, patch_size=6)
    with pytest.raises(FileNotFoundError, match="no shard-"):
        VPOGDataset(tmp_path / "nope", root / "templates")
    with pytest.raises(ValueError, match=r"no <object>/info\.json"):
        VPOGDataset(root / "web", tmp_path)
    with pytest.raises(ValueError, match="negatives >"):
        make(root, num_positive_templates=20, num_negative_templates=10)


def _drop_member(shard, name: str) -> None:
    """Rewrite `shard` without the member `name`."""
    with tarfile.open(shard) as tar:
        kept = [(info, tar.extractfile(info).read()) for info in tar if info.name != name]
    with tarfile.open(shard, "w") as tar:
        for info, payload in kept:
            tar.addfile(info, io.BytesIO(payload))


def test_encode_sample_marks_an_empty_mask_invisible(data):
    query = render_queries(box(), 1, image_size=SIZE, seed=0)[0]
    query.mask[:] = False
    assert b'"visib_fract": 0.0' in encode_sample(query)["object_datas.json"]
