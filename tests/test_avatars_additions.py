"""Progressive resolution and the patch-contrastive term: known answers."""

import math

import pytest
import torch

from fresnel.avatars.contrastive import PatchContrastive
from fresnel.avatars.schedule import ResolutionSchedule, downscale
from fresnel.render.projection import Camera


def test_schedule_switches_at_the_milestones_and_says_so():
    s = ResolutionSchedule.parse("0.5,0.75,1.0", "100000,300000")
    assert [s.scale_at(i) for i in (1, 99_999, 100_000, 299_999, 300_000)] == [
        0.5,
        0.5,
        0.75,
        0.75,
        1.0,
    ]
    assert s.switches(100_000) == 0.75 and s.switches(100_001) is None
    assert s.describe() == ("[Innovation] Progressive resolution schedule 0.5,0.75,1.0 with "
                            "milestones [100000, 300000]")  # fmt: skip


@pytest.mark.parametrize(("schedule", "milestones", "message"), [
    ("0.5,x", "10", "--resolution_schedule"), ("0.5,1.0", "10,20", "needs 1 iterations"),
    ("0.5,1.5", "10", "in \\(0, 1\\]"), ("0.5,0.7,1.0", "20,10", "increasing"),
])  # fmt: skip
def test_bad_schedules_name_the_flag(schedule, milestones, message):
    with pytest.raises(ValueError, match=message):
        ResolutionSchedule.parse(schedule, milestones)


def test_downscale_averages_blocks_and_scales_the_camera():
    image = torch.arange(16.0).reshape(1, 4, 4)
    camera = Camera(10.0, 10.0, 2.0, 2.0, 4, 4)
    small, cam = downscale(image, camera, 0.5)
    assert small[0, 0, 0] == (0 + 1 + 4 + 5) / 4 and small.shape == (1, 2, 2)
    assert (cam.fx, cam.cx, cam.width) == (5.0, 1.0, 2)
    assert downscale(image, camera, 1.0)[0] is image


def infonce_by_hand(render, target, cached, p, temperature):
    def feats(img):
        out = []
        for y in range(0, img.shape[1] - p + 1, p):
            for x in range(0, img.shape[2] - p + 1, p):
                v = img[:, y : y + p, x : x + p].reshape(-1)
                v = v - v.mean()
                out.append(v / (v.norm() + 1e-6))
        return out

    anchors, keys = feats(render), feats(target)
    negatives_elsewhere = [f for img in cached for f in feats(img)]
    total = 0.0
    for i, a in enumerate(anchors):
        sims = [float(a @ k) / temperature for k in keys + negatives_elsewhere]
        total += -sims[i] + math.log(sum(math.exp(s) for s in sims))
    return total / len(anchors)


def test_infonce_matches_a_computation_by_hand_with_in_image_and_cached_negatives():
    g = torch.Generator().manual_seed(0)
    first, render, target = (torch.rand(3, 8, 12, generator=g) for _ in range(3))
    term = PatchContrastive(patch_size=4, cache_size=2, temperature=0.5)
    term.loss(first, first)  # the first target joins the cache
    assert term.cached_patches() == 6
    got = float(term.loss(render, target))
    assert got == pytest.approx(infonce_by_hand(render, target, [first], 4, 0.5), rel=1e-5)
    without = PatchContrastive(patch_size=4, cache_size=0, temperature=0.5)
    assert float(without.loss(render, target)) == pytest.approx(
        infonce_by_hand(render, target, [], 4, 0.5), rel=1e-5)  # fmt: skip
    assert without.cached_patches() == 0


def test_cache_keeps_the_newest_targets_and_round_trips():
    g = torch.Generator().manual_seed(1)
    term = PatchContrastive(patch_size=4, cache_size=2)
    images = [torch.rand(3, 8, 8, generator=g) for _ in range(4)]
    for image in images[:3]:
        term.loss(image, image)
    assert len(term.cache) == 2
    copy = PatchContrastive(patch_size=4, cache_size=2)
    copy.load_state_dict(term.state_dict())
    assert float(copy.loss(images[3], images[0])) == float(term.loss(images[3], images[0]))


def test_matching_render_scores_better_than_shuffled_patches_and_gradients_flow():
    g = torch.Generator().manual_seed(2)
    target = torch.rand(3, 16, 16, generator=g)
    shuffled = target.reshape(3, 4, 4, 4, 4).flip(1).reshape(3, 16, 16)
    term = PatchContrastive(patch_size=4, cache_size=0)
    assert float(term.loss(target, target)) < float(term.loss(shuffled, target))
    render = torch.full((3, 16, 16), 0.5, requires_grad=True)  # flat patches: finite
    loss = term.loss(render + 0.01 * torch.rand(3, 16, 16, generator=g), target)
    loss.backward()
    assert torch.isfinite(loss) and render.grad.abs().sum() > 0
    optimiser = torch.optim.Adam([render], lr=0.05)
    start = float(loss.detach())
    for _ in range(30):
        optimiser.zero_grad()
        term.loss(render, target).backward()
        optimiser.step()
    assert float(term.loss(render, target)) < 0.5 * start
