"""Progressive resolution (the guide's --use_progressive_resolution): train at a fraction of
the image size first and at full size last, switching at the milestones.

`--resolution_schedule "0.5,0.75,1.0" --resolution_milestones "100000,300000"`: scale 0.5 for
iterations 1..99999, 0.75 from iteration 100000, 1.0 from 300000 (a milestone is the first
iteration at the new scale; iterations count from 1, as in 3DGS)."""

from __future__ import annotations

import bisect
import itertools
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from fresnel.render.projection import Camera


@dataclass(frozen=True)
class ResolutionSchedule:
    scales: tuple[float, ...]
    milestones: tuple[int, ...]

    @classmethod
    def parse(cls, schedule: str, milestones: str) -> ResolutionSchedule:
        scales = _numbers(schedule, float, "--resolution_schedule", '"0.5,0.75,1.0"')
        steps = _numbers(milestones, int, "--resolution_milestones", '"100000,300000"')
        if len(scales) != len(steps) + 1:
            raise ValueError(f"--resolution_schedule has {len(scales)} scales, so "
                             f"--resolution_milestones needs {len(scales) - 1} iterations, "
                             f"got {len(steps)}")  # fmt: skip
        if not all(0 < s <= 1 for s in scales):
            raise ValueError(
                f"--resolution_schedule: every scale must be in (0, 1], got {schedule}"
            )
        if any(s <= 0 for s in steps) or any(b <= a for a, b in itertools.pairwise(steps)):
            raise ValueError("--resolution_milestones must be increasing positive iterations, "
                             f"got {milestones}")  # fmt: skip
        return cls(tuple(scales), tuple(steps))

    def scale_at(self, iteration: int) -> float:
        return self.scales[bisect.bisect_right(self.milestones, iteration)]

    def switches(self, iteration: int) -> float | None:
        """The new scale when it changes at this iteration, else None."""
        return self.scale_at(iteration) if iteration in self.milestones else None

    def describe(self) -> str:
        scales = ",".join(str(s) for s in self.scales)
        return (f"[Innovation] Progressive resolution schedule {scales} with milestones "
                f"{list(self.milestones)}")  # fmt: skip


def _numbers(text: str, kind, flag: str, example: str) -> list:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        return [kind(p) for p in parts]
    except ValueError:
        raise ValueError(
            f"{flag}: {text!r} is not a comma-separated list of numbers, e.g. {example}"
        ) from None


def downscale(image: Tensor, camera: Camera, scale: float) -> tuple[Tensor, Camera]:
    """(C, H, W) image and its camera at `scale` of the size (at least 1 pixel): area
    averaging, so a 2x reduction is the mean of each 2x2 block. Scale 1 returns the inputs."""
    if scale == 1.0:
        return image, camera
    height, width = image.shape[-2:]
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    small = F.interpolate(image[None], size=size, mode="area")[0]
    return small, camera.scaled(size[1], size[0])
