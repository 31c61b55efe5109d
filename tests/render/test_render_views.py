"""Renderer extensions for multi-view methods: any number of colour channels (tile vs dense),
spherical-harmonics colour up to degree 3 (orthonormal basis, known answers, gradcheck) and
a batch of views (equal to one render per view)."""

from __future__ import annotations

import math

import pytest
import torch
from test_renderer import RENDERERS, TILE, assert_matches_dense, camera, random_scene

from fresnel.render import sh
from fresnel.render.dense import render_dense
from fresnel.render.views import render_views

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sphere(n: int) -> torch.Tensor:
    """n nearly uniform unit directions (Fibonacci lattice), float64."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1 - 2 * i / n
    phi = math.pi * (1 + math.sqrt(5)) * i
    r = (1 - z * z).sqrt()
    return torch.stack((r * phi.cos(), r * phi.sin(), z), -1)


def test_the_sh_basis_is_orthonormal_up_to_degree_3():
    values = sh.basis(3, sphere(200_000))  # (M, 16)
    gram = values.T @ values * (4 * math.pi / len(values))
    assert (gram - torch.eye(16, dtype=torch.float64)).abs().max() < 1e-3


def test_degree_0_is_the_colour_and_rgb_to_sh0_inverts_it():
    rgb = torch.tensor([[0.2, 0.5, 0.9]])
    coeffs = torch.zeros(1, 16, 3)
    coeffs[:, 0] = sh.rgb_to_sh0(rgb)
    coeffs[:, 1:] = 0.0
    for degree in range(4):
        colour = sh.view_colors(torch.tensor([[0.3, -0.2, 2.0]]), coeffs, degree)
        assert torch.allclose(colour, rgb, atol=1e-6)


@pytest.mark.parametrize("side", [1.0, -1.0])
def test_a_degree_1_coefficient_changes_colour_with_the_side_the_camera_sees_from(side):
    """Coefficient 3 multiplies -C1 * x: a camera on the +x side looks along -x."""
    coeffs = torch.zeros(1, 4, 1)
    coeffs[0, 3, 0] = 0.4
    viewmat = torch.eye(4)
    viewmat[:3, 3] = torch.tensor([-2.0 * side, 0.0, 0.0])  # camera centre at (2 * side, 0, 0)
    colour = sh.view_colors(torch.zeros(1, 3), coeffs, 1, viewmat)
    assert colour.item() == pytest.approx(0.5 + 0.4 * sh.C1 * side, abs=1e-6)


def test_using_fewer_bands_than_stored_ignores_the_higher_ones():
    g = torch.Generator().manual_seed(0)
    coeffs = torch.randn(5, 16, 3, generator=g)
    dirs = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=-1)
    assert torch.allclose(sh.evaluate(coeffs, dirs, 1), sh.evaluate(coeffs[:, :4], dirs, 1))
    with pytest.raises(ValueError, match="degree 3 needs 16 SH coefficients"):
        sh.evaluate(coeffs[:, :9], dirs, 3)
    with pytest.raises(ValueError, match=r"SH degree must be 0\.\.3"):
        sh.basis(4, dirs)


def test_sh_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    coeffs = torch.randn(4, 16, 2, generator=g, dtype=torch.float64, requires_grad=True)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, 3] = torch.tensor([0.1, 0.2, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda c, m: sh.evaluate(c, torch.nn.functional.normalize(m - sh.camera_center(viewmat, m), dim=-1), 3),
        (coeffs, means),
    )  # fmt: skip


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("channels", [1, 5, 32])
def test_tile_matches_dense_for_any_number_of_channels(renderer, channels):
    means, scales, quats, opacities, _ = random_scene(120, 4)
    features = torch.rand(120, channels, generator=torch.Generator().manual_seed(2))
    inputs = [means, scales, quats, opacities, features.requires_grad_()]
    background = torch.linspace(0, 1, channels)
    out, _ = assert_matches_dense(inputs, camera(40, 29), RENDERERS[renderer], background)
    assert out.image.shape == (channels, 29, 40)


def test_a_background_of_the_wrong_width_is_refused():
    inputs = random_scene(10, 5)
    with pytest.raises(ValueError, match="background has 3 entries for 5 channels"):
        TILE(*inputs[:4], torch.rand(10, 5), camera(8, 8), background=torch.zeros(3))


def orbit(angles: list[float], radius: float = 3.0) -> torch.Tensor:
    """World-to-camera matrices of cameras on a circle around the origin, looking at it."""
    mats = []
    for a in angles:
        centre = torch.tensor([radius * math.sin(a), 0.0, -radius * math.cos(a)])
        forward = -centre / radius
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        rot = torch.stack((right, torch.tensor([0.0, 1.0, 0.0]), forward))  # rows: camera axes
        mat = torch.eye(4)
        mat[:3, :3], mat[:3, 3] = rot, -rot @ centre
        mats.append(mat)
    return torch.stack(mats)


def scene_at_origin(seed: int):
    means, scales, quats, opacities, _ = random_scene(80, seed)
    means = (means.detach() - torch.tensor([0.0, 0.0, 2.5])) * 0.5
    return means, scales.detach(), quats.detach(), opacities.detach()


def test_a_batch_of_views_equals_one_render_per_view_with_sh_per_view():
    means, scales, quats, opacities = scene_at_origin(6)
    coeffs = torch.randn(80, 16, 3, generator=torch.Generator().manual_seed(3)) * 0.3
    viewmats, cam = orbit([0.0, 1.2, -2.0]), camera(24, 24)
    views = render_views(TILE, means, scales, quats, opacities, coeffs, [cam] * 3, viewmats,
                         sh_degree=3)  # fmt: skip
    assert views.images.shape == (3, 3, 24, 24) and views.radii.shape == (3, 80)
    assert (views.alphas.flatten(1).amax(1) > 0.5).all()  # every view sees the scene
    for v in range(3):
        colours = sh.view_colors(means, coeffs, 3, viewmats[v])
        single = render_dense(means, scales, quats, opacities, colours, cam, viewmats[v])
        assert (views.images[v] - single.image).abs().max() < 1e-5
        assert torch.equal(views.radii[v], single.radii)
    # the views differ: they see the scene from different sides, in different colours
    assert (views.images[0] - views.images[1]).abs().max() > 0.05


def test_views_of_fixed_colours_and_mismatched_batches():
    means, scales, quats, opacities = scene_at_origin(7)
    colours = torch.rand(80, 4)
    viewmats = orbit([0.3, 0.9])
    views = render_views(TILE, means, scales, quats, opacities, colours, [camera(16, 16)] * 2,
                         viewmats)  # fmt: skip
    assert views.images.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="2 cameras but 1 view matrices"):
        render_views(TILE, means, scales, quats, opacities, colours, [camera(16, 16)] * 2,
                     viewmats[:1])  # fmt: skip
    with pytest.raises(ValueError, match="share width and height"):
        render_views(TILE, means, scales, quats, opacities, colours,
                     [camera(16, 16), camera(8, 8)], viewmats)  # fmt: skip
