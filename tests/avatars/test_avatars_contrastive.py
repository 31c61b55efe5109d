"""Patch InfoNCE: known answers against a computation by loops, the cache of negatives, flat
patches, gradients and a few optimisation steps."""

from __future__ import annotations

import math

import pytest
import torch

from fresnel.avatars.contrastive import PatchContrastive

MIN_CONTRAST = 1 / 255


def rand(*shape: int, seed: int) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def patch_features(image, p):
    """[(feature, textured)] of the full p x p patches, row-major, one patch at a time."""
    out = []
    for y in range(0, image.shape[1] - p + 1, p):
        for x in range(0, image.shape[2] - p + 1, p):
            v = image[:, y : y + p, x : x + p].detach().reshape(-1).double()
            v = v - v.mean()
            floor = MIN_CONTRAST * math.sqrt(v.numel())
            out.append((v / max(float(v.norm()), floor), float(v.norm()) >= floor))
    return out


def infonce_by_hand(render, target, cached, p, temperature, anchors=None):
    """Mean over anchors of -log(exp(s_pos) / sum over positive + negatives of exp(s))."""
    rendered, truth = patch_features(render, p), patch_features(target, p)
    keep = [i for i, (_, textured) in enumerate(truth) if textured]
    keys = [truth[i][0] for i in keep]
    keys += [f for image in cached for f, textured in patch_features(image, p) if textured]
    anchors = range(len(keep)) if anchors is None else anchors
    total = 0.0
    for i in anchors:
        sims = [float(rendered[keep[i]][0] @ k) / temperature for k in keys]
        total += -sims[i] + math.log(sum(math.exp(s) for s in sims))
    return total / len(anchors)


def test_two_orthogonal_patches_have_the_closed_form_loss():
    a = torch.tensor([1.0, -1.0]).repeat(6).reshape(3, 2, 2)  # zero-mean, orthogonal patterns
    b = torch.tensor([1.0, 1.0, -1.0, -1.0]).repeat(3).reshape(3, 2, 2)
    image = torch.cat((a, b), dim=2)  # (3, 2, 4): two 2 x 2 patches
    term = PatchContrastive(patch_size=2, cache_size=0, temperature=0.5)
    # each anchor: positive similarity 1 / T, its one negative 0
    assert float(term.loss(image, image)) == pytest.approx(math.log(1 + math.exp(-2.0)))


def test_matches_the_loops_without_and_with_cached_negatives():
    first, render, target = (rand(3, 8, 12, seed=s) for s in range(3))
    plain = PatchContrastive(patch_size=4, cache_size=0, temperature=0.5)
    without = float(plain.loss(render, target))
    assert without == pytest.approx(infonce_by_hand(render, target, [], 4, 0.5), rel=1e-5)

    cached = PatchContrastive(patch_size=4, cache_size=2, temperature=0.5)
    cached.loss(first, first)  # the first target's 6 patches join the cache
    assert cached.cached_patches() == 6
    with_cache = float(cached.loss(render, target))
    assert with_cache == pytest.approx(infonce_by_hand(render, target, [first], 4, 0.5), rel=1e-5)
    assert with_cache > without + 1e-3  # more negatives, harder to pick the positive


def test_the_cache_keeps_the_newest_cache_size_targets():
    images = [rand(3, 8, 8, seed=s) for s in range(5)]
    term = PatchContrastive(patch_size=4, cache_size=2, temperature=0.5)
    for image in images[:3]:
        term.loss(image, image)
    assert term.cached_patches() == 2 * 4 and len(term.cache) == 2
    got = float(term.loss(images[3], images[4]))
    expected = infonce_by_hand(images[3], images[4], images[1:3], 4, 0.5)
    assert got == pytest.approx(expected, rel=1e-5)
    assert term.cached_patches() == 2 * 4


def test_cache_size_zero_caches_nothing():
    term = PatchContrastive(patch_size=4, cache_size=0)
    for seed in range(3):
        image = rand(3, 8, 8, seed=seed)
        assert torch.isfinite(term.loss(image, image))
    assert term.cached_patches() == 0 and term.state_dict()["cache"] == []


def test_images_of_different_sizes_share_the_cache():
    term = PatchContrastive(patch_size=4, cache_size=2, temperature=0.5)
    large, small = rand(3, 16, 16, seed=0), rand(3, 8, 8, seed=1)
    term.loss(large, large)
    got = float(term.loss(small, small))
    assert got == pytest.approx(infonce_by_hand(small, small, [large], 4, 0.5), rel=1e-5)
    assert term.cached_patches() == 16 + 4


def test_matching_render_beats_the_target_with_its_patches_shuffled():
    target = rand(3, 16, 16, seed=2)
    shuffled = target.reshape(3, 4, 4, 4, 4).flip(1, 3).reshape(3, 16, 16)  # patches move
    term = PatchContrastive(patch_size=4, cache_size=0)
    assert float(term.loss(target, target)) < 0.1 < 5.0 < float(term.loss(shuffled, target))


def test_gradient_reaches_the_render_only():
    render = rand(3, 16, 16, seed=3).requires_grad_(True)
    target = rand(3, 16, 16, seed=4).requires_grad_(True)
    PatchContrastive(patch_size=4).loss(render, target).backward()
    assert torch.isfinite(render.grad).all() and render.grad.abs().sum() > 0
    assert target.grad is None


def test_flat_patches_give_finite_values_and_take_no_part_as_ground_truth():
    textured = rand(3, 8, 8, seed=5)
    target = torch.cat((torch.full((3, 8, 8), 0.7), textured), dim=2)  # 4 flat, 4 textured
    render = torch.full((3, 8, 16), 0.3, requires_grad=True)  # every render patch flat
    term = PatchContrastive(patch_size=4, cache_size=2, temperature=0.5)
    loss = term.loss(render, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(render.grad).all()
    assert float(loss.detach()) == pytest.approx(
        infonce_by_hand(render, target, [], 4, 0.5), rel=1e-5
    )
    assert render.grad[:, :, :8].abs().max() == 0  # flat ground truth: no push towards texture
    assert render.grad[:, :, 8:].abs().max() > 0
    assert term.cached_patches() == 4  # only the textured ground-truth patches

    flat = torch.full((3, 8, 8), 0.5, requires_grad=True)
    nothing = term.loss(flat, flat.detach())
    nothing.backward()
    assert float(nothing.detach()) == 0.0 and flat.grad.abs().max() == 0


def test_max_anchors_draws_a_seeded_subset():
    render, target = rand(3, 16, 16, seed=6), rand(3, 16, 16, seed=7)
    term = PatchContrastive(patch_size=4, cache_size=0, temperature=0.5, max_anchors=5)
    got = float(term.loss(render, target, torch.Generator().manual_seed(3)))
    chosen = torch.randperm(16, generator=torch.Generator().manual_seed(3))[:5].tolist()
    assert got == pytest.approx(infonce_by_hand(render, target, [], 4, 0.5, chosen), rel=1e-5)
    other = float(term.loss(render, target, torch.Generator().manual_seed(4)))
    assert other != pytest.approx(got, rel=1e-5)


def test_state_dict_round_trip_gives_the_same_next_loss():
    images = [rand(3, 8, 8, seed=s) for s in range(4)]
    term = PatchContrastive(patch_size=4, cache_size=2)
    for image in images[:3]:
        term.loss(image, image)
    copy = PatchContrastive(patch_size=4, cache_size=2)
    copy.load_state_dict(term.state_dict())
    assert copy.cached_patches() == term.cached_patches() == 8
    assert float(copy.loss(images[3], images[0])) == float(term.loss(images[3], images[0]))
    with pytest.raises(ValueError, match="same patch size"):
        PatchContrastive(patch_size=8).load_state_dict(term.state_dict())


def test_adam_from_noise_towards_a_target_lowers_the_loss():
    target = rand(3, 16, 16, seed=8)
    render = rand(3, 16, 16, seed=9).requires_grad_(True)
    term = PatchContrastive(patch_size=4, cache_size=0)
    optimiser = torch.optim.Adam([render], lr=0.05)
    start = float(term.loss(render, target))
    for _ in range(20):
        optimiser.zero_grad()
        term.loss(render, target).backward()
        optimiser.step()
    assert float(term.loss(render, target)) < 0.5 * start


def test_describe_and_input_checks():
    assert PatchContrastive(cache_size=2).describe() == (
        "[Innovation] Contrastive regularization enabled (cache=2)"
    )
    term = PatchContrastive(patch_size=8)
    with pytest.raises(ValueError, match="one \\(C, H, W\\) shape"):
        term.loss(torch.rand(3, 8, 8), torch.rand(3, 8, 16))
    with pytest.raises(ValueError, match="no 8 x 8 patch"):
        term.loss(torch.rand(3, 4, 16), torch.rand(3, 4, 16))
