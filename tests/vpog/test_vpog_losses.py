"""Known-answer tests of VPOG's losses (`fresnel.vpog.losses`)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fresnel.vpog.losses import (
    LossWeights,
    axis_angle_to_matrix,
    buddy_residual,
    classification_loss,
    flow_loss,
    monte_carlo_pose_loss,
    reprojection_cost,
)

HP, WP = 3, 4
N = HP * WP


def test_loss_weights_defaults() -> None:
    assert LossWeights() == LossWeights(classification=1.0, flow=1.0, pose=0.1)


# -- classification ------------------------------------------------------------------------------
def test_classification_uniform_logits_give_log_of_class_count() -> None:
    logits = torch.zeros(2, 3, N, N + 1, requires_grad=True)
    labels = torch.randint(-1, N + 1, (2, 3, HP, WP))
    labels[0, 0, 0, 0] = 5  # at least one labelled entry
    loss = classification_loss(logits, labels)
    torch.testing.assert_close(loss, torch.tensor(math.log(N + 1)))


def test_classification_averages_over_labelled_entries_only() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 2, N, N + 1, generator=g)
    labels = torch.full((1, 2, HP, WP), -1)
    labels[0, 0, 1, 2] = 3  # query patch 6 of template 0
    labels[0, 1, 2, 0] = N  # query patch 8 of template 1: unseen
    expected = (
        F.cross_entropy(logits[0, 0, 6], torch.tensor(3))
        + F.cross_entropy(logits[0, 1, 8], torch.tensor(N))
    ) / 2
    torch.testing.assert_close(classification_loss(logits, labels), expected)


def test_classification_without_labels_is_zero_with_grad() -> None:
    logits = torch.randn(1, 2, N, N + 1, requires_grad=True)
    loss = classification_loss(logits, torch.full((1, 2, HP, WP), -1))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(logits.grad) == 0


# -- buddy residual ------------------------------------------------------------------------------
def own_index() -> torch.Tensor:
    return torch.arange(N).view(1, 1, HP, WP)


@pytest.mark.parametrize("ps", [16, 8, 7])
def test_identical_pair_residual_is_the_anchor_offset(ps: int) -> None:
    residual = buddy_residual(torch.zeros(1, 1, HP, WP, 2), own_index(), ps)
    expected = (ps // 2 + 0.5) / ps - 0.5  # 1 / (2 ps) for even ps, 0 for odd ps
    torch.testing.assert_close(residual, torch.full_like(residual, expected))
    if ps % 2 == 0:
        assert residual[0, 0, 0, 0, 0].item() == pytest.approx(1 / (2 * ps))


def test_one_patch_shift_has_the_same_residual() -> None:
    """Every anchor lands exactly one patch to the right (buddy = own index + 1), except in the
    last column, whose anchors leave the template (unseen)."""
    flows = torch.zeros(1, 1, HP, WP, 2)
    flows[..., 0] = 1.0
    labels = own_index() + 1
    labels[..., -1] = N
    residual = buddy_residual(flows, labels, 16)
    inside = residual[..., :-1, :]
    torch.testing.assert_close(inside, torch.full_like(inside, 1 / 32))
    assert residual[..., -1, :].isnan().all()


def test_sub_patch_flow_adds_to_the_residual() -> None:
    flows = torch.tensor([0.3, -0.2]).expand(1, 1, HP, WP, 2)
    residual = buddy_residual(flows, own_index(), 16)
    expected = torch.tensor([0.3 + 1 / 32, -0.2 + 1 / 32]).expand_as(residual)
    torch.testing.assert_close(residual, expected)


def test_residual_against_a_distant_buddy() -> None:
    """Query patch (0, 0) (anchor uv (8.5, 8.5)) lands at uv (56, 40): template patch (2, 3)."""
    flows = torch.zeros(1, 1, HP, WP, 2)
    flows[0, 0, 0, 0] = torch.tensor([(56 - 8.5) / 16, (40 - 8.5) / 16])
    labels = torch.full((1, 1, HP, WP), -1)
    labels[0, 0, 0, 0] = 2 * WP + 3
    residual = buddy_residual(flows, labels, 16)
    centre = torch.tensor([3.5 * 16, 2.5 * 16])
    torch.testing.assert_close(residual[0, 0, 0, 0], (torch.tensor([56.0, 40.0]) - centre) / 16)


def test_residual_is_nan_without_a_buddy() -> None:
    labels = own_index().clone()
    labels[0, 0, 0, 0], labels[0, 0, 1, 1] = -1, N
    residual = buddy_residual(torch.zeros(1, 1, HP, WP, 2), labels, 16)
    nan = residual.isnan().all(-1)
    assert nan[0, 0, 0, 0] and nan[0, 0, 1, 1] and nan.sum() == 2


# -- flow ----------------------------------------------------------------------------------------
def flow_case():
    pred = torch.zeros(1, 1, 2, 2, requires_grad=True)  # [B, S, N=2, 2]
    target = torch.tensor([[0.05, -0.3], [torch.nan, torch.nan]]).view(1, 1, 1, 2, 2)
    valid = torch.tensor([[True, False]]).view(1, 1, 1, 2)
    return pred, target, valid


def test_l1_flow_loss_known_answer_ignores_nan_at_invalid_entries() -> None:
    pred, target, valid = flow_case()
    loss = flow_loss(pred, target, valid, kind="l1")
    torch.testing.assert_close(loss, torch.tensor((0.05 + 0.3) / 2))
    loss.backward()
    expected_grad = torch.tensor([[-0.5, 0.5], [0.0, 0.0]]).view(1, 1, 2, 2)
    torch.testing.assert_close(pred.grad, expected_grad)


def test_huber_flow_loss_known_answer() -> None:
    pred, target, valid = flow_case()
    loss = flow_loss(pred, target, valid, kind="huber", huber_delta=0.1)
    quadratic, linear = 0.5 * 0.05**2, 0.1 * (0.3 - 0.5 * 0.1)
    torch.testing.assert_close(loss, torch.tensor((quadratic + linear) / 2))
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_flow_loss_without_valid_entries_is_zero_with_grad() -> None:
    pred, target, valid = flow_case()
    loss = flow_loss(pred, target, torch.zeros_like(valid))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert torch.count_nonzero(pred.grad) == 0


def test_flow_loss_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="l1"):
        flow_loss(*flow_case(), kind="l2")


# -- pose ----------------------------------------------------------------------------------------
def pose_scene(B: int = 2, M: int = 30):
    """Exact correspondences of random object points (+-0.1 m) about 1 m away; f = 500 px."""
    g = torch.Generator().manual_seed(0)
    K = torch.tensor([[500.0, 0, 112], [0, 500.0, 112], [0, 0, 1]], dtype=torch.float64)
    K = K.expand(B, 3, 3)
    R = axis_angle_to_matrix(torch.randn(B, 3, generator=g, dtype=torch.float64))
    t = torch.tensor([[0.05, -0.02, 1.0], [0.0, 0.03, 0.8]], dtype=torch.float64)[:B]
    x3d = (torch.rand(B, M, 3, generator=g, dtype=torch.float64) - 0.5) * 0.2
    pixels = torch.einsum("bij,bmj->bmi", K, torch.einsum("bij,bmj->bmi", R, x3d) + t[:, None])
    return pixels[..., :2] / pixels[..., 2:], x3d, K, R, t


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_axis_angle_known_answer() -> None:
    R = axis_angle_to_matrix(torch.tensor([0.0, 0.0, math.pi / 2], dtype=torch.float64))
    expected = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    torch.testing.assert_close(R, expected)


def test_reprojection_cost_known_answer() -> None:
    x2d, x3d, K, R, t = pose_scene(B=1, M=4)
    w2d = torch.tensor([[[1.0, 2.0]]], dtype=torch.float64).expand(1, 4, 2)
    shifted = x2d + torch.tensor([3.0, -1.0], dtype=torch.float64)  # every point off by (3, -1)
    cost = reprojection_cost(shifted, x3d, w2d, K, R[:, None], t[:, None])
    torch.testing.assert_close(cost, torch.tensor([[0.5 * 4 * (9.0 + 4.0)]], dtype=torch.float64))


def test_pose_loss_is_finite_and_reaches_weights_and_points() -> None:
    x2d, x3d, K, R, t = pose_scene()
    x2d, x3d = x2d.clone().requires_grad_(), x3d.clone().requires_grad_()
    w2d = torch.full_like(x2d, 0.05, requires_grad=True)
    loss = monte_carlo_pose_loss(x2d, x3d, w2d, K, R, t, num_samples=64, generator=seeded())
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    for grad in (w2d.grad, x3d.grad, x2d.grad):
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_pose_loss_is_lower_for_exact_correspondences() -> None:
    x2d, x3d, K, R, t = pose_scene()
    w2d = torch.full_like(x2d, 0.05)
    noisy = x2d + 100 * torch.randn(x2d.shape, generator=seeded(1), dtype=x2d.dtype)
    exact_loss = monte_carlo_pose_loss(x2d, x3d, w2d, K, R, t, generator=seeded())
    noisy_loss = monte_carlo_pose_loss(noisy, x3d, w2d, K, R, t, generator=seeded())
    assert (exact_loss < noisy_loss).all()


def test_pose_loss_is_deterministic_with_a_seeded_generator() -> None:
    x2d, x3d, K, R, t = pose_scene()
    w2d = torch.full_like(x2d, 0.05)
    first = monte_carlo_pose_loss(x2d, x3d, w2d, K, R, t, num_samples=32, generator=seeded(7))
    again = monte_carlo_pose_loss(x2d, x3d, w2d, K, R, t, num_samples=32, generator=seeded(7))
    other = monte_carlo_pose_loss(x2d, x3d, w2d, K, R, t, num_samples=32, generator=seeded(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_pose_loss_runs_in_float32() -> None:
    x2d, x3d, K, R, t = (x.float() for x in pose_scene())
    loss = monte_carlo_pose_loss(x2d, x3d, torch.full_like(x2d, 0.05), K, R, t, generator=seeded())
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
