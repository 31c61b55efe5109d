import pickle

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fresnel import io
from fresnel.data import shards

IDS = [f"img_{i}" for i in range(5)]


@pytest.fixture
def stage_inputs(tmp_path):
    """A matte-style images dir and a features dir for five images with known values."""
    rng = np.random.default_rng(0)
    images, features = tmp_path / "matted", tmp_path / "features"
    (images / "images").mkdir(parents=True)
    features.mkdir()
    rows = []
    for i, item in enumerate(IDS):
        pixels = np.full((518, 518, 3), 40 * i, np.uint8)
        pixels[:, :, 1] = np.arange(518)[None, :] // 3  # a horizontal ramp: layout shows
        Image.fromarray(pixels).save(images / f"images/{item}.png")
        rows.append({"id": item, "file": f"images/{item}.png"})
        io.write_f32_bin(features / f"{item}_dinov2.bin", rng.normal(size=(37, 37, 384)))
        io.write_f32_bin(features / f"{item}_depth.bin", np.full((32, 32), float(i)))
    pd.DataFrame(rows).to_parquet(images / "manifest.parquet")
    io.write_json(features / "index.json", {"ids": IDS, "depth_shape": [32, 32]})
    return images, features, tmp_path / "shards"


def test_shards_round_trip_in_fp16_at_training_resolution(stage_inputs):
    images, features, out = stage_inputs
    stats = shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)
    assert stats == {"images": 5, "shards": 3}
    manifest = shards.read_manifest(out)
    assert [s["count"] for s in manifest["shards"]] == [2, 2, 1]
    assert manifest["tensors"] == {"image": [3, 16, 16], "dinov2": [37, 37, 384], "depth": [32, 32]}
    seen = []
    for entry in manifest["shards"]:
        assert io.sha256_file(out / entry["file"]) == entry["sha256"]
        tensors = shards.load_shard(out / entry["file"])
        assert all(t.dtype == torch.float16 for t in tensors.values())
        for row, item in enumerate(entry["ids"]):
            i = IDS.index(item)
            want = io.read_f32_bin(features / f"{item}_dinov2.bin", (37, 37, 384))
            np.testing.assert_allclose(tensors["dinov2"][row].float(), want, rtol=1e-3, atol=1e-3)
            assert torch.all(tensors["depth"][row] == i)
            image = tensors["image"][row].float()
            assert torch.allclose(image[0], torch.tensor(40 * i / 255), atol=1e-3)
            ramp = image[1].mean(dim=0)  # mean over rows: rises left to right
            assert torch.all(ramp[1:] > ramp[:-1]) and torch.allclose(image[1][0], image[1][-1])
            seen.append(item)
    assert sorted(seen) == IDS


def test_packing_is_deterministic(stage_inputs, tmp_path):
    images, features, out = stage_inputs
    shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)
    shards.pack(images, features, tmp_path / "again", resolution=16, shard_size=2, seed=0)
    for entry in shards.read_manifest(out)["shards"]:
        assert (out / entry["file"]).read_bytes() == (
            tmp_path / "again" / entry["file"]
        ).read_bytes()


def test_missing_features_are_named(stage_inputs):
    images, features, out = stage_inputs
    io.write_json(features / "index.json", {"ids": IDS[:3], "depth_shape": [32, 32]})
    with pytest.raises(shards.ShardError, match="no features for img_3, img_4"):
        shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)


def test_values_that_overflow_fp16_are_rejected(stage_inputs):
    images, features, out = stage_inputs
    io.write_f32_bin(features / "img_2_depth.bin", np.full((32, 32), 1e6))
    with pytest.raises(shards.ShardError, match="img_2: depth has values that are not finite"):
        shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)


def test_stream_yields_every_item_once_per_epoch_and_reshuffles(stage_inputs):
    images, features, out = stage_inputs
    shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)
    stream = shards.ShardStream(out, seed=1)
    first = [item["id"] for item in stream]
    assert sorted(first) == IDS and len(stream) == 5
    assert [item["id"] for item in stream] == first  # same epoch, same order
    stream.set_epoch(1)
    orders = {tuple(item["id"] for item in stream)}
    for epoch in range(2, 6):
        stream.set_epoch(epoch)
        orders.add(tuple(item["id"] for item in stream))
    assert len(orders) > 1
    item = next(iter(stream))
    assert item["image"].dtype == torch.float32 and item["image"].shape == (3, 16, 16)


def test_stream_splits_shards_across_workers(stage_inputs):
    images, features, out = stage_inputs
    shards.pack(images, features, out, resolution=16, shard_size=2, seed=0)
    loader = torch.utils.data.DataLoader(shards.ShardStream(out), batch_size=None, num_workers=2)
    assert sorted(item["id"] for item in loader) == IDS


def test_loading_never_unpickles(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    bad = tmp_path / "shard_00000.safetensors"
    bad.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(Exception) as err:
        shards.load_shard(bad)
    assert "pickle executed" not in str(err.value)  # safetensors parses a JSON header only
