"""Progressive resolution (the guide's --use_progressive_resolution): train on downscaled images
first and at full size last, so the early, coarse iterations are cheap.

`--resolution_schedule "0.5,0.75,1.0" --resolution_milestones "100000,300000"`: scale 0.5 for
iterations 1..99999, 0.75 for 100000..299999, 1.0 from 300000 on. Iterations count from 1, as in
3DGS, and a milestone is the first iteration at the new scale, so the guide's log line
`[ITER 100000] Switching to resolution scale 0.75` is printed by the iteration that uses it."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fresnel.render.projection import Camera

SCHEDULE_FLAG = "--resolution_schedule"
MILESTONES_FLAG = "--resolution_milestones"


@dataclass(frozen=True)
class ResolutionSchedule:
    """Image scale per training iteration: scales[i] from milestones[i - 1] on."""

    scales: tuple[float, ...]
    milestones: tuple[int, ...]

    @classmethod
    def parse(cls, schedule: str, milestones: str) -> ResolutionSchedule:
        """The guide's two flags, e.g. ("0.5,0.75,1.0", "100000,300000"); ValueError naming the
        flag and the fix for anything else. One scale takes an empty milestone list."""
        scales = _numbers(schedule, float, SCHEDULE_FLAG, '"0.5,0.75,1.0"')
        steps = _numbers(milestones, int, MILESTONES_FLAG, '"100000,300000"')
        if not scales:
            raise ValueError(f'{SCHEDULE_FLAG} is empty: give at least one scale, e.g. "1.0"')
        bad_scales = [s for s in scales if not 0 < s <= 1]
        if bad_scales:
            raise ValueError(f"{SCHEDULE_FLAG}: every scale must be in (0, 1] (a fraction of "
                             f"the image size), got {bad_scales} in {schedule!r}")  # fmt: skip
        if len(scales) != len(steps) + 1:
            raise ValueError(f"{SCHEDULE_FLAG} has {len(scales)} scales, so {MILESTONES_FLAG} "
                             f"needs {len(scales) - 1} iterations (one per switch), got "
                             f"{len(steps)} in {milestones!r}")  # fmt: skip
        if any(s <= 0 for s in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError(f"{MILESTONES_FLAG} must be strictly increasing positive "
                             f"iterations, e.g. \"100000,300000\", got {milestones!r}")  # fmt: skip
        return cls(tuple(scales), tuple(steps))

    def scale_at(self, iteration: int) -> float:
        """The scale of 1-based `iteration`; a milestone is the first iteration at its scale."""
        return self.scales[bisect.bisect_right(self.milestones, iteration)]

    def switches(self, iteration: int) -> float | None:
        """The new scale when the scale changes at this iteration, else None."""
        if iteration not in self.milestones:
            return None
        scale = self.scale_at(iteration)
        return scale if scale != self.scale_at(iteration - 1) else None

    def describe(self) -> str:
        """The guide's start-up line."""
        scales = ",".join(str(s) for s in self.scales)
        return (f"[Innovation] Progressive resolution schedule {scales} with milestones "
                f"{list(self.milestones)}")  # fmt: skip


def _numbers(text: str, kind: type, flag: str, example: str) -> list:
    parts = [p.strip() for p in str(text).split(",")]
    if parts == [""]:
        return []
    try:
        return [kind(p) for p in parts]
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise ValueError(
            f"{flag}: {text!r} is not a comma-separated list of {noun}, e.g. {example}"
        ) from None


def downscale(image: Tensor, camera: Camera, scale: float) -> tuple[Tensor, Camera]:
    """The (C, H, W) image and its camera at round(H * scale) x round(W * scale) pixels (at least
    1). When the new size divides the old one each output pixel is the exact mean of its block
    (area averaging); otherwise blocks would straddle pixels unevenly, so an antialiased bilinear
    filter (a triangle filter as wide as the reduction) is used instead. An unchanged size
    returns the inputs themselves."""
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    if size == (height, width):
        return image, camera
    if height % size[0] == 0 and width % size[1] == 0:
        small = F.interpolate(image[None], size=size, mode="area")
    else:
        small = F.interpolate(
            image[None], size=size, mode="bilinear", antialias=True, align_corners=False
        )
    return small[0], camera.scaled(size[1], size[0])
