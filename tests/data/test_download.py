import json
import os
from importlib import resources
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fresnel import io
from fresnel.data import download
from fresnel.data.download import DownloadError, run
from fresnel.images import BadImage, load_rgb

COLUMNS = ["id", "file", "source", "origin", "sha256", "width", "height", "licence"]


def _run(source, out, count=4, *, on_bad_image="skip", min_size=32, datasets=None, seed=0):
    return run(source, out, count, seed, min_size, on_bad_image, datasets or {})


def _manifest(out):
    return pd.read_parquet(out / "manifest.parquet")


def _check_manifest(out, manifest):
    assert list(manifest.columns) == COLUMNS
    assert list(manifest["id"]) == sorted(manifest["id"])
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{i}.png" for i in manifest["id"]
    )
    for row in manifest.itertuples():
        assert row.file == f"images/{row.id}.png"
        assert row.sha256 == io.sha256_file(out / row.file)
        with Image.open(out / row.file) as img:
            assert (img.format, img.mode, img.size) == ("PNG", "RGB", (row.width, row.height))


def _rejected(out):
    return json.loads((out / "rejected.json").read_text())


def _photo(path, size=(96, 80), colour=(200, 120, 40), **save_kwargs):
    Image.new("RGB", size, colour).save(path, **save_kwargs)
    return path


# --- sample ---------------------------------------------------------------------------------


def test_sample_photos_are_all_bundled_with_scikit_image():
    # sample must never fall back to a pooch download
    data_dir = Path(str(resources.files("skimage") / "data"))
    assert all((data_dir / filename).is_file() for _, filename, _ in download.SAMPLE_PHOTOS)


def test_sample_is_complete_and_deterministic(tmp_path, monkeypatch):
    monkeypatch.setattr(download, "SAMPLE_PHOTOS", download.SAMPLE_PHOTOS[:3])
    a, b = tmp_path / "a", tmp_path / "b"

    assert _run("sample", a, count=5) == {
        "accepted": 5,
        "rejected": 0,
        "from_cache": 0,
        "duplicates": 0,
        "not_images": 0,
    }
    _run("sample", b, count=5)

    manifest = _manifest(a)
    _check_manifest(a, manifest)
    assert list(manifest["id"]) == [
        "procedural_0000",
        "procedural_0001",
        "sample_astronaut",
        "sample_chelsea",
        "sample_coffee",
    ]
    assert set(manifest["source"]) == {"sample"}
    astronaut = manifest.set_index("id").loc["sample_astronaut"]
    assert (astronaut.origin, astronaut.width, astronaut.height) == (
        "skimage.data.astronaut",
        512,
        512,
    )
    assert astronaut.licence == "public domain (scikit-image sample data)"
    assert manifest.set_index("id").loc["procedural_0001", "licence"] == "generated"
    assert _rejected(a) == []

    pd.testing.assert_frame_equal(manifest, _manifest(b))
    assert (a / "manifest.parquet").read_bytes() == (b / "manifest.parquet").read_bytes()
    for name in manifest["file"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_sample_takes_a_prefix_of_the_photos_and_seed_changes_procedural(tmp_path):
    _run("sample", tmp_path / "two", count=2)
    assert list(_manifest(tmp_path / "two")["id"]) == ["sample_astronaut", "sample_chelsea"]

    pixels = [download.procedural_image(seed, 0).tobytes() for seed in (0, 0, 1)]
    assert pixels[0] == pixels[1] != pixels[2]


# --- local:<dir> ----------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    _photo(folder / "good.JPG")
    full = _photo(tmp_path / "full.jpg", colour=(1, 2, 3))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(full)
    (folder / "sub" / "trunc.jpg").write_bytes(full.read_bytes()[:1500])
    Image.new("CMYK", (64, 48), (0, 255, 0, 0)).save(folder / "cmyk.jpg")
    _photo(folder / "small.png", size=(20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    _photo(folder / "sub" / "rot 1.jpg", size=(100, 50), exif=exif.tobytes())
    (folder / "notes.txt").write_text("ignored: not an image extension")
    return folder


def test_local_accepts_good_images_and_reports_bad_ones(tmp_path, mixed_folder, caplog):
    out = tmp_path / "out"

    stats = _run(f"local:{mixed_folder}", out, count=100)

    assert stats == {"accepted": 3, "rejected": 2, "from_cache": 0, "duplicates": 0,
                     "not_images": 1}  # fmt: skip
    manifest = _manifest(out)
    _check_manifest(out, manifest)
    rows = manifest.set_index("id")
    assert list(rows.index) == ["cmyk", "good", "sub_rot_1"]
    assert list(rows["origin"]) == ["cmyk.jpg", "good.JPG", "sub/rot 1.jpg"]
    assert set(rows["source"]) == {"local"} and set(rows["licence"]) == {""}
    assert (rows.loc["sub_rot_1", "width"], rows.loc["sub_rot_1", "height"]) == (50, 100)
    rejected = _rejected(out)
    assert [r["item"] for r in rejected] == ["notes.txt", "small.png", "sub/trunc.jpg"]
    assert rejected[0]["ignored"] and "not an image file type" in rejected[0]["reason"]
    assert "too small: 20x20" in rejected[1]["reason"]
    assert "truncated" in rejected[2]["reason"]
    assert "small.png" in caplog.text and "sub/trunc.jpg" in caplog.text


def test_local_fail_mode_lists_every_bad_item_after_processing_all(tmp_path, mixed_folder):
    out = tmp_path / "out"

    with pytest.raises(DownloadError) as info:
        _run(f"local:{mixed_folder}", out, count=100, on_bad_image="fail")

    assert "small.png" in str(info.value) and "sub/trunc.jpg" in str(info.value)
    assert "notes.txt" not in str(info.value)  # not an image: listed, never a failure
    assert len(_rejected(out)) == 3
    assert len(_manifest(out)) == 3


def test_every_file_of_a_local_folder_is_accepted_or_listed_with_its_reason(tmp_path):
    folder, elsewhere = tmp_path / "photos", tmp_path / "elsewhere"
    folder.mkdir()
    elsewhere.mkdir()
    _photo(folder / "a.png", colour=(10, 20, 30))
    (folder / "a copy.png").write_bytes((folder / "a.png").read_bytes())
    _photo(folder / "a.bmp", colour=(10, 20, 30), format="BMP")  # same pixels, other codec
    frames = [Image.new("RGB", (64, 64), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    _photo(folder / "still.gif", colour=(90, 90, 200), format="GIF")
    (folder / "phone.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    (folder / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    _photo(elsewhere / "linked.png", colour=(5, 200, 5))
    (folder / "more").symlink_to(elsewhere, target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)

    stats = _run(f"local:{folder}", tmp_path / "out", count=100)

    assert sorted(_manifest(tmp_path / "out")["origin"]) == ["a copy.png", "more/linked.png",
                                                            "still.gif"]  # fmt: skip
    reasons = {r["item"]: r["reason"] for r in _rejected(tmp_path / "out")}
    assert reasons["a.bmp"] == "duplicate of a copy.png (identical pixels)"
    assert reasons["a.png"] == "duplicate of a copy.png (identical pixels)"
    assert reasons["anim.gif"].startswith("animated GIF (2 frames)")
    assert reasons["phone.HEIC"] == "HEIC is not supported: convert it to PNG or JPEG"
    assert reasons["gone.jpg"].startswith("broken symbolic link")
    assert len(reasons) == 5 and stats["duplicates"] == 2 and stats["rejected"] == 3


def test_an_unreadable_file_is_reported_as_permission_denied(tmp_path, monkeypatch):
    _photo(tmp_path / "locked.png")
    real_open = Image.open

    def no_permission(path, *args, **kwargs):  # root reads every file, so simulate chmod 000
        if str(path).endswith("locked.png"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", no_permission)
    with pytest.raises(BadImage, match="permission denied: this user cannot read the file"):
        load_rgb(tmp_path / "locked.png")


def test_local_count_caps_in_sorted_order(tmp_path, mixed_folder):
    _run(f"local:{mixed_folder}", tmp_path / "out", count=2)
    assert list(_manifest(tmp_path / "out")["origin"]) == ["cmyk.jpg", "good.JPG"]


def test_local_missing_dir_is_named(tmp_path):
    with pytest.raises(DownloadError, match="nowhere"):
        _run(f"local:{tmp_path / 'nowhere'}", tmp_path / "out")


def test_unique_ids_are_sanitised_and_deterministic():
    stems = ["a b", "a_b", "A_B", "x/y.z", "", "a_b_2"]
    assert download.unique_ids(stems) == ["a_b", "a_b_2", "A_B_3", "x_y_z", "image", "a_b_2_2"]


# --- HuggingFace datasets -------------------------------------------------------------------


@pytest.fixture
def hub_folder(tmp_path, monkeypatch):
    """A local imagefolder dataset: img_0..img_4 (grey level 40*i) then a truncated file."""
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "hub" / "train"
    folder.mkdir(parents=True)
    for i in range(5):
        _photo(folder / f"img_{i}.png", size=(64, 48), colour=(40 * i,) * 3)
    (folder / "img_5.png").write_bytes(_photo(tmp_path / "x.png").read_bytes()[:60])
    spec = {"hub_id": str(folder.parent), "split": "train", "image_column": "image"}
    return {"ffhq": {**spec, "licence": "test licence"}}


def test_hub_source_fetches_caches_and_resumes(tmp_path, hub_folder):
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"

    assert _run("ffhq", first, count=3, datasets=hub_folder) == {
        "accepted": 3,
        "rejected": 0,
        "from_cache": 0,
        "duplicates": 0,
        "not_images": 0,
    }
    manifest = _manifest(first)
    _check_manifest(first, manifest)
    assert list(manifest["id"]) == ["ffhq_000000", "ffhq_000001", "ffhq_000002"]
    hub_id = hub_folder["ffhq"]["hub_id"]
    assert list(manifest["origin"]) == [f"{hub_id}:train:{i}" for i in range(3)]
    assert set(manifest["licence"]) == {"test licence"} and set(manifest["source"]) == {"ffhq"}
    for i, name in enumerate(manifest["file"]):
        assert np.asarray(Image.open(first / name))[0, 0].tolist() == [40 * i] * 3

    stats = _run("ffhq", second, count=7, datasets=hub_folder)
    assert stats == {
        "accepted": 5,
        "rejected": 1,
        "from_cache": 3,
        "duplicates": 0,
        "not_images": 0,
    }
    assert _rejected(second)[0]["item"] == f"{hub_id}:train:5"
    _check_manifest(second, _manifest(second))
    pd.testing.assert_frame_equal(_manifest(second).iloc[:3], manifest)

    # everything cached: the dataset itself is no longer needed
    (tmp_path / "hub" / "train" / "img_0.png").unlink()
    stats = _run("ffhq", third, count=5, datasets=hub_folder)
    assert stats == {
        "accepted": 5,
        "rejected": 0,
        "from_cache": 5,
        "duplicates": 0,
        "not_images": 0,
    }
    pd.testing.assert_frame_equal(_manifest(third), _manifest(second))


def test_unloadable_hub_dataset_names_it_and_suggests_a_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("FRESNEL_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty").mkdir()
    spec = {"hub_id": str(tmp_path / "empty"), "split": "train", "image_column": "image"}

    with pytest.raises(DownloadError) as info:
        _run("celeba", tmp_path / "out", datasets={"celeba": spec})

    message = str(info.value)
    assert str(tmp_path / "empty") in message and "'celeba'" in message
    assert "local:<dir>" in message and "HF_HUB_OFFLINE" in message


def test_unknown_source_and_policy_are_refused(tmp_path):
    with pytest.raises(DownloadError, match="unknown download source"):
        _run("imagenet", tmp_path / "out")
    with pytest.raises(ValueError, match="on_bad_image"):
        _run("sample", tmp_path / "out", on_bad_image="ignore")
