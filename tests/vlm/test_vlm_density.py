"""Density maps: resampling against torch, blobs, levels, the offline provider, pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from fresnel.vlm.density import (
    LEVELS,
    DensityResult,
    grid_density,
    importance_levels,
    landmark_density,
    normalise,
    resample,
    saliency_density,
)
from fresnel.vlm.offline import (
    centre_surround_saliency,
    detect_face,
    locate_landmarks,
    offline_density,
    to_grey,
)
from fresnel.vlm.visualize import save_visualization

# Located by eye on a 4x zoom of skimage.data.astronaut() with a 10 px grid (x, y pixels):
# the pupils, the nose tip and the mouth centre.
ASTRONAUT = {
    "left_eye": (206, 102),
    "right_eye": (245, 103),
    "nose": (224, 125),
    "mouth": (224, 146),
}
ASTRONAUT_FACE = (165, 60, 290, 175)  # x0, y0, x1, y1: hairline to chin, ear to ear


def _box_mean(density, centre, half_w, half_h):
    x, y = centre
    return float(density[y - half_h : y + half_h + 1, x - half_w : x + half_w + 1].mean())


@pytest.mark.parametrize("n", [4, 8, 16])
@pytest.mark.parametrize("size", [16, 64, 100])
def test_bilinear_matches_torch_interpolate(n, size):
    grid = np.random.default_rng(n).uniform(0, 1, (n, n))
    expected = torch.nn.functional.interpolate(
        torch.from_numpy(grid)[None, None], size=(size, size), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    np.testing.assert_allclose(resample(grid, size), expected, atol=1e-12)


def test_nearest_and_area_resampling():
    grid = np.arange(16, dtype=float).reshape(4, 4)
    np.testing.assert_array_equal(resample(grid, 8, "nearest"), np.kron(grid, np.ones((2, 2))))
    np.testing.assert_allclose(resample(np.kron(grid, np.ones((4, 4))), 4), grid)  # area


@pytest.mark.parametrize("n", [4, 8, 16])
def test_grid_density_is_mean_one_and_peaks_in_the_hot_cell(n):
    grid = np.full((n, n), 0.1)
    grid[1, n - 2] = 1.0
    density = grid_density(grid, 64)
    assert density.dtype == np.float32 and density.shape == (64, 64)
    assert density.min() >= 0 and density.mean() == pytest.approx(1.0, abs=1e-5)
    row, col = np.unravel_index(density.argmax(), density.shape)
    cell = 64 / n
    assert int(row // cell) == 1 and int(col // cell) == n - 2
    blocks = grid_density(grid, 64, method="nearest")
    np.testing.assert_allclose(
        blocks[: cell.__int__(), : cell.__int__()], 0.1 / grid.mean(), rtol=1e-6
    )


def test_normalise_rejects_unusable_maps():
    for bad in (np.zeros((4, 4)), np.full((4, 4), -1.0), np.array([[np.nan, 1.0]])):
        with pytest.raises(ValueError):
            normalise(bad)


def test_landmark_blobs_eyes_tightest_and_highest():
    points = {"left_eye": (0.35, 0.4), "right_eye": (0.65, 0.4), "nose": (0.5, 0.55),
              "mouth": (0.5, 0.7)}  # fmt: skip
    density = landmark_density(points, 200)
    assert density.mean() == pytest.approx(1.0, abs=1e-5) and density.min() > 0
    row, col = np.unravel_index(density.argmax(), density.shape)
    assert (abs(col - 70) <= 1 or abs(col - 130) <= 1) and abs(row - 80) <= 1

    def width_at_half(x, y):  # horizontal extent where the blob is above half its height
        line = density[y] - density.min()
        peak = line[x]
        left = x
        while line[left - 1] > peak / 2:
            left -= 1
        return x - left

    assert width_at_half(70, 80) < width_at_half(100, 110)  # eye narrower than nose
    assert density[80, 70] > density[110, 100] > density[10, 10]
    levels = importance_levels(density)
    assert LEVELS[levels[80, 70]] == "critical" and LEVELS[levels[110, 100]] == "high"
    assert LEVELS[levels[5, 5]] == "low"


def test_levels_of_a_flat_map_are_medium():
    assert set(np.unique(importance_levels(np.ones((8, 8))))) == {LEVELS.index("medium")}


def test_saliency_finds_an_odd_patch():
    rgb = np.full((128, 128, 3), 128, dtype=np.uint8)
    rgb[80:96, 24:40] = (230, 40, 40)
    saliency = centre_surround_saliency(rgb)
    row, col = np.unravel_index(saliency.argmax(), saliency.shape)
    assert 36 <= row <= 52 and 8 <= col <= 24  # the patch at 64 px: rows 40-48, cols 12-20
    density = saliency_density(saliency, 32)
    assert density.mean() == pytest.approx(1.0, abs=1e-5) and density.min() > 0


@pytest.fixture(scope="module")
def astronaut_result():
    return offline_density(data.astronaut(), 512)


def test_offline_finds_the_astronauts_face_and_features(astronaut_result):
    result = astronaut_result
    assert result.provider == "offline:lbp-face" and result.branch == "smart-face"
    assert result.grid_size is None
    x0, y0, x1, y1 = (np.array(result.face_box) * 512).round()
    assert x0 < ASTRONAUT["left_eye"][0] and x1 > ASTRONAUT["right_eye"][0]
    assert y0 < ASTRONAUT["left_eye"][1] and y1 > ASTRONAUT["mouth"][1]
    for name, (x, y) in ASTRONAUT.items():
        found = np.array(result.landmarks[name]) * 512
        assert np.hypot(found[0] - x, found[1] - y) < 8, (name, found)


def test_offline_astronaut_density_peaks_on_the_eyes(astronaut_result):
    density = astronaut_result.density
    row, col = np.unravel_index(density.argmax(), density.shape)
    eyes = [ASTRONAUT["left_eye"], ASTRONAUT["right_eye"]]
    assert any(abs(col - x) <= 8 and abs(row - y) <= 6 for x, y in eyes), (col, row)
    eye_mean = np.mean([_box_mean(density, c, 8, 5) for c in eyes])
    feature_mean = np.mean([_box_mean(density, ASTRONAUT[k], 8, 5) for k in ("nose", "mouth")])
    face = np.zeros(density.shape, bool)
    fx0, fy0, fx1, fy1 = ASTRONAUT_FACE
    face[fy0:fy1, fx0:fx1] = True
    background_mean = float(density[~face].mean())
    assert eye_mean > feature_mean > background_mean
    # measured: eyes 12.8, nose/mouth 10.2, background 0.80 (mean of the whole map: 1)
    assert eye_mean > 1.15 * feature_mean and feature_mean > 5 * background_mean


def test_offline_without_a_face_uses_saliency():
    result = offline_density(data.coffee(), 64)
    assert (result.provider, result.branch) == ("offline:saliency", "saliency")
    assert result.density.shape == (64, 64) and result.density.mean() == pytest.approx(1, 1e-5)
    assert result.landmarks is None


def test_landmark_search_on_a_zoomed_face():
    """The same face 3.6x larger (as after the matte crop) is found and located too."""
    crop = Image.fromarray(data.astronaut()).crop((100, 20, 350, 270)).resize((518, 518))
    grey = to_grey(crop)
    box = detect_face(grey)
    assert box is not None
    scale = 518 / 250
    points = locate_landmarks(grey, box)
    for name in ("left_eye", "right_eye", "mouth"):
        x, y = ASTRONAUT[name]
        expected = ((x - 100) * scale, (y - 20) * scale)
        assert np.hypot(*np.subtract(points[name], expected)) < 0.1 * box[2], name


def test_visualization_files(tmp_path, astronaut_result):
    image = Image.fromarray(data.astronaut()).resize((256, 256))  # smaller: faster to draw
    paths = save_visualization(image, astronaut_result, tmp_path, "astronaut")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "astronaut_density.npy", "astronaut_density.png", "astronaut_segments.png",
    ]  # fmt: skip
    np.testing.assert_array_equal(np.load(paths["density_npy"]), astronaut_result.density)
    for key in ("density_png", "segments_png"):
        with Image.open(paths[key]) as picture:
            assert picture.format == "PNG" and min(picture.size) > 300  # figure, not image size
            assert len(np.unique(np.asarray(picture.convert("RGB")).reshape(-1, 3), axis=0)) > 50


def test_segments_of_a_grid_result(tmp_path):
    grid = np.array([[0.1, 0.1], [0.1, 1.0]])
    result = DensityResult(grid_density(grid, 32), "vlm:m", "grid", grid_size=2, grid=grid)
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    paths = save_visualization(image, result, tmp_path, "g")
    assert paths["segments_png"].stat().st_size > 1000
    assert result.record()["grid"] == grid.tolist()
