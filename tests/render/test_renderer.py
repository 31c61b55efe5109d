"""Tile renderer vs dense reference, gradients, degenerate scenes, constants, memory bound."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fresnel.render import (
    Camera,
    TileBasedRenderer,
    build_tile_lists,
    inverse_2x2,
    project_gaussians,
)
from fresnel.render import constants as C
from fresnel.render.dense import render_dense

pytestmark = pytest.mark.usefixtures("one_torch_thread")


TILE = TileBasedRenderer()
# small chunks and groups, no cache: exercises chunk carry, tile groups and recomputation
CHUNKED = TileBasedRenderer(chunk_size=4, max_chunk_elements=4 * 256 * 2, cache_bytes=0)
# large groups, as on GPUs (MAX_CHUNK_ELEMENTS["default"])
LARGE = TileBasedRenderer(max_chunk_elements=2**22)
RENDERERS = {"default": TILE, "chunked": CHUNKED, "large": LARGE}


def camera(width: int, height: int, fov_scale: float = 1.1) -> Camera:
    f = fov_scale * max(width, height)
    return Camera(f, f, width / 2, height / 2, width, height)


def random_scene(n: int, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Gaussians in front of (and a few behind) the camera, of very different sizes."""
    g = torch.Generator().manual_seed(seed)
    z = 1.5 + 2 * torch.rand(n, generator=g)
    z[: max(n // 20, 1)] *= -1  # behind the camera
    xy = (torch.rand(n, 2, generator=g) - 0.5) * 1.2 * z.abs()[:, None]
    means = torch.cat((xy, z[:, None]), 1)
    scales = torch.exp(torch.randn(n, 3, generator=g) * 0.8 - 3.5)
    quats = torch.randn(n, 4, generator=g)
    opacities = torch.rand(n, generator=g)
    opacities[: max(n // 10, 1)] = 1.0  # exercises the ALPHA_MAX clamp
    colors = torch.rand(n, 3, generator=g)
    return [t.to(dtype).requires_grad_() for t in (means, scales, quats, opacities, colors)]


def loss_grads(out, inputs, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out.image, out.alpha)]
    loss = (out.image * weights[0]).sum() + (out.alpha * weights[1]).sum() + out.depth.sum()
    return torch.autograd.grad(loss, inputs, retain_graph=True)


def relative(a: torch.Tensor, b: torch.Tensor, tiny: float = 1e-6) -> float:
    """max |a - b| / max(max |b|, tiny): gradients below tiny are roundoff-sized zeros."""
    return float((a - b).abs().max() / max(float(b.abs().max()), tiny))


NAMES = ("means", "scales", "quats", "opacities", "colors")


def assert_matches_dense(inputs, cam, renderer=TILE, background=None, grads=True):
    out = renderer(*inputs, cam, background=background)
    ref = render_dense(*inputs, cam, background=background)
    for name in ("image", "alpha", "depth"):
        err = (getattr(out, name) - getattr(ref, name)).abs().max()
        assert err <= 1e-5, f"{name}: max abs error {err}"
    assert torch.equal(out.radii, ref.radii)
    if grads and len(inputs[0]):
        for name, gt, gd in zip(NAMES, loss_grads(out, inputs), loss_grads(ref, inputs),
                                strict=True):  # fmt: skip
            assert relative(gt, gd) <= 1e-4, f"grad {name}: relative error {relative(gt, gd)}"
    return out, ref


@pytest.mark.parametrize("renderer", RENDERERS)
@pytest.mark.parametrize("size", [(50, 37), (64, 64)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tile_matches_dense(renderer, size, seed):
    assert_matches_dense(random_scene(100 + 100 * seed, seed), camera(*size), RENDERERS[renderer])


def test_means2d_keeps_gradients():
    inputs, cam = random_scene(50, 3), camera(32, 32)
    outs = [TILE(*inputs, cam), render_dense(*inputs, cam)]
    for out in outs:
        (out.image.sum() + out.depth.sum()).backward()
    tile, dense = (o.means2d.grad for o in outs)
    assert tile is not None and tile.abs().max() > 0
    assert relative(tile, dense) <= 1e-4


# ----------------------------------------------------------------------------- degenerate


def test_huge_scales_cover_the_image():
    inputs = random_scene(60, 4)
    with torch.no_grad():
        inputs[1][:3] = 50.0  # three Gaussians far larger than the view
        inputs[0][:3, 2] = 2.0
    out, _ = assert_matches_dense(inputs, camera(40, 30))
    assert (out.radii[:3] > 40).all()


def test_tiny_scales():
    inputs = random_scene(60, 5)
    with torch.no_grad():
        inputs[1][:] = 1e-6
    out, _ = assert_matches_dense(inputs, camera(40, 30))
    radius = math.ceil(C.SIGMA_EXTENT * math.sqrt(C.EPS2D))
    assert set(out.radii.unique().tolist()) <= {0, radius}


def test_gaussians_behind_the_camera_are_culled():
    inputs = random_scene(40, 6)
    with torch.no_grad():
        inputs[0][:20, 2] = torch.linspace(-3, C.NEAR_PLANE * 0.99, 20)
    out, _ = assert_matches_dense(inputs, camera(32, 32))
    assert (out.radii[:20] == 0).all()
    for t, g in zip(inputs, loss_grads(out, inputs), strict=True):
        assert torch.isfinite(g).all()
        assert (g[:20] == 0).all(), t.shape


def test_all_behind_the_camera_gives_background():
    inputs = random_scene(10, 7)
    with torch.no_grad():
        inputs[0][:, 2] = -1.0
    background = torch.tensor([0.1, 0.2, 0.3])
    out, _ = assert_matches_dense(inputs, camera(20, 20), background=background)
    assert torch.allclose(out.image, background[:, None, None].expand(3, 20, 20))


def test_no_gaussians():
    inputs = [t[:0].detach().requires_grad_() for t in random_scene(5, 8)]
    background = torch.tensor([0.5, 0.25, 1.0])
    out, _ = assert_matches_dense(inputs, camera(20, 10), background=background)
    assert out.image.shape == (3, 10, 20) and out.means2d.shape == (0, 2)
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    assert torch.equal(out.image, background[:, None, None].expand(3, 10, 20))


@pytest.mark.parametrize("renderer", RENDERERS)
def test_one_pixel_image(renderer):
    inputs = random_scene(30, 9)
    with torch.no_grad():
        inputs[0][:, :2] *= 0.02  # near the optical axis: many land on the pixel, which stops
    out, _ = assert_matches_dense(inputs, camera(1, 1), RENDERERS[renderer])
    assert out.image.shape == (3, 1, 1) and out.alpha.item() > 0


def test_gaussian_exactly_on_a_tile_border():
    cam = Camera(16.0, 16.0, 16.0, 16.0, 32, 32)  # the optical axis hits the tile corner
    inputs = random_scene(20, 10)
    with torch.no_grad():
        inputs[0][0] = torch.tensor([0.0, 0.0, 2.0])
        inputs[1][0] = 0.2
    out, _ = assert_matches_dense(inputs, cam)
    assert out.means2d[0].tolist() == [16.0, 16.0]
    proj = project_gaussians(*inputs[:3], cam)
    lists = build_tile_lists(proj.means2d, proj.extents, proj.depths, proj.radii, cam, 16)
    tiles_with_it = [t for t in range(4) if 0 in _tile_list(lists, t)]
    assert tiles_with_it == [0, 1, 2, 3]


def _tile_list(lists, tile: int) -> list[int]:
    start = int(lists.starts[tile])
    return lists.ids[start : start + int(lists.counts[tile])].tolist()


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("renderer", [TILE, TileBasedRenderer(tile_size=4, chunk_size=2)])
def test_gradcheck_float64(renderer):
    g = torch.Generator().manual_seed(11)
    n = 5
    z = 2 + torch.rand(n, generator=g, dtype=torch.float64)
    xy = (torch.rand(n, 2, generator=g, dtype=torch.float64) - 0.5) * 0.8 * z[:, None]
    means = torch.cat((xy, z[:, None]), 1)
    scales = 0.1 + 0.15 * torch.rand(n, 3, generator=g, dtype=torch.float64)
    quats = torch.randn(n, 4, generator=g, dtype=torch.float64)
    opacities = 0.2 + 0.6 * torch.rand(n, generator=g, dtype=torch.float64)
    opacities[0] = 0.999  # clamped at its centre (> ALPHA_MAX; 1 + eps would be invalid)
    colors = torch.rand(n, 3, generator=g, dtype=torch.float64)
    inputs = [t.requires_grad_() for t in (means, scales, quats, opacities, colors)]
    cam = Camera(8.0, 8.0, 4.0, 4.0, 8, 8)

    def render(*x):
        out = renderer(*x, cam)
        return out.image, out.alpha, out.depth

    assert torch.autograd.gradcheck(render, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_quaternions_normalised_over_component_axis():
    inputs, cam = random_scene(40, 12), camera(32, 32)
    base = TILE(*inputs, cam).image
    quats = inputs[2].detach().clone()
    quats[0] *= 3  # one quaternion only: normalising over the wrong axis would change others
    assert torch.allclose(TILE(inputs[0], inputs[1], quats, *inputs[3:], cam).image, base,
                          atol=1e-6)  # fmt: skip
    assert torch.allclose(TILE(inputs[0], inputs[1], quats * 3, *inputs[3:], cam).image, base,
                          atol=1e-6)  # fmt: skip


def test_viewmat_is_a_world_to_camera_transform():
    inputs, cam = random_scene(40, 13), camera(32, 32)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    shift = torch.tensor([0.1, -0.2, 0.3])
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = rot, shift
    means, scales, quats, opacities, colors = (t.detach() for t in inputs)
    world = (means - shift) @ rot  # so that rot @ world + shift == means
    half = math.sqrt(0.5)
    q_inv = torch.tensor([half, 0.0, 0.0, -half]).expand_as(quats)  # rot^-1 as a quaternion
    world_quats = _quat_mul(q_inv, quats)
    out = TILE(world, scales, world_quats, opacities, colors, cam, viewmat=viewmat)
    ref = TILE(means, scales, quats, opacities, colors, cam)
    assert (out.image - ref.image).abs().max() <= 1e-5


def _quat_mul(p, q):
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack((pw * qw - px * qx - py * qy - pz * qz, pw * qx + px * qw + py * qz - pz * qy,
                        pw * qy - px * qz + py * qw + pz * qx, pw * qz + px * qy - py * qx + pz * qw),
                       -1)  # fmt: skip


def test_camera_scaled():
    cam = Camera(100.0, 90.0, 50.0, 40.0, 100, 80).scaled(50, 160)
    assert cam == Camera(50.0, 180.0, 25.0, 80.0, 50, 160)


def test_inverse_2x2_matches_linalg_inv():
    g = torch.Generator().manual_seed(14)
    a = torch.randn(1000, 2, 2, generator=g, dtype=torch.float64)
    spd = a @ a.transpose(1, 2) + 0.1 * torch.eye(2, dtype=torch.float64)
    assert torch.allclose(inverse_2x2(spd), torch.linalg.inv(spd), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("index", "row", "value", "message"),
    [
        (1, (2, 0), float("nan"), "scales has 1 NaN/Inf"),
        (0, (3, 1), float("inf"), "means has 1 NaN/Inf"),
        (1, (0, 2), -0.1, "scales has 1 negative"),
        (2, (4,), 0.0, "quats has 1 zero-norm"),
        (3, (1,), float("nan"), "opacities has 1 NaN/Inf"),
        (4, (1, 1), float("-inf"), "colors has 1 NaN/Inf"),
        (3, (2,), 1.5, r"opacities has 1 entries outside \[0, 1\]"),
        (3, (5,), -0.5, r"opacities has 1 entries outside \[0, 1\]"),
    ],
)
def test_invalid_inputs_raise(index, row, value, message):
    inputs = [t.detach().clone() for t in random_scene(10, 15)]
    inputs[index][row] = value
    for render in (TILE, render_dense):
        with pytest.raises(ValueError, match=message):
            render(*inputs, camera(16, 16))


# ----------------------------------------------------------------------------- memory bound


class LargestTensor(TorchDispatchMode):
    """Records the largest numel of any tensor an aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_n_by_h_by_w_elements():
    n, size = 2000, 64
    inputs = random_scene(n, 16)
    with torch.no_grad():
        inputs[1][:5] = 20.0  # five huge Gaussians in every tile
        inputs[0][:5] = torch.tensor([0.0, 0.0, 2.0])
        inputs[3][:5] = 0.3  # translucent: they do not end the tiles' lists early
    cam = camera(size, size)
    with LargestTensor() as probe:
        out = TILE(*inputs, cam)
        (out.image.sum() + out.alpha.sum()).backward()
    assert (out.radii[:5] > size).all()
    assert probe.largest < n * size * size // 10, probe.largest
    with LargestTensor() as control, torch.no_grad():  # the probe does see N*H*W tensors
        render_dense(*inputs, cam)
    assert control.largest >= n * size * size


# ----------------------------------------------------------------------------- constants


def single(z=2.0, scale=0.5, opacity=0.8, color=(1.0, 0.5, 0.25), quat=(1.0, 0.0, 0.0, 0.0)):
    """One Gaussian on the optical axis, as the five input tensors."""
    return [torch.tensor([[0.0, 0.0, z]]), torch.full((1, 3), scale), torch.tensor([quat]),
            torch.tensor([opacity]), torch.tensor([color])]  # fmt: skip


def pixel_camera(width=8, height=9, col=3, row=4) -> Camera:
    """A camera whose optical axis passes through the centre of pixel (col, row)."""
    return Camera(8.0, 8.0, col + C.PIXEL_CENTER, row + C.PIXEL_CENTER, width, height)


def sigma_scale(var2d: float, cam: Camera, z: float = 2.0) -> float:
    """World scale of an on-axis isotropic Gaussian whose 2D variance is var2d pixels^2."""
    return math.sqrt(var2d - C.EPS2D) * z / cam.fx


def test_pixel_center():
    cam = pixel_camera()
    out = TILE(*single(opacity=0.7), cam)
    alpha = out.alpha
    assert alpha[4, 3] == pytest.approx(0.7, abs=1e-7)  # evaluated exactly at the mean
    assert alpha.argmax() == 4 * cam.width + 3
    assert alpha[4, 2] == alpha[4, 4] and alpha[3, 3] == alpha[5, 3]  # symmetric neighbours


def test_alpha_max():
    out = TILE(*single(opacity=1.0), pixel_camera())
    assert out.alpha[4, 3].item() == pytest.approx(C.ALPHA_MAX)
    assert out.image[:, 4, 3].tolist() == pytest.approx([C.ALPHA_MAX * c for c in (1, 0.5, 0.25)])


def test_alpha_min():
    cam = pixel_camera()
    below, above = (TILE(*single(opacity=f * C.ALPHA_MIN), cam) for f in (0.99, 1.01))
    assert (below.alpha == 0).all() and (below.image == 0).all()
    assert above.alpha[4, 3].item() == pytest.approx(1.01 * C.ALPHA_MIN, rel=1e-5)
    assert (above.alpha > 0).sum() == 1  # its neighbours fall below ALPHA_MIN


def test_transmittance_min_stops_before_the_gaussian_that_crosses_it():
    # five Gaussians on one pixel, front to back, opacities 0.95 x 4 then 0.1
    colors = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 1.0], [1.0, 1, 1]])
    means = torch.tensor([[0.0, 0.0, 1.0 + i] for i in range(5)], dtype=torch.float64)
    opacities = torch.tensor([0.95, 0.95, 0.95, 0.95, 0.1], dtype=torch.float64)
    inputs = [means, torch.full((5, 3), 1e-7, dtype=torch.float64),
              torch.tensor([[1.0, 0, 0, 0]] * 5, dtype=torch.float64), opacities,
              colors.double()]  # fmt: skip
    renderers = (TILE, TileBasedRenderer(chunk_size=1), TileBasedRenderer(chunk_size=2))
    for render in (*renderers, render_dense):
        out = render(*inputs, pixel_camera())
        # 1st..3rd included (T = 0.05^3 = 1.25e-4 >= 1e-4); the 4th would take T to 6.25e-6
        # < 1e-4, so the pixel stops there: neither it nor the 5th (which alone would leave
        # T = 1.125e-4) contributes
        expected = [0.95, 0.05 * 0.95, 0.05**2 * 0.95]
        assert out.image[:, 4, 3].tolist() == pytest.approx(expected, abs=1e-12)
        assert out.alpha[4, 3].item() == pytest.approx(1 - 0.05**3, abs=1e-12)
        depth = sum(w * z for w, z in zip(expected, (1, 2, 3), strict=True))
        assert out.depth[4, 3].item() == pytest.approx(depth, abs=1e-12)


def test_eps2d_widens_a_tiny_gaussian():
    out = TILE(*single(scale=1e-6, opacity=0.5), pixel_camera())
    # 2D covariance is EPS2D * I: one pixel away alpha = 0.5 exp(-0.5 / EPS2D)
    assert out.alpha[4, 4].item() == pytest.approx(0.5 * math.exp(-0.5 / C.EPS2D), rel=1e-5)
    assert out.radii.item() == math.ceil(C.SIGMA_EXTENT * math.sqrt(C.EPS2D))


def test_near_plane_culls():
    cam = pixel_camera()
    inside, outside = (TILE(*single(z=C.NEAR_PLANE * f, scale=1e-5), cam) for f in (1.1, 0.9))
    assert inside.radii.item() > 0 and inside.alpha.max() > 0
    assert outside.radii.item() == 0 and (outside.alpha == 0).all()


def test_gaussians_whose_box_misses_the_image_are_culled():
    cam = pixel_camera(width=8, height=8, col=3, row=3)
    inputs = [t.repeat(3, 1) if t.dim() == 2 else t.repeat(3) for t in single(scale=0.05)]
    # 2D variance 0.34 px^2, radius 2: centres 1.5 px (box overlaps) and 5.5 px left of it
    inputs[0][:, 0] = torch.tensor([0.0, -5.0, -9.0]) * 2.0 / cam.fx
    out = TILE(*inputs, cam)
    assert out.radii.tolist() == [2, 2, 0]
    assert_matches_dense([t.requires_grad_() for t in inputs], cam)


def test_inference_without_gradients():
    inputs, cam = [t.detach() for t in random_scene(80, 18)], camera(40, 30)
    with torch.no_grad():
        out, ref = TILE(*inputs, cam), render_dense(*inputs, cam)
    assert not out.image.requires_grad
    assert (out.image - ref.image).abs().max() <= 1e-5
    graded = render_dense(*[t.clone().requires_grad_() for t in inputs], cam)
    assert torch.equal(graded.image.detach(), ref.image)  # in-place path == autograd path


def test_sigma_extent_truncates():
    cam = pixel_camera(width=16, height=9, col=6)
    var = 9 / 9.6  # pixel 3 columns away sits at 3.1 sigma, pixel 2 away at 2.07 sigma
    out = TILE(*single(scale=sigma_scale(var, cam), opacity=1.0), cam)
    untruncated = math.exp(-0.5 * 9 / var)
    assert untruncated > C.ALPHA_MIN  # so only the truncation removes it
    assert out.alpha[4, 9].item() == 0 and out.alpha[4, 3].item() == 0
    assert out.alpha[4, 8].item() == pytest.approx(math.exp(-0.5 * 4 / var), rel=1e-5)


def test_tile_size_sets_the_tile_grid_not_the_image():
    cam, inputs = camera(50, 37), random_scene(80, 17)
    proj = project_gaussians(*inputs[:3], cam)
    lists = build_tile_lists(proj.means2d, proj.extents, proj.depths, proj.radii, cam,
                             C.TILE_SIZE)  # fmt: skip
    assert (lists.tiles_x, lists.tiles_y) == (4, 3) == (math.ceil(50 / 16), math.ceil(37 / 16))
    a = TILE(*inputs, cam).image
    b = TileBasedRenderer(tile_size=8)(*inputs, cam).image
    assert (a - b).abs().max() <= 1e-6


def test_background():
    cam = pixel_camera()
    black = TILE(*single(opacity=0.6, scale=0.05), cam)
    assert C.BACKGROUND == (0.0, 0.0, 0.0)
    empty = black.alpha == 0
    assert empty.any() and (black.image[:, empty] == 0).all()
    bg = torch.tensor([0.2, 0.4, 0.6])
    out = TILE(*single(opacity=0.6, scale=0.05), cam, background=bg)
    assert torch.allclose(out.image[:, empty], bg[:, None].expand(3, int(empty.sum())))
    expected = black.image + (1 - black.alpha) * bg[:, None, None]
    assert torch.allclose(out.image, expected, atol=1e-7)
