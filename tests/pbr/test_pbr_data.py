"""NeuroPBR data: map conventions, procedural dataset on disk, PBRDataset, split by material."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fresnel.images import load_rgb
from fresnel.io import sha256_file
from fresnel.pbr import synth
from fresnel.pbr.data import (
    PBRDataset,
    check_no_material_leak,
    denormalize_views,
    normalize_views,
    shared_materials,
    split_by_material,
)
from fresnel.pbr.maps import (
    MAPS,
    TARGET_CHANNELS,
    join_maps,
    load_material,
    quantize_maps,
    save_maps,
    split_maps,
)
from fresnel.pbr.shader import render, to_display

SIZE = 32


@pytest.fixture(scope="module")
def dataset_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pbr") / "data"
    stats = synth.make_dataset(root, n_materials=3, samples_per_material=2, size=SIZE, seed=3)
    assert stats["n_samples"] == 6 and stats["n_materials"] == 3
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()
    }


# ------------------------------------------------------------------------ maps


def test_split_and_join_round_trip_with_and_without_batch():
    packed = torch.rand(2, TARGET_CHANNELS, 5, 5)
    maps = split_maps(packed)
    assert [maps[k].shape[1] for k in MAPS] == [3, 1, 1, 3]
    torch.testing.assert_close(join_maps(maps), packed)
    torch.testing.assert_close(join_maps(split_maps(packed[0])), packed[0])
    torch.testing.assert_close(maps["metallic"], packed[:, 4:5])
    with pytest.raises(ValueError, match="8"):
        split_maps(torch.rand(7, 5, 5))


def test_save_then_load_material_equals_quantized_maps(tmp_path):
    maps = synth.generate_material("rusty_metal", seed=1, index=4, size=24)
    save_maps(maps, tmp_path / "m")
    loaded = load_material(tmp_path / "m")
    for name, expected in quantize_maps(maps).items():
        torch.testing.assert_close(loaded[name], expected, rtol=0, atol=1e-6)
    assert (maps["albedo"] - loaded["albedo"]).abs().max() <= 0.5 / 255 + 1e-6
    resized = load_material(tmp_path / "m", size=12)
    assert resized["albedo"].shape == (3, 12, 12) and resized["roughness"].shape == (1, 12, 12)
    torch.testing.assert_close(resized["normal"].norm(dim=0), torch.ones(12, 12))
    (tmp_path / "m" / "metallic.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"metallic\.png"):
        load_material(tmp_path / "m")


# ---------------------------------------------------------------- procedural maps


def test_normals_from_height_match_the_analytic_slope():
    size, strength = 64, 0.05
    u, _ = synth.tile_coords(size)
    normal = synth.normals_from_height(np.sin(2 * np.pi * u), strength)
    slope = strength * 2 * np.pi * np.cos(2 * np.pi * u)  # d(strength * h)/du
    expected_x = -slope / np.sqrt(1 + slope**2)
    # central differences are exact up to sinc(1/size) for one sine period
    np.testing.assert_allclose(normal[..., 0], expected_x, atol=2e-3)
    np.testing.assert_allclose(normal[..., 1], 0.0, atol=1e-12)


def test_spectral_noise_does_not_depend_on_the_output_size():
    def band16(fx, fy):
        return (np.hypot(fx, fy) <= 15).astype(float)

    big = synth.spectral_noise(np.random.default_rng(0), synth.Grid(128), band16)
    small = synth.spectral_noise(np.random.default_rng(0), synth.Grid(64), band16)
    np.testing.assert_allclose(small, big[::2, ::2], atol=1e-10)
    assert abs(big.std() - 1) < 0.2


def seam_ratio(image: np.ndarray, axis: int) -> float:
    """Wrap-around step over the largest step between interior neighbours along `axis`."""
    other = tuple(a for a in range(image.ndim) if a != axis)
    steps = np.abs(np.diff(image, axis=axis)).mean(axis=other)
    seam = np.abs(np.take(image, 0, axis=axis) - np.take(image, -1, axis=axis)).mean()
    return 0.0 if seam == 0 else float(seam / max(steps.max(), 1e-12))


@pytest.mark.parametrize("family", synth.FAMILIES)
def test_materials_are_tileable_and_in_range(family):
    maps = synth.generate_material(family, seed=2, index=0, size=48)
    # exact periodicity: sampling the tile 13 px right and 29 px down equals a wrap-around roll
    shifted = synth.generate_material(family, seed=2, index=0, size=48, shift=(13, 29))
    for name in MAPS:
        rolled = torch.roll(maps[name], shifts=(-29, -13), dims=(1, 2))
        torch.testing.assert_close(shifted[name], rolled, rtol=0, atol=1e-5)
    for name in ("albedo", "roughness", "normal"):
        for axis in (1, 2):
            assert seam_ratio(maps[name].numpy(), axis) < 1.5, (family, name, axis)
    for name in ("albedo", "roughness", "metallic"):
        assert maps[name].min() >= 0 and maps[name].max() <= 1
    torch.testing.assert_close(maps["normal"].norm(dim=0), torch.ones(48, 48))
    assert maps["normal"][2].min() > 0


def test_tileability_checks_catch_non_periodic_textures(monkeypatch):
    def ramp(rng, grid):  # albedo grows left to right: a hard seam at the wrap
        u, v = grid.coords()
        return {
            "albedo": np.stack([u, u, u], axis=-1) * 0.9,
            "roughness": v * 0.9,
            "metallic": np.zeros_like(u),
            "height": np.zeros_like(u),
            "strength": 0.0,
        }

    monkeypatch.setitem(synth.GENERATORS, "ramp", ramp)
    maps = synth.generate_material("ramp", 0, 0, 32)
    shifted = synth.generate_material("ramp", 0, 0, 32, shift=(5, 0))
    assert (shifted["albedo"] - torch.roll(maps["albedo"], -5, dims=2)).abs().max() > 0.5
    assert seam_ratio(maps["albedo"].numpy(), axis=2) > 10
    brushed = synth.generate_material("brushed_metal", 2, 0, 64)["albedo"].numpy()
    assert seam_ratio(brushed[:, :, :40], axis=2) > 3  # a crop of a tile is not a tile


def test_families_have_their_character():
    metal = synth.generate_material("brushed_metal", 0, 0, 32)
    assert torch.all(metal["metallic"] == 1)
    rusty = synth.generate_material("rusty_metal", 5, 0, 64)["metallic"]
    assert rusty.min() == 0 and rusty.max() > 0.5  # spatially varying metallic
    tiles = synth.generate_material("tiles", 0, 0, 32)
    assert tiles["roughness"].min() < 0.4 < tiles["roughness"].max()  # glaze vs grout
    with pytest.raises(ValueError, match="unknown material family"):
        synth.generate_material("marble", 0, 0, 32)


# ---------------------------------------------------------------- dataset on disk


def test_layout_is_exactly_the_guides(dataset_root):
    files = {str(p.relative_to(dataset_root)) for p in dataset_root.rglob("*") if p.is_file()}
    samples = [f"sample_{i:04d}" for i in range(6)]
    materials = [synth.material_name(i) for i in range(3)]
    expected = {"input/render_metadata.json", "input/render_lighting.json"}
    expected |= {
        f"input/{src}/{s}/{v}.png" for src in ("clean", "dirty") for s in samples for v in range(3)
    }
    expected |= {f"output/{m}/{k}.png" for m in materials for k in MAPS}
    assert files == expected
    metadata = json.loads((dataset_root / "input/render_metadata.json").read_text())
    assert metadata == {s: materials[i // 2] for i, s in enumerate(samples)}
    assert materials == ["bricks_000", "tiles_001", "wood_002"]


def test_same_seed_gives_the_same_bytes(dataset_root, tmp_path):
    synth.make_dataset(tmp_path / "again", n_materials=3, samples_per_material=2, size=SIZE, seed=3)
    assert tree_digest(tmp_path / "again") == tree_digest(dataset_root)
    synth.make_dataset(tmp_path / "other", n_materials=3, samples_per_material=2, size=SIZE, seed=4)
    other = tree_digest(tmp_path / "other")
    assert (
        other["output/bricks_000/albedo.png"]
        != tree_digest(dataset_root)["output/bricks_000/albedo.png"]
    )


def png01(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(load_rgb(path), dtype=np.float32).transpose(2, 0, 1) / 255)


def test_clean_views_are_renders_of_the_ground_truth_maps(dataset_root):
    metadata = json.loads((dataset_root / "input/render_metadata.json").read_text())
    lighting = synth.load_lighting(dataset_root / "input")
    for sample, material in metadata.items():
        maps = {
            k: v.unsqueeze(0) for k, v in load_material(dataset_root / "output" / material).items()
        }
        for view in range(3):
            expected = to_display(render(maps, lighting[sample][view]))[0]
            actual = png01(dataset_root / "input/clean" / sample / f"{view}.png")
            assert (actual - expected).abs().max() <= 0.5 / 255 + 1e-4, (sample, view)


def test_views_differ_in_lighting_and_dirty_views_differ_from_clean(dataset_root):
    lighting = synth.load_lighting(dataset_root / "input")["sample_0000"]
    assert len({lt.light_dirs[0] for lt in lighting}) == 3
    assert len({lt.view_dir for lt in lighting}) == 3
    views = [png01(dataset_root / "input/clean/sample_0000" / f"{v}.png") for v in range(3)]
    assert (views[0] - views[1]).abs().mean() > 0.01
    dirty = png01(dataset_root / "input/dirty/sample_0000/0.png")
    assert 0.005 < (dirty - views[0]).abs().mean() < 0.3


# ---------------------------------------------------------------- PBRDataset


def test_dataset_items_are_normalised_views_and_packed_targets(dataset_root):
    ds = PBRDataset(dataset_root / "input", dataset_root / "output")
    assert len(ds) == 6 and ds.materials == ["bricks_000", "tiles_001", "wood_002"]
    inputs, targets = ds[3]
    assert inputs.shape == (3, 3, SIZE, SIZE) and targets.shape == (8, SIZE, SIZE)
    assert inputs.dtype == targets.dtype == torch.float32
    sample, source = ds.entries[3]
    assert (sample, source) == ("sample_0003", "clean")
    raw = torch.stack([png01(dataset_root / "input/clean" / sample / f"{v}.png") for v in range(3)])
    torch.testing.assert_close(denormalize_views(inputs), raw, rtol=0, atol=1e-6)
    expected = join_maps(load_material(dataset_root / "output" / ds.material_of(sample)))
    torch.testing.assert_close(targets, expected)


def test_dataset_resizes_inputs_and_targets_separately(dataset_root):
    ds = PBRDataset(dataset_root / "input", dataset_root / "output", image_size=16, output_size=24)
    inputs, targets = ds[0]
    assert inputs.shape == (3, 3, 16, 16) and targets.shape == (8, 24, 24)
    torch.testing.assert_close(split_maps(targets)["normal"].norm(dim=0), torch.ones(24, 24))


@pytest.fixture
def mixed_root(dataset_root, tmp_path) -> Path:
    """A copy where sample_0001 has no dirty renders and sample_0002 no clean ones."""
    root = tmp_path / "mixed"
    shutil.copytree(dataset_root, root)
    shutil.rmtree(root / "input/dirty/sample_0001")
    shutil.rmtree(root / "input/clean/sample_0002")
    return root


def test_render_curriculum_follows_the_guides_table(mixed_root):
    def entries(**kwargs):
        return PBRDataset(mixed_root / "input", mixed_root / "output", **kwargs).entries

    clean = [f"sample_{i:04d}" for i in (0, 1, 3, 4, 5)]
    dirty = [f"sample_{i:04d}" for i in (0, 2, 3, 4, 5)]
    assert entries(curriculum_mode=0) == [(s, "clean") for s in clean]
    assert entries(curriculum_mode=2) == [(s, "dirty") for s in dirty]
    assert entries(use_dirty=True) == entries(curriculum_mode=2)
    assert entries(use_dirty=True, curriculum_mode=0) == entries(curriculum_mode=2)
    mixed = entries(curriculum_mode=1)
    assert mixed == sorted([(s, "clean") for s in clean] + [(s, "dirty") for s in dirty])
    assert mixed.count(("sample_0000", "clean")) == 1 and ("sample_0000", "dirty") in mixed
    ds = PBRDataset(mixed_root / "input", mixed_root / "output", curriculum_mode=1)
    dirty_index = ds.entries.index(("sample_0002", "dirty"))
    raw = png01(mixed_root / "input/dirty/sample_0002/0.png")
    torch.testing.assert_close(denormalize_views(ds[dirty_index][0])[0], raw, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="curriculum_mode"):
        entries(curriculum_mode=3)


def test_missing_metadata_says_where_to_create_it(mixed_root):
    (mixed_root / "input/render_metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"render_metadata\.json.*Create .*input"):
        PBRDataset(mixed_root / "input", mixed_root / "output")


def test_sample_missing_from_metadata_is_named(mixed_root):
    shutil.copytree(mixed_root / "input/clean/sample_0000", mixed_root / "input/clean/sample_0042")
    with pytest.raises(
        KeyError, match=r"sample_0042.*ensure metadata lists every sample_\* folder"
    ):
        PBRDataset(mixed_root / "input", mixed_root / "output")


def test_no_samples_names_the_folders(mixed_root):
    shutil.rmtree(mixed_root / "input/dirty")
    with pytest.raises(FileNotFoundError, match=r"No samples found.*input/dirty.*output"):
        PBRDataset(mixed_root / "input", mixed_root / "output", curriculum_mode=2)
    shutil.rmtree(mixed_root / "input/clean")
    with pytest.raises(FileNotFoundError, match=r"No samples found.*input/clean"):
        PBRDataset(mixed_root / "input", mixed_root / "output")


def test_incomplete_sample_and_material_are_listed(mixed_root):
    (mixed_root / "input/clean/sample_0003/2.png").unlink()
    (mixed_root / "output/wood_002/normal.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"sample_0003: missing \['2\.png'\]") as info:
        PBRDataset(mixed_root / "input", mixed_root / "output")
    assert "wood_002: missing ['normal.png']" in str(info.value)


def test_samples_argument_restricts_entries(dataset_root):
    ds = PBRDataset(dataset_root / "input", dataset_root / "output", samples=["sample_0004"])
    assert ds.entries == [("sample_0004", "clean")] and ds.materials == ["wood_002"]
    with pytest.raises(ValueError, match="sample_0099"):
        PBRDataset(dataset_root / "input", dataset_root / "output", samples=["sample_0099"])


def test_view_normalisation_round_trips():
    x = torch.rand(2, 3, 3, 4, 4)
    y = normalize_views(x)
    torch.testing.assert_close(y[:, :, 0], (x[:, :, 0] - 0.485) / 0.229)
    torch.testing.assert_close(denormalize_views(y), x)


# ---------------------------------------------------------------- split by material

MATERIAL_OF = {f"sample_{i:04d}": f"mat_{i // 4}" for i in range(24)}  # 6 materials x 4


def test_split_by_material_is_disjoint_deterministic_and_complete():
    samples = list(MATERIAL_OF)
    train, val = split_by_material(samples, MATERIAL_OF, val_ratio=0.34, seed=42)
    assert shared_materials(train, val, MATERIAL_OF) == set()
    check_no_material_leak(train, val, MATERIAL_OF)
    assert sorted(train + val) == samples and len({MATERIAL_OF[s] for s in val}) == 2
    assert (train, val) == split_by_material(samples, MATERIAL_OF.get, val_ratio=0.34, seed=42)
    splits = {tuple(split_by_material(samples, MATERIAL_OF, 0.34, seed)[1]) for seed in range(10)}
    assert len(splits) > 1  # the seed matters
    assert split_by_material(samples, MATERIAL_OF, 0.01, 0)[1] != []  # at least one material
    assert split_by_material(samples, MATERIAL_OF, 0.0, 0) == (samples, [])


def test_a_guide_like_sample_level_split_leaks_materials():
    samples = list(MATERIAL_OF)
    shuffled = samples[:]
    random.Random(42).shuffle(shuffled)  # the guide: shuffle samples, cut val_ratio off
    n_val = round(len(samples) * 0.25)
    val, train = shuffled[:n_val], shuffled[n_val:]
    assert shared_materials(train, val, MATERIAL_OF)
    with pytest.raises(ValueError, match="share materials"):
        check_no_material_leak(train, val, MATERIAL_OF)


def test_split_of_a_real_dataset_by_material(dataset_root):
    ds = PBRDataset(dataset_root / "input", dataset_root / "output", curriculum_mode=1)
    train, val = split_by_material(ds.samples, ds.material_of, val_ratio=0.3, seed=0)
    assert {ds.material_of(s) for s in val} and not shared_materials(train, val, ds.material_of)
    train_ds = PBRDataset(
        dataset_root / "input", dataset_root / "output", curriculum_mode=1, samples=train
    )
    assert {s for s, _ in train_ds.entries} == set(train) and len(train_ds) == 2 * len(train)
