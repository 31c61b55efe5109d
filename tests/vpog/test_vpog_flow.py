"""Known-answer tests of the VPOG flow labels on analytic scenes of flat rectangles.

Every scene is 96 x 96 pixels with 16-pixel patches (a 6 x 6 grid), focal length 120 px and the
principal point at the image centre. The object's base is the square |x|, |y| <= 32 / 120 in the
object plane z = 0; one metre in front of the query camera it covers pixels 16..79, i.e. patch
rows and columns 1..4 exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

from fresnel.vpog.flow import BACKGROUND, compute_flow_labels

SIZE, PS, FOCAL = 96, 16, 120.0
GRID = SIZE // PS
HALF = 32 / FOCAL
K = torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1]], dtype=torch.float64)


@dataclass
class Rectangle:
    """A flat rectangle in object coordinates: centre, two orthogonal unit axes, half sizes."""

    centre: tuple[float, float, float]
    half_x: float
    half_y: float
    axis_x: tuple[float, float, float] = (1.0, 0.0, 0.0)
    axis_y: tuple[float, float, float] = (0.0, 1.0, 0.0)


BASE = Rectangle((0.0, 0.0, 0.0), HALF, HALF)


def pose(translation=(0.0, 0.0, 1.0), rotation=None) -> torch.Tensor:
    T = torch.eye(4, dtype=torch.float64)
    if rotation is not None:
        T[:3, :3] = rotation
    T[:3, 3] = torch.tensor(translation, dtype=torch.float64)
    return T


def rotation_z(degrees: float) -> torch.Tensor:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=torch.float64)


def vector(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def render(rectangles, K, T, size=SIZE):
    """A z-buffer of rectangles: (depth, mask), depth the nearest hit's camera z, 0 if none."""
    v, u = torch.meshgrid(
        torch.arange(size, dtype=torch.float64) + 0.5,
        torch.arange(size, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    rays = torch.stack((u, v, torch.ones_like(u)), dim=-1) @ torch.linalg.inv(K).T  # z = 1
    R, t = T[:3, :3], T[:3, 3]
    depth = torch.full((size, size), torch.inf, dtype=torch.float64)
    for rect in rectangles:
        axis_x, axis_y = R @ vector(rect.axis_x), R @ vector(rect.axis_y)
        normal = torch.linalg.cross(axis_x, axis_y)
        centre = R @ vector(rect.centre) + t
        z = (centre @ normal) / (rays @ normal)  # ray parameter = camera z, since ray z = 1
        offset = rays * z[..., None] - centre
        hit = (z > 0) & ((offset @ axis_x).abs() <= rect.half_x)
        hit &= (offset @ axis_y).abs() <= rect.half_y
        depth = torch.where(hit, torch.minimum(depth, z), depth)
    mask = torch.isfinite(depth)
    return torch.where(mask, depth, 0.0), mask


def flow_between(T_q, T_t, rectangles=(BASE,), K_q=K, K_t=K, **kwargs):
    query_depth, query_mask = render(rectangles, K_q, T_q)
    tmpl_depth, tmpl_mask = render(rectangles, K_t, T_t)
    return compute_flow_labels(
        query_depth, query_mask, K_q, T_q, tmpl_depth, tmpl_mask, K_t, T_t, PS, **kwargs
    )


def own_index() -> torch.Tensor:
    return torch.arange(GRID * GRID).reshape(GRID, GRID)


def local_offsets() -> torch.Tensor:
    """(ps, ps, 2) (x, y) of each pixel centre of a patch relative to its centre, patch units."""
    centres = (torch.arange(PS, dtype=torch.float64) + 0.5 - PS / 2) / PS
    y, x = torch.meshgrid(centres, centres, indexing="ij")
    return torch.stack((x, y), dim=-1)


FOREGROUND_PATCHES = torch.zeros(GRID, GRID, dtype=torch.bool)
FOREGROUND_PATCHES[1:5, 1:5] = True


def test_identical_pair_has_zero_flow_and_its_own_labels():
    tilted = rotation_z(30) @ torch.tensor(
        [[1, 0, 0], [0, 0.8, -0.6], [0, 0.6, 0.8]], dtype=torch.float64
    )
    for T in (pose(), pose((0.02, -0.01, 1.1), tilted)):
        query_depth, query_mask = render([BASE], K, T)
        flow = compute_flow_labels(query_depth, query_mask, K, T, query_depth, query_mask, K, T)
        foreground = query_mask & (query_depth > 0)
        assert foreground.sum() > 1000

        assert torch.equal(flow.pixel_visible, foreground)
        torch.testing.assert_close(
            flow.pixel_flow[foreground], torch.zeros(int(foreground.sum()), 2).double()
        )
        assert flow.pixel_flow[~foreground].isnan().all()
        assert flow.unseen_label == GRID * GRID

    flow = flow_between(pose(), pose())
    assert torch.equal(flow.labels, torch.where(FOREGROUND_PATCHES, own_index(), BACKGROUND))
    assert torch.equal(flow.patch_visibility, FOREGROUND_PATCHES.double())
    assert flow.dense_visible[FOREGROUND_PATCHES].all()
    torch.testing.assert_close(
        flow.dense_flow[FOREGROUND_PATCHES], local_offsets().expand(16, PS, PS, 2)
    )


@pytest.mark.parametrize(("shift_x", "shift_y"), [(1, 0), (-1, 0), (0, 1), (0, -1)])
def test_one_patch_camera_translation_shifts_labels_by_one_patch(shift_x, shift_y):
    # The camera moves by -d, so the object moves by +d in its frame: +fx * d / Z pixels.
    step = PS / FOCAL
    flow = flow_between(pose(), pose((shift_x * step, shift_y * step, 1.0)))

    expected = own_index() + shift_y * GRID + shift_x
    assert torch.equal(flow.labels, torch.where(FOREGROUND_PATCHES, expected, BACKGROUND))
    shift = torch.tensor([shift_x, shift_y], dtype=torch.float64)
    torch.testing.assert_close(flow.patch_flow[FOREGROUND_PATCHES], shift.expand(16, 2))
    visible = flow.pixel_visible
    torch.testing.assert_close(flow.pixel_flow[visible], shift.expand(int(visible.sum()), 2))
    residual = flow.dense_flow[FOREGROUND_PATCHES] - local_offsets()
    torch.testing.assert_close(residual, torch.zeros_like(residual))
    assert torch.equal(flow.patch_visibility, FOREGROUND_PATCHES.double())


def test_float32_inputs_give_float32_outputs_with_the_same_labels():
    step = PS / FOCAL
    T_q, T_t = pose(), pose((step, 0.0, 1.0))
    query_depth, query_mask = render([BASE], K, T_q)
    tmpl_depth, tmpl_mask = render([BASE], K, T_t)
    exact = compute_flow_labels(query_depth, query_mask, K, T_q, tmpl_depth, tmpl_mask, K, T_t)
    single = compute_flow_labels(
        *(x.float() for x in (query_depth, query_mask, K, T_q, tmpl_depth, tmpl_mask, K, T_t))
    )

    assert single.pixel_flow.dtype == single.dense_flow.dtype == torch.float32
    assert torch.equal(single.labels, exact.labels)
    torch.testing.assert_close(single.patch_flow, exact.patch_flow.float(), equal_nan=True)


def test_occluded_and_out_of_image_points_are_unseen():
    # A plate at object z = -0.5 (camera depth 0.5) right of the base: outside the query image,
    # but the template camera, 0.4 m to the right (object moves left), sees it cover u >= 12
    # while the base moves 48 px left: query columns j < 48 leave the image, columns 48..59
    # stay visible, columns 60..79 fall behind the plate.
    plate = Rectangle((0.35, 0.0, -0.5), 0.1, 0.3)
    flow = flow_between(pose(), pose((-0.4, 0.0, 1.0)), rectangles=(BASE, plate))
    unseen = flow.unseen_label

    expected_visible = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected_visible[16:80, 48:60] = True
    assert torch.equal(flow.pixel_visible, expected_visible)
    foreground = flow.pixel_flow[..., 0].isfinite()
    assert foreground[16:80, 16:80].all() and foreground.sum() == 64 * 64
    torch.testing.assert_close(
        flow.pixel_flow[foreground], torch.tensor([-3.0, 0.0]).double().expand(64 * 64, 2)
    )

    rows = torch.arange(1, 5)
    assert (flow.labels[1:5, 1:3] == unseen).all()  # projects left of the template image
    assert torch.equal(flow.labels[1:5, 3], rows * GRID + 0)  # anchor u = 56.5 -> 8.5
    assert (flow.labels[1:5, 4] == unseen).all()  # anchor behind the plate (depth test)
    torch.testing.assert_close(flow.patch_visibility[1:5, 3], torch.full((4,), 12 / 16).double())
    assert (flow.patch_visibility[1:5, [1, 2, 4]] == 0).all()
    assert flow.dense_flow[1:5, 4].isnan().all()


@pytest.mark.parametrize(
    ("distance", "factor", "visible"),
    [(2.0, 1.0075, True), (0.5, 1.015, False)],  # a 1.5 cm and a 7.5 mm depth error
)
def test_depth_tolerance_is_relative_to_the_projected_depth(distance, factor, visible):
    T = pose((0.0, 0.0, distance))
    query_depth, query_mask = render([BASE], K, T)
    args = (query_depth, query_mask, K, T, query_depth * factor, query_mask, K, T)

    flow = compute_flow_labels(*args, depth_tolerance=0.01)
    assert torch.equal(flow.pixel_visible, query_mask & visible)
    assert not compute_flow_labels(*args, depth_tolerance=0.003).pixel_visible.any()


def pixel_rectangle(left: float, top: float, right: float, bottom: float) -> Rectangle:
    """The object rectangle covering the given pixel edges one metre before the query camera."""
    x0, x1 = (left - SIZE / 2) / FOCAL, (right - SIZE / 2) / FOCAL
    y0, y1 = (top - SIZE / 2) / FOCAL, (bottom - SIZE / 2) / FOCAL
    return Rectangle(((x0 + x1) / 2, (y0 + y1) / 2, 0.0), (x1 - x0) / 2, (y1 - y0) / 2)


def test_background_patches_are_labelled_by_their_anchor_pixel():
    # Foreground columns 25..79 and rows 24..79. Patch column 1 (pixels 16..31) has 7
    # foreground columns but its anchor, column 24, is background; patch row 1 has only 8
    # foreground rows but its anchor, row 24, is foreground.
    flow = flow_between(pose(), pose(), rectangles=(pixel_rectangle(25, 24, 80, 80),))

    expected = torch.full((GRID, GRID), BACKGROUND)
    expected[1:5, 2:5] = own_index()[1:5, 2:5]
    assert torch.equal(flow.labels, expected)
    assert flow.pixel_visible[24:80, 25:32].all() and not flow.pixel_visible[:24].any()
    assert flow.patch_flow[flow.labels == BACKGROUND].isnan().all()
    assert (flow.patch_visibility[flow.labels == BACKGROUND] == 0).all()
    assert (flow.patch_visibility[flow.labels >= 0] == 1).all()


def test_half_patch_shift_keeps_half_of_each_patch_in_its_buddy():
    # +8 px: anchor column 16c + 8 lands on 16c + 16, so the buddy is column c + 1, and
    # only the right half of each query patch (local columns 8..15) lands inside it.
    flow = flow_between(pose(), pose((PS / 2 / FOCAL, 0.0, 1.0)))

    expected = torch.where(FOREGROUND_PATCHES, own_index() + 1, BACKGROUND)
    assert torch.equal(flow.labels, expected)
    torch.testing.assert_close(
        flow.patch_flow[FOREGROUND_PATCHES], torch.tensor([0.5, 0.0]).double().expand(16, 2)
    )
    assert torch.equal(flow.patch_visibility, FOREGROUND_PATCHES.double() / 2)
    right_half = torch.zeros(PS, PS, dtype=torch.bool)
    right_half[:, 8:] = True
    assert torch.equal(flow.dense_visible[FOREGROUND_PATCHES], right_half.expand(16, PS, PS))
    shifted = local_offsets() - torch.tensor([0.5, 0.0]).double()
    torch.testing.assert_close(flow.dense_flow[FOREGROUND_PATCHES], shifted.expand(16, PS, PS, 2))


def test_zero_depth_is_background_and_the_template_mask_is_required():
    query_depth, query_mask = render([BASE], K, pose())
    tmpl_depth, tmpl_mask = query_depth.clone(), query_mask.clone()
    query_depth[16:32, 16:32] = 0  # mask set, no depth: patch (1, 1) is background
    tmpl_mask[:, 64:] = False  # depth kept, mask cleared: patch column 4 is unseen
    flow = compute_flow_labels(query_depth, query_mask, K, pose(), tmpl_depth, tmpl_mask, K, pose())

    assert flow.pixel_flow[16:32, 16:32].isnan().all()
    expected_visible = query_mask & (query_depth > 0)
    expected_visible[:, 64:] = False
    assert torch.equal(flow.pixel_visible, expected_visible)
    assert flow.labels[1, 1] == BACKGROUND
    assert (flow.labels[1:5, 4] == flow.unseen_label).all()
    assert torch.equal(flow.labels[2:5, 1:4], own_index()[2:5, 1:4])


def test_rotation_about_the_optical_axis_rotates_the_patch_grid():
    # The template camera turned by 90 degrees: pixel (i, j) -> template pixel (j, 95 - i),
    # so patch (r, c) -> template patch (c, 5 - r).
    flow = flow_between(pose(), pose(rotation=rotation_z(90)))

    assert flow.labels[1, 1] == 1 * GRID + 4
    assert flow.labels[1, 4] == 4 * GRID + 4
    assert flow.labels[4, 1] == 1 * GRID + 1
    assert flow.labels[2, 3] == 3 * GRID + 3
    r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    expected = torch.where(FOREGROUND_PATCHES, c * GRID + (GRID - 1 - r), BACKGROUND)
    assert torch.equal(flow.labels, expected)
    assert torch.equal(flow.patch_visibility, FOREGROUND_PATCHES.double())
    local = local_offsets()
    rotated = torch.stack((-local[..., 1], local[..., 0]), dim=-1)
    torch.testing.assert_close(flow.dense_flow[FOREGROUND_PATCHES], rotated.expand(16, PS, PS, 2))


def test_a_template_with_twice_the_focal_length_doubles_offsets_from_the_centre():
    K_zoom = K.clone()
    K_zoom[:2, :2] *= 2
    flow = flow_between(pose(), pose(), K_t=K_zoom)

    centres = torch.arange(SIZE, dtype=torch.float64) + 0.5 - SIZE / 2
    expected_x = (centres / PS).expand(SIZE, SIZE)
    foreground = flow.pixel_flow[..., 0].isfinite()
    torch.testing.assert_close(flow.pixel_flow[..., 0][foreground], expected_x[foreground])
    # Only pixels 24..71 stay inside the zoomed template: 2 * (24.5 - 48) + 48 = 1 > 0.
    expected_visible = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    expected_visible[24:72, 24:72] = True
    assert torch.equal(flow.pixel_visible, expected_visible)


def test_a_larger_template_uses_its_own_patch_grid():
    # A 128 x 128 template (8 x 8 patches) centred on the same axis: everything moves by one
    # patch right and down, and the unseen label is 64.
    K_large = K.clone()
    K_large[:2, 2] = 64.0
    query_depth, query_mask = render([BASE], K, pose())
    tmpl_depth, tmpl_mask = render([BASE], K_large, pose(), size=128)
    flow = compute_flow_labels(
        query_depth, query_mask, K, pose(), tmpl_depth, tmpl_mask, K_large, pose()
    )

    assert flow.unseen_label == 64
    r, c = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    assert torch.equal(flow.labels, torch.where(FOREGROUND_PATCHES, (r + 1) * 8 + c + 1, -1))
    assert torch.equal(flow.patch_visibility, FOREGROUND_PATCHES.double())


def test_sizes_that_are_not_multiples_of_the_patch_size_are_refused():
    depth, mask = torch.ones(40, 48), torch.ones(40, 48, dtype=torch.bool)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        compute_flow_labels(depth, mask, K, pose(), depth, mask, K, pose())
