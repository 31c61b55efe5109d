"""VPOG templates: intrinsics, rendering from the icosphere poses, and the on-disk round trip."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fresnel.vpog.geometry import template_poses
from fresnel.vpog.objects import box
from fresnel.vpog.templates import (
    load_templates,
    read_template_info,
    render_templates,
    save_templates,
    template_folders,
    template_intrinsics,
)

SIZE = 32


@pytest.fixture(scope="module")
def templates():
    return render_templates(box(), level=0, image_size=SIZE, progress=False)


def test_intrinsics_make_the_diameter_span_the_fill():
    K = template_intrinsics(200, radius=0.6, diameter=0.2, fill=0.8)
    assert K.dtype == torch.float64
    assert torch.equal(K, torch.tensor([[480.0, 0, 100], [0, 480.0, 100], [0, 0, 1]]).double())
    # a segment of one diameter, centred and facing the camera at the radius, spans 160 pixels
    ends = torch.tensor([[-0.1, 0.0, 0.6], [0.1, 0.0, 0.6]], dtype=torch.float64) @ K.T
    u = ends[:, 0] / ends[:, 2]
    assert float(u[1] - u[0]) == pytest.approx(0.8 * 200)
    with pytest.raises(ValueError):
        template_intrinsics(200, radius=0.0, diameter=0.2)


def test_templates_follow_the_upper_hemisphere_poses_at_three_diameters(templates):
    obj = box()
    expected = template_poses(0, radius=3 * obj.diameter, upper_hemisphere=True)
    assert len(templates) == 26 and torch.equal(templates.poses, expected)
    assert templates.rgb.shape == (26, 3, SIZE, SIZE) and templates.rgb.dtype == torch.uint8
    assert templates.depth.dtype == torch.float32 and templates.mask.dtype == torch.bool
    assert (templates.object_id, templates.level, templates.upper_hemisphere) == ("box", 0, True)
    # the object is on screen in every template; depths lie within a radius of the centre
    assert templates.mask.flatten(1).any(1).all()
    on = templates.depth[templates.mask]
    radius = 3 * obj.diameter
    assert on.min() > radius - obj.diameter / 2 and on.max() < radius + obj.diameter / 2
    assert (templates.depth[~templates.mask] == 0).all()
    assert (templates.rgb.permute(1, 0, 2, 3)[:, ~templates.mask] == 0).all()  # black backdrop


def test_the_object_origin_projects_to_the_image_centre(templates):
    # the box is centred at its origin: its mask's centroid sits near the principal point
    rows, cols = torch.nonzero(templates.mask[0], as_tuple=True)
    centre = torch.stack((cols.double().mean() + 0.5, rows.double().mean() + 0.5))
    assert torch.allclose(centre, templates.K[:2, 2], atol=1.0)


def test_save_and_load_round_trip_with_depth_to_a_tenth_of_a_millimetre(templates, tmp_path):
    folder = save_templates(templates, tmp_path)
    assert folder == tmp_path / "box" and template_folders(tmp_path) == [folder]
    names = {p.name for p in folder.iterdir()}
    assert {"000000.png", "000000_depth.png", "000000_mask.png", "poses.npy", "info.json"} <= names
    info = json.loads((folder / "info.json").read_text())
    assert info["depth_scale"] == 0.1 and info["image_size"] == [SIZE, SIZE]
    units = np.asarray(Image.open(folder / "000003_depth.png"))
    assert units.dtype == np.uint16
    assert units.max() == round(float(templates.depth[3].max()) * 10_000)  # 0.1 mm units
    loaded = load_templates(folder)
    assert torch.equal(loaded.rgb, templates.rgb) and torch.equal(loaded.mask, templates.mask)
    assert torch.equal(loaded.poses, templates.poses) and torch.equal(loaded.K, templates.K)
    assert (loaded.depth - templates.depth).abs().max() <= 0.5e-4 + 1e-6
    assert (loaded.object_id, loaded.level, loaded.upper_hemisphere) == ("box", 0, True)


def test_masks_default_to_positive_depth_without_mask_files(templates, tmp_path):
    folder = save_templates(templates, tmp_path)
    for path in folder.glob("*_mask.png"):
        path.unlink()
    assert torch.equal(load_templates(folder).mask, templates.mask)


def test_missing_or_malformed_folders_raise_one_line_naming_the_file(templates, tmp_path):
    with pytest.raises(ValueError, match=r"info\.json: missing") as missing:
        load_templates(tmp_path / "nothing")
    assert "\n" not in str(missing.value) and "vpog_render_templates" in str(missing.value)
    folder = save_templates(templates, tmp_path)
    (folder / "000004_depth.png").unlink()
    with pytest.raises(ValueError, match=r"000004_depth\.png"):
        load_templates(folder)
    np.save(folder / "poses.npy", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match=r"poses.npy: shape \(3, 4, 4\)"):
        read_template_info(folder)
    (folder / "info.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"info\.json: malformed"):
        read_template_info(folder)
    with pytest.raises(ValueError, match="no such templates directory"):
        template_folders(tmp_path / "absent")


def test_a_wrong_size_image_is_named(templates, tmp_path):
    folder = save_templates(templates, tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "000002.png")
    with pytest.raises(ValueError, match=r"000002.png: \(8, 8\) pixels"):
        load_templates(folder)
