"""Decoder experiments: shapes, activations, layout, SAAG init, flags, ONNX parity, training."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fresnel.decoder import fresnel_zones as fz
from fresnel.decoder import gaussians as g
from fresnel.decoder.models import build_decoder, export_onnx, quat_multiply, saag_init

EXPERIMENTS = (1, 2, 3)
ALL_FLAGS = {"use_edge_aware": True, "use_phase_blending": True, "use_fresnel_zones": True}


def smooth_depth(batch=2, seed=0, step=True):
    """Random low-frequency relative depth at 256 x 256, optionally with a vertical step."""
    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 1, 6, 6, generator=gen)
    depth = F.interpolate(low, size=(256, 256), mode="bicubic", align_corners=False)[:, 0]
    if step:
        depth[:, :, 128:] -= 1.0
    return depth


def features(batch=2, seed=0):
    return torch.randn(batch, 37, 37, 384, generator=torch.Generator().manual_seed(seed))


def step_depth(batch=1):
    depth = torch.zeros(batch, 256, 256)
    depth[:, :, :128] = 1.0
    return depth


def decoder(experiment, k=4, seed=0, **flags):
    torch.manual_seed(seed)
    return build_decoder(experiment, k, **flags)


def twin(model, **flags):
    """The same weights with other flags."""
    other = build_decoder(model.experiment, model.gaussians_per_patch, **flags)
    other.load_state_dict(model.state_dict())
    return other


def quat_rotate_z(q):
    """Third column of R(q): where a Gaussian's local z (thin) axis points."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y)], -1)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
@pytest.mark.parametrize("k", [1, 4])
def test_shapes_and_activation_ranges(experiment, k):
    model = decoder(experiment, k, **ALL_FLAGS)
    with torch.no_grad():
        out = model(features(), smooth_depth())
    assert out.shape == (2, 37 * 37 * k, 14) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    p = g.unpack(out)
    assert p["scales"].min() > 0
    assert p["opacities"].min() >= 0 and p["opacities"].max() <= 1
    assert p["colors"].min() >= 0 and p["colors"].max() <= 1
    assert torch.allclose(p["quats"].norm(dim=-1), torch.ones(()), atol=1e-5)
    z = p["means"][..., 2]
    assert z.min() >= g.Z_NEAR - 0.25 and z.max() <= g.Z_FAR + 0.25


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_float32_output_under_autocast(experiment):
    model = decoder(experiment, 1, **ALL_FLAGS)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(features(1), smooth_depth(1))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_forward_stays_on_the_input_device(experiment):
    """On the meta device any tensor the forward creates on the CPU would raise."""
    model = decoder(experiment, 4, **ALL_FLAGS).to("meta")
    meta = {"device": "meta"}
    out = model(torch.empty(2, 37, 37, 384, **meta), torch.empty(2, 256, 256, **meta))
    assert out.device.type == "meta" and out.shape == (2, 37 * 37 * 4, 14)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_init_is_sensible_and_patch_major(experiment):
    k = 4
    with torch.no_grad():
        p = g.unpack(decoder(experiment, k)(features(), smooth_depth()))
    slope = p["means"][..., :2] / p["means"][..., 2:]
    patch = torch.arange(37 * 37 * k) // k
    row, col = patch // 37, patch % 37
    centre = torch.stack([col, row], -1).float().add(0.5).mul(2 / 37).sub(1) * g.TAN_HALF_FOV
    # every Gaussian of patch p lies inside patch p's pyramid, near its prior depth
    assert (slope - centre).abs().max() < 0.5 * g.ray_slope_per_patch()
    prior = g.subcell_z(smooth_depth(), 2)
    assert (p["means"][..., 2] - prior).abs().max() < 0.02
    subcell_width = g.ray_slope_per_patch() / 2 * p["means"][..., 2]
    ratio = p["scales"][..., :2] / subcell_width[..., None]
    assert ratio.min() > 0.3 and ratio.max() < 1.5  # about half a sub-cell
    assert (p["opacities"] - 0.5).abs().max() < 0.05
    assert (p["colors"] - 0.5).abs().max() < 0.05
    if experiment != 1:  # SAAG starts surface-aligned instead
        assert (p["quats"][..., 0] > 0.99).all()


def test_patch_rays_layout_and_intrinsics():
    rays = g.patch_rays(37, 2)
    assert rays.shape == (37 * 37 * 4, 3) and torch.all(rays[:, 2] == 1)
    fx, fy, cx, cy = g.intrinsics(64, 64)
    assert (fx, cx, cy) == (fy, 32.0, 32.0)
    assert fx == pytest.approx(64 / (2 * math.tan(math.radians(g.FOV_DEGREES) / 2)))
    # Gaussian patch*4 + sub: sub-cell (i, j) of patch (row, col) projects to its pixel centre
    patch, sub = 5 * 37 + 7, 3  # row 5, col 7, sub-cell (1, 1)
    u = fx * rays[patch * 4 + sub, 0] + cx
    v = fy * rays[patch * 4 + sub, 1] + cy
    assert u == pytest.approx((7 * 2 + 1 + 0.5) * 64 / 74, abs=1e-4)
    assert v == pytest.approx((5 * 2 + 1 + 0.5) * 64 / 74, abs=1e-4)


def test_depth_to_z_mapping():
    depth = torch.tensor([[[0.0, 1.0], [3.0, 4.0]]])
    z = g.depth_to_z(depth)
    assert torch.allclose(z, torch.tensor([[[2.5, 2.25], [1.75, 1.5]]]))  # larger = closer
    assert torch.all(g.depth_to_z(torch.full((1, 4, 4), 7.0)) == g.Z_MID)


def test_pack_unpack_and_select_per_patch():
    packed = torch.rand(2, 37 * 37 * 4, 14)
    assert torch.equal(g.pack(**g.unpack(packed)), packed)
    index = torch.arange(37 * 37 * 4, dtype=torch.float32).reshape(1, -1, 1).expand(2, -1, 14)
    for k_active in (1, 2, 4):
        picked = g.select_per_patch(index, k_active, 4)
        expected = (torch.arange(37 * 37)[:, None] * 4 + torch.arange(k_active)).flatten()
        assert torch.equal(picked[0, :, 0], expected.float())
    with pytest.raises(ValueError):
        g.select_per_patch(index, 5, 4)


def test_saag_at_init_equals_analytic_init():
    model = decoder(1, 4)
    depth = smooth_depth()
    init = saag_init(depth, 2)
    expected = g.pack(*(init[name] for name in g.FIELDS))
    with torch.no_grad():
        assert torch.equal(model(features(), depth), expected)


def test_saag_analytic_geometry():
    flat = saag_init(torch.full((1, 256, 256), 3.0), 2)  # no depth information: z = Z_MID
    assert torch.all(flat["means"][..., 2] == g.Z_MID)
    assert torch.allclose(flat["quats"], torch.tensor([1.0, 0, 0, 0]))
    width = g.Z_MID * g.ray_slope_per_patch() / 2
    assert torch.allclose(flat["scales"][0, 0], torch.tensor([0.5, 0.5, 0.1]) * width)
    # on a curved surface the thin axis is the normal: orthogonal to neighbour differences
    init = saag_init(smooth_depth(1, step=False), 1)
    points = init["means"].reshape(37, 37, 3)
    normal = quat_rotate_z(init["quats"]).reshape(37, 37, 3)[1:-1, 1:-1]
    du = F.normalize(points[1:-1, 2:] - points[1:-1, :-2], dim=-1)
    dv = F.normalize(points[2:, 1:-1] - points[:-2, 1:-1], dim=-1)
    assert (normal * du).sum(-1).abs().max() < 1e-4
    assert (normal * dv).sum(-1).abs().max() < 1e-4
    assert normal[..., 2].min() > 0


def test_quat_multiply_identity_and_composition():
    q = F.normalize(torch.randn(10, 4), dim=-1)
    assert torch.equal(quat_multiply(q, torch.tensor([1.0, 0, 0, 0]).expand(10, 4)), q)
    about_z = torch.tensor([math.cos(0.25 * math.pi), 0, 0, math.sin(0.25 * math.pi)])
    twice = quat_multiply(about_z, about_z)  # 90 + 90 degrees = 180 about z
    assert torch.allclose(twice, torch.tensor([0.0, 0, 0, 1]), atol=1e-6)


def test_invalid_options():
    for k in (2, 3, 8, 25):
        with pytest.raises(ValueError, match="square"):
            build_decoder(2, k)
    with pytest.raises(ValueError, match="experiment"):
        build_decoder(4)
    with pytest.raises(ValueError, match="edge_scale_factor"):
        build_decoder(2, edge_scale_factor=1.5)
    with pytest.raises(TypeError, match="unknown option"):
        build_decoder(2, no_such_flag=True)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_config_round_trip_and_size(experiment):
    model = decoder(experiment, 4, use_edge_aware=True, num_fresnel_zones=5)
    rebuilt = build_decoder(**model.config())
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config() == model.config()
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    assert model.num_gaussians == 37 * 37 * 4


def test_edge_aware_only_at_a_planted_step():
    base = decoder(2, 4)
    sharp = twin(base, use_edge_aware=True)
    depth = step_depth()
    with torch.no_grad():
        a, b = g.unpack(base(features(1), depth)), g.unpack(sharp(features(1), depth))
    edge = g.per_gaussian(fz.depth_edges(g.patch_depth(depth)), 4)
    on = edge > 0
    column = (torch.arange(37 * 37 * 4) // 4) % 37
    assert torch.equal(on[0], (column >= 17) & (column <= 19))  # the step's patch columns
    assert torch.equal(a["scales"][~on], b["scales"][~on])
    assert torch.equal(a["opacities"][~on], b["opacities"][~on])
    assert torch.all(b["scales"][on] < a["scales"][on])
    assert torch.all(b["opacities"][on] > a["opacities"][on])
    assert torch.allclose(b["scales"], a["scales"] * (1 - 0.5 * edge)[..., None])
    assert torch.allclose(b["opacities"], a["opacities"] + 0.2 * edge * (1 - a["opacities"]))
    assert torch.equal(a["means"], b["means"]) and torch.equal(a["colors"], b["colors"])


@pytest.mark.parametrize("experiment", [1, 3])
def test_phase_blending_formula(experiment):
    base = decoder(experiment, 1)
    with torch.no_grad():
        base.phase_offset.fill_(0.7)
    inputs = (features(1), smooth_depth(1))
    with torch.no_grad():
        a = g.unpack(base(*inputs))
        b = g.unpack(twin(base, use_phase_blending=True, phase_amplitude=0.5)(*inputs))
        same = twin(base, use_phase_blending=True, phase_amplitude=0.0)(*inputs)
    z, wavelength = a["means"][..., 2], (g.Z_FAR - g.Z_NEAR) / 8
    expected = a["opacities"] * (1 + 0.5 * torch.cos(2 * math.pi * z / wavelength + 0.7))
    assert torch.allclose(b["opacities"], expected.clamp(0, 1), atol=1e-6)
    assert (b["opacities"] - a["opacities"]).abs().max() > 0.1
    assert torch.equal(same, g.pack(*(a[name] for name in g.FIELDS)))


@pytest.mark.parametrize("experiment", [1, 2])
@pytest.mark.parametrize("zones", [8, 5])
def test_fresnel_zones_quantise_z(experiment, zones):
    model = decoder(experiment, 4, use_fresnel_zones=True, num_fresnel_zones=zones)
    if experiment == 2:  # silence the learned in-zone residual (output channel 2)
        with torch.no_grad():
            model.head.weight.view(4, 14, -1)[:, 2] = 0
            model.head.bias.view(4, 14)[:, 2] = 0
    depth = smooth_depth(1)
    with torch.no_grad():
        z = model(features(1), depth)[..., 2]
    levels = torch.unique(z)
    centres = g.Z_NEAR + (torch.arange(zones) + 0.5) * (g.Z_FAR - g.Z_NEAR) / zones
    assert len(levels) == zones  # the depth covers the full range, so all zones are used
    assert torch.allclose(levels, centres)
    assert (z - g.subcell_z(depth, 2)).abs().max() <= 0.5 * (g.Z_FAR - g.Z_NEAR) / zones + 1e-6


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_onnx_export_matches_onnxruntime(experiment, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    model = decoder(experiment, 4, **ALL_FLAGS)
    with torch.no_grad():  # move off the init so every branch carries signal
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    path = export_onnx(model, tmp_path / "decoder.onnx")
    assert [p.name for p in tmp_path.iterdir()] == ["decoder.onnx"]  # one self-contained file
    onnx.checker.check_model(str(path))
    feats, depth = features(2, seed=1), smooth_depth(2, seed=1)
    with torch.no_grad():
        expected = model(feats, depth).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["gaussians"], {"features": feats.numpy(), "depth": depth.numpy()})
    assert got.shape == expected.shape == (2, 37 * 37 * 4, 14)  # exported at batch 1
    assert np.abs(got - expected).max() < 1e-4


def blob_target(size=32):
    """A smooth warm blob on a cool background, (3, size, size) in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = torch.exp(-(xx**2 + (yy + 0.2) ** 2) / 0.3)
    return torch.stack([0.9 * blob + 0.05, 0.3 * blob + 0.1, 0.8 * (1 - blob) + 0.1])


def train_losses(model, steps=15, lr=5e-3, size=32, k_active=None):
    """L1 losses of Adam steps rendering one image's Gaussians against ``blob_target``."""
    from fresnel.render import Camera, TileBasedRenderer  # only these tests need the renderer

    camera = Camera(*g.intrinsics(size, size), width=size, height=size)
    renderer, target = TileBasedRenderer(), blob_target(size)
    feats, depth = features(1), smooth_depth(1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        packed = model(feats, depth)
        if k_active is not None:
            packed = g.select_per_patch(packed, k_active, model.gaussians_per_patch)
        image = renderer(**g.unpack(packed[0]), camera=camera).image
        loss = (image - target).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_experiment_trains(experiment):
    losses = train_losses(decoder(experiment, 1))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.6 * losses[0], losses


def test_trains_with_all_flags_and_progressive_subset():
    losses = train_losses(decoder(1, 4, **ALL_FLAGS), k_active=1)
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.6 * losses[0], losses
