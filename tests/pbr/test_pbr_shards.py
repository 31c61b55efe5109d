"""Teacher shards (fresnel.pbr.teacher_shards): a tiny random-but-fixed teacher runs over a
tiny synthetic dataset; the shards must hold exactly its outputs (fp16, resized as asked)."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fresnel.io import sha256_file
from fresnel.pbr import teacher_shards as ts
from fresnel.pbr.config import get_config
from fresnel.pbr.data import PBRDataset
from fresnel.pbr.maps import MAP_CHANNELS, MAPS
from fresnel.pbr.synth import make_dataset
from fresnel.pbr.teacher import MultiViewPBRGenerator, load_generator

N_MATERIALS, SIZE = 3, 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_teacher_checkpoint(path, seed: int = 0):
    """A tiny teacher with random-but-fixed weights, saved as the contract's checkpoint."""
    cfg = get_config("tiny")
    cfg.data.render_curriculum = 1  # clean and dirty entries: 2 per sample
    torch.manual_seed(seed)
    model = MultiViewPBRGenerator(cfg.model, load_pretrained=False)
    torch.save(
        {"generator_state_dict": model.state_dict(), "config": cfg.to_dict(), "epoch": 0}, path
    )
    return path


def make_data(root):
    make_dataset(root, n_materials=N_MATERIALS, samples_per_material=1, size=SIZE, seed=0)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("pbr_shards")
    return make_teacher_checkpoint(root / "teacher.pth"), make_data(root / "data")


@torch.no_grad()
def teacher_outputs_fp32(checkpoint, data_root, curriculum=1):
    """Reference: the teacher run on each dataset entry alone, in float32."""
    model, cfg = load_generator(checkpoint)
    ds = PBRDataset(
        data_root / "input",
        data_root / "output",
        image_size=cfg.data.image_size,
        curriculum_mode=curriculum,
    )
    outs = [model(ds[i][0][None]) for i in range(len(ds))]
    return {m: torch.cat([o[m] for o in outs]) for m in MAPS}, ds.entries


def read_all_shards(shards_dir, output_size=None):
    manifest = ts.read_manifest(shards_dir)
    shards = [
        ts.load_teacher_shard(shards_dir / s["file"], output_size) for s in manifest["shards"]
    ]
    maps = {m: torch.cat([s["teacher_outputs"][m] for s in shards]) for m in MAPS}
    return manifest, shards, maps


def test_shards_hold_the_teachers_outputs_shrunk_by_area(setup, tmp_path):
    checkpoint, data = setup
    stats = ts.teacher_infer(
        checkpoint,
        data / "input",
        data / "output",
        tmp_path / "shards",
        shard_output_size=16,
        shard_size=4,
        batch_size=3,
    )
    n = 2 * N_MATERIALS  # clean + dirty per sample
    assert stats == {
        "entries": n,
        "shards": math.ceil(n / 4),
        "output_size": 16,
        "teacher_output_size": SIZE,
        "shards_dir": str(tmp_path / "shards"),
    }
    manifest, shards, maps = read_all_shards(tmp_path / "shards", output_size=16)
    assert [s["count"] for s in manifest["shards"]] == [4, 2]
    assert torch.equal(torch.cat([s["indices"] for s in shards]), torch.arange(n))
    for shard, info in zip(shards, manifest["shards"], strict=True):
        assert set(shard) == {"indices", "teacher_outputs"}
        assert sha256_file(tmp_path / "shards" / info["file"]) == info["sha256"]
    reference, entries = teacher_outputs_fp32(checkpoint, data)
    assert [(e["sample"], e["source"]) for e in manifest["entries"]] == list(entries)
    for m in MAPS:
        assert maps[m].dtype == torch.float16
        assert maps[m].shape == (n, MAP_CHANNELS[m], 16, 16)
        want = F.avg_pool2d(reference[m], 2)  # area resampling by 2 = mean of 2x2 blocks
        if m == "normal":
            want = want / want.norm(dim=1, keepdim=True)
        # fp16 keeps 11 significant bits: |error| <= 2^-11 for values of magnitude <= 1
        torch.testing.assert_close(maps[m].float(), want, rtol=0, atol=2**-11)
    assert manifest["teacher_checkpoint_sha256"] == sha256_file(checkpoint)
    assert manifest["output_size"] == 16 and manifest["dtype"] == "float16"


def test_full_size_shards_from_data_root_match_the_teacher(setup, tmp_path):
    checkpoint, data = setup
    stats = ts.teacher_infer(
        checkpoint,
        shards_dir=tmp_path / "s",
        data_root=data,
        shard_size=8,
        batch_size=4,
        render_curriculum=2,
    )
    assert (stats["entries"], stats["shards"], stats["output_size"]) == (N_MATERIALS, 1, SIZE)
    manifest, _, maps = read_all_shards(tmp_path / "s", output_size=SIZE)
    assert {e["source"] for e in manifest["entries"]} == {"dirty"}
    reference, _ = teacher_outputs_fp32(checkpoint, data, curriculum=2)
    for m in MAPS:
        torch.testing.assert_close(maps[m].float(), reference[m], rtol=0, atol=2**-11)


def test_enlarging_keeps_unit_normals_and_rerun_replaces_old_shards(setup, tmp_path):
    checkpoint, data = setup
    out = tmp_path / "shards"
    ts.teacher_infer(checkpoint, data / "input", data / "output", out, shard_size=1)
    assert len(list(out.glob("shard_*.pt"))) == 2 * N_MATERIALS
    ts.teacher_infer(
        checkpoint, data / "input", data / "output", out, shard_output_size=64, shard_size=8
    )
    assert sorted(p.name for p in out.glob("shard_*.pt")) == ["shard_00000.pt"]
    _, _, maps = read_all_shards(out, output_size=64)
    lengths = maps["normal"].float().norm(dim=1)
    torch.testing.assert_close(lengths, torch.ones_like(lengths), rtol=0, atol=2e-3)


def test_values_not_finite_in_fp16_name_the_sample():
    maps = {m: torch.zeros(2, MAP_CHANNELS[m], 4, 4) for m in MAPS}
    maps["roughness"][1, 0, 2, 2] = 1e6  # beyond float16's 65504
    with pytest.raises(ts.TeacherShardError, match=r"sample_0001 \(dirty\): teacher roughness"):
        ts.to_fp16(maps, ["sample_0000 (clean)", "sample_0001 (dirty)"])


def test_a_broken_teacher_is_refused_before_a_manifest_exists(setup, tmp_path):
    checkpoint, data = setup
    state = torch.load(checkpoint, weights_only=True)
    state["generator_state_dict"] = {
        k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
        for k, v in state["generator_state_dict"].items()
    }
    torch.save(state, tmp_path / "nan.pth")
    with pytest.raises(ts.TeacherShardError, match=r"sample_0000 .*not finite in float16"):
        ts.teacher_infer(tmp_path / "nan.pth", data / "input", data / "output", tmp_path / "s")
    assert not (tmp_path / "s" / ts.MANIFEST).exists()


class NotATensor:
    def __reduce__(self):  # unpickling this would run code
        return (print, ("pwned",))


def good_shard(n=2, size=4):
    return {
        "indices": torch.arange(n),
        "teacher_outputs": {
            m: torch.zeros(n, MAP_CHANNELS[m], size, size, dtype=torch.float16) for m in MAPS
        },
    }


def test_shards_with_pickled_code_are_refused(tmp_path, capsys):
    payload = good_shard()
    payload["teacher_outputs"]["albedo"] = NotATensor()
    torch.save(payload, tmp_path / "evil.pt")
    with pytest.raises(ts.TeacherShardError, match="refused: it holds pickled Python objects"):
        ts.load_teacher_shard(tmp_path / "evil.pt")
    assert "pwned" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda s: s.pop("indices"), "keys"),
        (lambda s: s.update(indices=torch.arange(2, dtype=torch.int32)), "int64"),
        (lambda s: s["teacher_outputs"].update(normal=torch.zeros(2, 3, 4, 4)), "float16"),
        (lambda s: s["teacher_outputs"].update(metallic=torch.zeros(2, 3, 4, 4).half()), "shape"),
        (lambda s: s["teacher_outputs"].update(albedo=torch.zeros(2, 3, 8, 8).half()), "sizes"),
    ],
)
def test_malformed_shards_are_rejected(tmp_path, edit, problem):
    shard = good_shard()
    ts.load_teacher_shard(_save(tmp_path / "good.pt", shard))  # the unedited one loads
    edit(shard)
    with pytest.raises(ts.TeacherShardError, match=problem):
        ts.load_teacher_shard(_save(tmp_path / "bad.pt", shard))


def test_wrong_size_is_rejected(tmp_path):
    with pytest.raises(ts.TeacherShardError, match="4px, expected 8px"):
        ts.load_teacher_shard(_save(tmp_path / "s.pt", good_shard()), output_size=8)


def _save(path, obj):
    torch.save(obj, path)
    return path


def test_manifest_is_required_and_versioned(tmp_path):
    with pytest.raises(ts.TeacherShardError, match="run teacher_infer"):
        ts.read_manifest(tmp_path)
    (tmp_path / ts.MANIFEST).write_text(json.dumps({"format": "other/0"}))
    with pytest.raises(ts.TeacherShardError, match="format 'other/0'"):
        ts.read_manifest(tmp_path)


def test_missing_dataset_dirs_are_an_error():
    with pytest.raises(ValueError, match="--data-root"):
        ts.dataset_dirs(None, "in", None)
