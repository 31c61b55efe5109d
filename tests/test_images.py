import numpy as np
import pytest
from PIL import Image

from fresnel.images import BadImage, load_rgb, save_png


def _jpeg(path, array, **kwargs):
    Image.fromarray(array).save(path, quality=95, **kwargs)
    return path


def test_16_bit_greyscale_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 1000], [32896, 65280, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode == "I;16"

    rgb = load_rgb(tmp_path / "g16.png")

    assert rgb.mode == "RGB"
    expected = np.array([[0, 1, 4], [128, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(rgb), np.repeat(expected[..., None], 3, axis=2))


def test_cmyk_jpeg_loads_as_rgb(tmp_path):
    cmyk = np.zeros((32, 64, 4), dtype=np.uint8)
    cmyk[:, 32:, 0] = 255  # right half: full cyan; left half: no ink (white)
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"

    rgb = np.asarray(load_rgb(tmp_path / "c.jpg"), dtype=int)

    assert rgb.shape == (32, 64, 3)
    np.testing.assert_allclose(rgb[16, 8], [255, 255, 255], atol=8)
    np.testing.assert_allclose(rgb[16, 56], [0, 255, 255], atol=8)


def test_exif_orientation_is_applied(tmp_path):
    stored = np.zeros((40, 80, 3), dtype=np.uint8)
    stored[...] = (0, 0, 255)
    stored[:20, :40] = (255, 0, 0)  # red top-left quadrant as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    _jpeg(tmp_path / "rot.jpg", stored, exif=exif.tobytes())

    shown = load_rgb(tmp_path / "rot.jpg")

    assert shown.size == (40, 80)  # width and height swapped
    rgb = np.asarray(shown, dtype=int)
    np.testing.assert_allclose(rgb[10, 30], [255, 0, 0], atol=12)  # now top-right
    for y, x in [(10, 10), (70, 10), (70, 30)]:
        np.testing.assert_allclose(rgb[y, x], [0, 0, 255], atol=12)


def test_palette_transparency_composites_on_black(tmp_path):
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 200, 100, 50, 0, 255, 0])
    img.putdata([0, 1, 2])
    img.save(tmp_path / "p.png", transparency=bytes([0, 128, 255]))

    rgb = np.asarray(load_rgb(tmp_path / "p.png"))

    half = [round(c * 128 / 255) for c in (200, 100, 50)]
    np.testing.assert_array_equal(rgb[0], [[0, 0, 0], half, [0, 255, 0]])


def test_rgba_drops_alpha_onto_black(tmp_path):
    pixels = np.array([[[255, 255, 255, 0], [10, 20, 30, 255]]], dtype=np.uint8)
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(
        np.asarray(load_rgb(tmp_path / "a.png")), [[[0, 0, 0], [10, 20, 30]]]
    )


@pytest.mark.parametrize("kind", ["truncated.jpg", "text.png", "empty.png", "missing.png"])
def test_bad_files_raise_bad_image_naming_the_file(tmp_path, kind):
    path = tmp_path / kind
    if kind == "truncated.jpg":
        rng = np.random.default_rng(0)
        data = _jpeg(tmp_path / "full.jpg", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        path.write_bytes(data.read_bytes()[:1500])
    elif kind == "text.png":
        path.write_text("not an image\n")
    elif kind == "empty.png":
        path.write_bytes(b"")

    with pytest.raises(BadImage) as info:
        load_rgb(path)

    assert info.value.path == str(path)
    assert str(info.value).startswith(f"{path}: ")
    assert info.value.reason


def test_save_png_bytes_depend_only_on_pixels(tmp_path):
    pixels = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    plain = Image.fromarray(pixels)
    tagged = Image.fromarray(pixels)
    tagged.info = {"dpi": (300, 300), "Comment": "x", "icc_profile": b"junk"}

    save_png(plain, tmp_path / "a.png")
    save_png(tagged, tmp_path / "b.png")

    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), pixels)
    assert not list(tmp_path.glob(".tmp-*"))
