"""VPOG query shards: synthetic queries, the train_pbr_web round trip, real-data multi-object
samples, and bad members that are skipped rather than fatal."""

import hashlib
import io
import json
import logging
import math
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from fresnel.vpog.geometry import in_plane_rotation, viewing_direction
from fresnel.vpog.objects import box
from fresnel.vpog.templates import template_intrinsics
from fresnel.vpog.webdata import (
    QuerySample,
    as_transform,
    encode_sample,
    index_shards,
    read_shards,
    render_queries,
    write_shards,
)

SIZE = 32


@pytest.fixture(scope="module")
def queries():
    return render_queries(box(), 5, image_size=SIZE, seed=7)


def _digests(paths):
    return [hashlib.sha256(path.read_bytes()).hexdigest() for path in paths]


def test_queries_follow_the_requested_distribution(queries):
    obj = box()
    K = template_intrinsics(SIZE, 3 * obj.diameter, obj.diameter)
    for view, query in enumerate(queries):
        assert query.key == f"000007_{view:06d}" and query.object_id == "box"
        assert query.rgb.shape == (3, SIZE, SIZE) and query.rgb.dtype == torch.uint8
        assert torch.equal(query.K, K)
        assert float(viewing_direction(query.pose[:3, :3])[2]) >= 0  # upper hemisphere
        distance = float(query.pose[2, 3])
        assert 2.5 * obj.diameter <= distance <= 3.5 * obj.diameter
        origin = K @ query.pose[:3, 3]
        offset = origin[:2] / origin[2] - SIZE / 2
        assert offset.abs().max() <= 0.05 * SIZE + 1e-9
        R = query.pose[:3, :3]
        assert torch.allclose(R @ R.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert query.mask.any() and (query.depth[~query.mask] == 0).all()
        # the noise backdrop is coloured: the mask is not merely the non-black pixels
        assert (query.rgb.sum(0)[~query.mask] > 0).float().mean() > 0.9


def test_same_seed_same_bytes_other_seed_other_poses(queries, tmp_path):
    again = render_queries(box(), 5, image_size=SIZE, seed=7)
    first = write_shards(queries, tmp_path / "a", samples_per_shard=2)
    second = write_shards(again, tmp_path / "b", samples_per_shard=2)
    assert [p.name for p in first] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert _digests(first) == _digests(second)
    other = render_queries(box(), 5, image_size=SIZE, seed=8)
    assert not torch.equal(other[0].pose, queries[0].pose)


def test_in_plane_range_zero_keeps_the_cameras_upright():
    for query in render_queries(box(), 3, image_size=SIZE, seed=1, inplane_range_deg=0):
        # an upright camera's x axis is horizontal in the object frame (z = 0)
        assert abs(float(query.pose[0, 2])) < 1e-12


def test_a_flat_background_is_that_grey():
    query = render_queries(box(), 1, image_size=SIZE, seed=2, background=0.5)[0]
    assert (query.rgb[:, ~query.mask] == 128).all()


def test_write_read_round_trip(queries, tmp_path):
    write_shards(queries, tmp_path, samples_per_shard=2)
    reader = read_shards(tmp_path)
    loaded = list(reader)
    assert reader.skipped == 0 and [q.key for q in loaded] == [q.key for q in queries]
    for read, written in zip(loaded, queries, strict=True):
        assert torch.equal(read.rgb, written.rgb) and torch.equal(read.mask, written.mask)
        assert torch.equal(read.K, written.K) and torch.allclose(read.pose, written.pose)
        assert (read.depth - written.depth).abs().max() <= 0.5e-4 + 1e-6  # 0.1 mm units
        assert read.object_id == "box" and read.depth.dtype == torch.float32


def test_rewriting_a_folder_replaces_its_shards(queries, tmp_path):
    write_shards(queries, tmp_path, samples_per_shard=1)
    write_shards(queries[:2], tmp_path, samples_per_shard=4)
    assert [p.name for p in tmp_path.glob("*.tar")] == ["shard-000000.tar"]
    assert len(list(read_shards(tmp_path))) == 2


def test_bad_keys_are_refused(queries, tmp_path):
    renamed = QuerySample(**{**queries[0].__dict__, "key": "scene.1"})
    with pytest.raises(ValueError, match="not <scene:06d>_<view:06d>"):
        write_shards([renamed], tmp_path)
    with pytest.raises(ValueError, match="appears twice"):
        write_shards([queries[0], queries[0]], tmp_path)


def test_a_folder_without_shards_is_one_clear_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shard-") as error:
        read_shards(tmp_path / "missing")
    assert str(tmp_path / "missing") in str(error.value) and "\n" not in str(error.value)


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_tar(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_multi_object_samples_with_a_camera_pose(tmp_path):
    """Three objects, one invisible; the world is not the camera frame (TWC given as
    megapose's quaternion + translation)."""
    segmentation = np.zeros((4, 6), np.uint16)
    segmentation[0, :2], segmentation[1, :3], segmentation[2, :4] = 1, 2, 3
    depth = np.full((4, 6), 5000, np.uint16)  # 0.5 m
    TWC = torch.eye(4, dtype=torch.float64)
    TWC[:3, :3] = in_plane_rotation(math.pi / 2)  # 90 degrees about z: quaternion (0, 0, s, s)
    TWC[:3, 3] = torch.tensor([0.1, -0.2, 0.3])
    s = math.sqrt(0.5)
    camera = {
        "K": [[50, 0, 3], [0, 50, 2], [0, 0, 1]],
        "resolution": [4, 6],
        "TWC": [[0, 0, s, s], [0.1, -0.2, 0.3]],
    }
    TWO = [torch.eye(4, dtype=torch.float64) for _ in range(3)]
    for i, T in enumerate(TWO):
        T[:3, 3] = torch.tensor([0.0, 0.01 * i, 1.0])
    objects = [
        {"label": name, "TWO": T.tolist(), "visib_fract": v}
        for name, T, v in zip(("a", "b", "c"), TWO, (0.5, 0.0, 0.8), strict=True)
    ]
    key = "000001_000002"
    _write_tar(
        tmp_path / "shard-000000.tar",
        {
            f"{key}.rgb.png": _png(np.zeros((4, 6, 3), np.uint8)),
            f"{key}.depth.png": _png(depth),
            f"{key}.segmentation.png": _png(segmentation),
            f"{key}.camera_data.json": json.dumps(camera).encode(),
            f"{key}.object_datas.json": json.dumps(objects).encode(),
        },
    )
    a, c = read_shards(tmp_path)
    assert (a.object_id, c.object_id) == ("a", "c")
    assert torch.equal(a.mask, torch.from_numpy(segmentation == 1))
    assert torch.equal(c.mask, torch.from_numpy(segmentation == 3))
    assert torch.allclose(as_transform(camera["TWC"], "TWC"), TWC, atol=1e-12)
    assert torch.allclose(c.pose, torch.linalg.inv(TWC) @ TWO[2], atol=1e-12)
    assert torch.allclose(a.depth, torch.full((4, 6), 0.5))


def test_bad_members_are_skipped_with_a_warning(queries, tmp_path, caplog):
    members = {}
    for index, query in enumerate(queries):
        encoded = encode_sample(query)
        if index == 1:
            del encoded["depth.png"]
        if index == 2:
            encoded["rgb.png"] = b"not a png"
        if index == 3:
            encoded["object_datas.json"] = b"[{"
        members |= {f"{query.key}.{suffix}": data for suffix, data in encoded.items()}
    _write_tar(tmp_path / "shard-000000.tar", members)
    (tmp_path / "shard-000001.tar").write_bytes(b"garbage, not a tar file" * 40)
    caplog.set_level(logging.WARNING, logger="fresnel.vpog.webdata")
    reader = read_shards(tmp_path)
    keys = [query.key for query in reader]
    assert keys == [queries[0].key, queries[4].key]
    assert reader.skipped == 4  # missing depth, bad JSON, undecodable PNG, unreadable shard
    text = caplog.text
    assert "missing member(s) depth.png" in text and "object_datas.json is not JSON" in text
    assert "rgb.png does not decode" in text and "unreadable shard" in text
    refs, skipped = index_shards(tmp_path)
    assert len(refs) == 3 and skipped == 3  # the PNG is only decoded when loaded
