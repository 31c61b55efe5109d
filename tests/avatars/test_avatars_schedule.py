"""Progressive resolution: flag parsing, milestone semantics, the guide's log line, downscaling."""

from __future__ import annotations

import pytest
import torch

from fresnel.avatars.schedule import ResolutionSchedule, downscale
from fresnel.render.projection import Camera

GUIDE = ResolutionSchedule.parse("0.5,0.75,1.0", "100000,300000")


def test_parse_reads_the_guide_flags():
    assert (GUIDE.scales, GUIDE.milestones) == ((0.5, 0.75, 1.0), (100_000, 300_000))
    assert ResolutionSchedule.parse(" 0.5 , 1 ", " 10 ") == ResolutionSchedule((0.5, 1.0), (10,))


@pytest.mark.parametrize("milestones", ["", "  "])
def test_one_scale_takes_no_milestones(milestones):
    schedule = ResolutionSchedule.parse("1.0", milestones)
    assert schedule == ResolutionSchedule((1.0,), ())
    assert [schedule.scale_at(i) for i in (1, 10**6)] == [1.0, 1.0]
    assert schedule.switches(1) is None


@pytest.mark.parametrize(("schedule", "milestones", "flag", "fix"), [
    ("0.5,x", "10", "--resolution_schedule", "comma-separated list of numbers"),
    ("0.5,,1.0", "10,20", "--resolution_schedule", "comma-separated list of numbers"),
    ("", "", "--resolution_schedule", "at least one scale"),
    ("0.5,1.0", "ten", "--resolution_milestones", "comma-separated list of integers"),
    ("0.5,1.0", "1.5", "--resolution_milestones", "comma-separated list of integers"),
    ("0.5,1.0", "10,20", "--resolution_milestones", "needs 1 iterations"),
    ("0.5,0.75,1.0", "10", "--resolution_milestones", "needs 2 iterations"),
    ("0.5,1.0", "", "--resolution_milestones", "needs 1 iterations"),
    ("0.5,1.5", "10", "--resolution_schedule", r"in \(0, 1\]"),
    ("0,1.0", "10", "--resolution_schedule", r"in \(0, 1\]"),
    ("-0.5,1.0", "10", "--resolution_schedule", r"in \(0, 1\]"),
    ("nan,1.0", "10", "--resolution_schedule", r"in \(0, 1\]"),
    ("0.5,0.7,1.0", "20,10", "--resolution_milestones", "strictly increasing"),
    ("0.5,0.7,1.0", "10,10", "--resolution_milestones", "strictly increasing"),
    ("0.5,1.0", "0", "--resolution_milestones", "positive"),
    ("0.5,1.0", "-5", "--resolution_milestones", "positive"),
])  # fmt: skip
def test_bad_flags_raise_one_line_naming_the_flag_and_the_fix(schedule, milestones, flag, fix):
    with pytest.raises(ValueError, match=fix) as caught:
        ResolutionSchedule.parse(schedule, milestones)
    message = str(caught.value)
    assert flag in message and "\n" not in message


def test_a_milestone_is_the_first_iteration_at_the_new_scale():
    iterations = (1, 99_999, 100_000, 100_001, 299_999, 300_000, 300_001, 10**7)
    assert [GUIDE.scale_at(i) for i in iterations] == [0.5, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0, 1.0]


def test_switches_only_at_the_milestones():
    changes = {i: s for i in range(1, 400_001) if (s := GUIDE.switches(i)) is not None}
    assert changes == {100_000: 0.75, 300_000: 1.0}


def test_a_milestone_that_keeps_the_scale_is_no_switch():
    schedule = ResolutionSchedule.parse("0.5,0.5,1.0", "10,20")
    assert schedule.switches(10) is None and schedule.switches(20) == 1.0


def test_describe_is_the_guide_line():
    assert GUIDE.describe() == (
        "[Innovation] Progressive resolution schedule 0.5,0.75,1.0 with milestones [100000, 300000]"
    )


CAMERA = Camera(fx=40.0, fy=30.0, cx=16.0, cy=12.0, width=32, height=24)


@pytest.mark.parametrize(("scale", "size"), [
    (0.5, (12, 16)), (0.75, (18, 24)), (0.3, (7, 10)), (0.01, (1, 1)),
])  # fmt: skip
def test_downscale_sizes_and_the_camera_see_the_same_point(scale, size):
    image = torch.rand(3, 24, 32, generator=torch.Generator().manual_seed(0))
    small, camera = downscale(image, CAMERA, scale)
    assert small.shape == (3, *size) and (camera.height, camera.width) == size
    x, y, z = 0.3, -0.2, 2.0  # a camera-space point; pixel coordinates scale with the image
    full = (CAMERA.fx * x / z + CAMERA.cx, CAMERA.fy * y / z + CAMERA.cy)
    scaled = (camera.fx * x / z + camera.cx, camera.fy * y / z + camera.cy)
    assert scaled == pytest.approx((full[0] * size[1] / 32, full[1] * size[0] / 24))


def test_downscale_averages_each_block_when_the_size_divides():
    image = torch.tensor([[1.0, 3.0, 10.0, 20.0], [5.0, 7.0, 30.0, 40.0]])[None]
    small, _ = downscale(image, Camera(4.0, 4.0, 2.0, 1.0, 4, 2), 0.5)
    assert small.tolist() == [[[4.0, 25.0]]]


def test_downscale_that_does_not_divide_is_antialiased():
    stripes = torch.tensor([0.0, 1.0]).repeat(15)[None, None].expand(1, 30, 30)
    small, _ = downscale(stripes, Camera(30.0, 30.0, 15.0, 15.0, 30, 30), 0.7)
    assert small.shape == (1, 21, 21)
    # Plain bilinear would alias the 1-pixel stripes into a beat pattern; the filter averages
    assert (small - 0.5).abs().max() < 0.2


def test_scale_one_returns_the_inputs_themselves():
    image = torch.rand(3, 5, 7)
    small, camera = downscale(image, CAMERA, 1.0)
    assert small is image and camera is CAMERA
