"""Densification statistics under AMP, the selection rules, and the colour calibration."""

import pytest
import torch

from fresnel.avatars.calibration import ColorCalibration
from fresnel.avatars.densify import GradientStats, classic, loss_scale, percentile
from fresnel.device import Target
from fresnel.render import Camera, TileBasedRenderer
from fresnel.training.amp import Amp

CPU = Target("cpu", "cpu", None, False)
# AMP with a GradScaler on the CPU; the forward is run without autocast so that the only
# difference between the two runs is the loss scaling.
CPU_SCALED = Target("cpu", "cpu", "float16", True)


def tiny_scene():
    g = torch.Generator().manual_seed(0)
    n = 6
    means = torch.cat((torch.rand(n, 2, generator=g) - 0.5, 3 + torch.rand(n, 1, generator=g)), 1)
    means[-1, 2] = -1.0  # behind the camera: never visible
    params = {
        "means": means,
        "scales": 0.05 + 0.1 * torch.rand(n, 3, generator=g),
        "quats": torch.randn(n, 4, generator=g),
        "opacities": 0.3 + 0.6 * torch.rand(n, generator=g),
        "colors": torch.rand(n, 3, generator=g),
    }
    params = {k: v.requires_grad_() for k, v in params.items()}
    target = torch.rand(3, 24, 32, generator=g)
    return params, target


def render_loss(params, target):
    camera = Camera(fx=30.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)
    out = TileBasedRenderer()(**params, camera=camera)
    return (out.image - target).abs().mean(), out


def stats_after_backward(target_kind: Target):
    """One step as a family's train loop does it: amp.backward, read stats, amp.apply."""
    params, target = tiny_scene()
    amp = Amp(target_kind, enabled=True)
    optimizer = torch.optim.SGD(list(params.values()), lr=0.0)
    loss, out = render_loss(params, target)
    amp.backward(loss, optimizer)
    scale = loss_scale(amp)
    fixed, fork = GradientStats(6), GradientStats(6)
    assert fixed.add(out.means2d.grad, out.radii, scale)
    fork.add(out.means2d.grad, out.radii)  # the fork: the scaled gradient read as it is
    param_grads = {k: v.grad.clone() for k, v in params.items()}
    amp.apply(optimizer)
    return fixed, fork, scale, param_grads, out.radii


def test_amp_statistics_equal_plain_ones():
    plain, _, scale_plain, grads_plain, radii = stats_after_backward(CPU)
    scaled, fork, scale, grads_scaled, _ = stats_after_backward(CPU_SCALED)
    assert scale_plain == 1.0 and scale == 2.0**16
    assert (radii[:-1] > 0).all() and radii[-1] == 0
    assert plain.mean()[:-1].gt(0).all()
    torch.testing.assert_close(scaled.mean(), plain.mean(), rtol=1e-5, atol=0)
    assert torch.equal(scaled.count, plain.count) and torch.equal(scaled.max_radii, plain.max_radii)
    # Amp.backward unscales the optimiser's parameters, not means2d: the fork's reading is off
    # by the scale, so it fails the comparison above.
    for name in grads_plain:
        torch.testing.assert_close(grads_scaled[name], grads_plain[name], rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(fork.mean(), plain.mean() * 2.0**16, rtol=1e-5, atol=0)
    with pytest.raises(AssertionError):
        torch.testing.assert_close(fork.mean(), plain.mean(), rtol=1e-5, atol=0)


def test_scaled_backward_with_a_bare_grad_scaler():
    params, target = tiny_scene()
    loss, out = render_loss(params, target)
    loss.backward()
    plain = GradientStats(6)
    plain.add(out.means2d.grad, out.radii)

    params, target = tiny_scene()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16, enabled=True)
    loss, out = render_loss(params, target)
    scaler.scale(loss).backward()
    scaled = GradientStats(6)
    scaled.add(out.means2d.grad, out.radii, loss_scale(scaler))
    torch.testing.assert_close(scaled.grad_sum, plain.grad_sum, rtol=1e-5, atol=0)


def test_accumulation_visibility_views_and_overflow():
    stats = GradientStats(3)
    grad = torch.tensor([[3.0, 4.0], [1.0, 0.0], [7.0, 7.0]])
    assert stats.add(grad * 8, torch.tensor([2, 5, 0]), loss_scale=8.0)
    views = torch.stack((grad, 2 * grad))  # two views: (V, n, 2), (V, n)
    assert stats.add(views, torch.tensor([[1, 0, 0], [4, 3, 0]]))
    torch.testing.assert_close(stats.grad_sum, torch.tensor([5.0 + 5 + 10, 1 + 2, 0]))
    assert stats.count.tolist() == [3, 2, 0]
    assert stats.max_radii.tolist() == [4.0, 5.0, 0.0]
    torch.testing.assert_close(stats.mean(), torch.tensor([20 / 3, 1.5, 0.0]))
    assert stats.visible().tolist() == [True, True, False]
    # An overflowed view (inf on a visible row) is skipped; inf on an invisible row is not read.
    before = stats.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    assert not stats.add(torch.full((3, 2), float("inf")), torch.tensor([1, 0, 0]))
    assert all(torch.equal(before[k], v) for k, v in stats.state_dict().items())
    assert stats.add(torch.tensor([[0.0, 0.0], [0.0, 0.0], [float("nan")] * 2]),
                     torch.tensor([1, 1, 0]))  # fmt: skip
    # 3DGS units: dL/dNDC = dL/dpixel * (W/2, H/2)
    ndc = GradientStats(1)
    ndc.add(torch.tensor([[1.0, 1.0]]), torch.tensor([1]), image_size=(8, 6))
    torch.testing.assert_close(ndc.grad_sum, torch.tensor([5.0]))
    with pytest.raises(ValueError, match=r"means2d\.grad is None"):
        stats.add(None, torch.tensor([1, 1, 1]))
    with pytest.raises(ValueError, match="loss_scale"):
        stats.add(grad, torch.tensor([1, 1, 1]), loss_scale=0.0)
    with pytest.raises(ValueError, match="expected"):
        stats.add(grad[:2], torch.tensor([1, 1]))


def test_keep_and_extend_follow_clone_and_split():
    stats = GradientStats(4)
    stats.add(torch.tensor([[1.0, 0], [2, 0], [3, 0], [4, 0]]), torch.tensor([1, 2, 3, 4]))
    # clone rows 1, 3: copies appended with zero statistics
    stats.extend(2)
    assert (
        stats.grad_sum.tolist() == [1, 2, 3, 4, 0, 0] and stats.count.tolist() == [1] * 4 + [0] * 2
    )
    # split rows 0, 2 into 2 children each: parents removed, children appended
    split = torch.tensor([True, False, True, False, False, False])
    stats.keep(~split)
    stats.extend(2 * int(split.sum()))
    assert stats.grad_sum.tolist() == [2, 4, 0, 0, 0, 0, 0, 0]
    assert stats.max_radii.tolist() == [2, 4, 0, 0, 0, 0, 0, 0] and len(stats) == 8
    with pytest.raises(ValueError, match="mask"):
        stats.keep(torch.ones(3, dtype=torch.bool))
    stats.reset()
    assert len(stats) == 8 and stats.grad_sum.sum() == 0 and stats.count.sum() == 0
    stats.reset(5)
    assert len(stats) == 5


def test_classic_selection_known_answer():
    grad = torch.tensor([0.1, 0.3, 0.2, 0.5, 0.05, 0.2])
    max_scale = torch.tensor([0.01, 0.01, 0.5, 0.5, 0.5, 0.02])
    clone, split = classic(
        grad, max_scale, grad_threshold=0.2, scene_extent=2.0, percent_dense=0.01
    )
    assert clone.tolist() == [False, True, False, False, False, True]  # <= 0.02: small
    assert split.tolist() == [False, False, True, True, False, False]


def test_percentile_clones_25_and_splits_10_percent_of_a_planted_set():
    g = torch.Generator().manual_seed(1)
    n_small, n_large, n_hidden = 800, 200, 50
    grad = torch.rand(n_small + n_large + n_hidden, generator=g)
    grad[:n_small:7] = 0.5  # ties are broken by index: the counts stay exact
    max_scale = torch.cat((torch.full((n_small,), 0.005), torch.full((n_large,), 0.3),
                           torch.full((n_hidden,), 0.005)))  # fmt: skip
    grad[-n_hidden:] = 10.0  # not visible: never densified, not part of the percentiles
    visible = torch.arange(grad.shape[0]) < n_small + n_large
    perm = torch.randperm(grad.shape[0], generator=g)  # order must not matter
    grad, max_scale, visible = grad[perm], max_scale[perm], visible[perm]
    clone, split = percentile(grad, max_scale, 75, 90, scene_extent=1.0, percent_dense=0.01,
                              visible=visible)  # fmt: skip
    small, large = visible & (max_scale <= 0.01), visible & (max_scale > 0.01)
    assert int(clone.sum()) == 200 == n_small // 4 and int(split.sum()) == 20 == n_large // 10
    assert not (clone & split).any() and not (clone | split)[~visible].any()
    assert (clone <= small).all() and (split <= large).all()
    # the selected are exactly the highest gradients of their class
    assert grad[clone].min() >= grad[small & ~clone].max()
    assert grad[split].min() >= grad[large & ~split].max()
    # stricter percentiles densify fewer (the guide's advice against point explosion)
    clone80, split95 = percentile(grad, max_scale, 80, 95, visible=visible)
    assert int(clone80.sum()) == 160 and int(split95.sum()) == 10
    # min_grad drops weak Gaussians from the selection
    clone_min, _ = percentile(grad, max_scale, 0, 100, visible=visible, min_grad=0.5)
    assert torch.equal(clone_min, small & (grad >= 0.5))
    with pytest.raises(ValueError, match="clone_percentile"):
        percentile(grad, max_scale, 101, 90)


def test_color_calibration_is_identity_at_init():
    images = torch.rand(2, 3, 5, 7)
    for net in (ColorCalibration(16), ColorCalibration(16, num_embeddings=4)):
        net.train()
        index = torch.tensor([1, 3]) if net.embeddings is not None else None
        assert torch.equal(net(images, index), images)
        net.eval()
        assert torch.equal(net(images[0], None), images[0])
        assert net.regularizer() == 0


def test_color_calibration_learns_a_planted_transform():
    torch.manual_seed(0)
    mix = torch.tensor([[1.2, 0.1, 0.0], [0.05, 0.9, 0.05], [0.0, -0.1, 1.1]])
    bias = torch.tensor([0.05, -0.03, 0.02])

    def planted(x):
        return torch.einsum("ij,bjhw->bihw", mix, x) + bias[:, None, None]

    net = ColorCalibration(hidden_dim=16)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    test = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        before = (net(test) - planted(test)).square().mean()
    for _ in range(150):
        x = torch.rand(4, 3, 8, 8)
        loss = (net(x) - planted(x)).square().mean() + 1e-6 * net.regularizer()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = (net(test) - planted(test)).square().mean()
    assert after < before / 10, (float(before), float(after))
    assert net.regularizer() > 0
