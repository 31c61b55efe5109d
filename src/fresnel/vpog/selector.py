"""Choose the positive and negative templates VPOG matches a query against, and the reference.

Templates are compared with the query by the *out-of-plane* angle between viewing directions
(`fresnel.vpog.geometry`), never by the full SO(3) distance: a template seen from the query's
viewpoint but rotated about the optical axis is as good as an aligned one, since its in-plane
rotation is recovered separately. (Ranking by SO(3) distance, as the public VPOG code does,
would prefer a farther viewpoint that happens to share the query's in-plane angle.)

Selection rules, for a query rotation R_query (OpenCV, object-to-camera) and N templates:
- reference: the nearest template (smallest out-of-plane angle, lowest index among exact ties);
  d_ref is its viewing direction, a unit vector in object coordinates.
- positives, S_p = num_positive of them:
  - mode "nearest": the S_p templates with the smallest angles (ties by lower index);
  - mode "random_within_range": S_p distinct templates drawn uniformly among those within
    positive_max_angle_deg (inclusive). When fewer than S_p are within range, the nearest S_p
    templates are used instead: those within range plus the nearest ones outside it.
- negatives, S_n = num_negative of them: distinct templates, never positives, drawn uniformly
  among those at >= negative_min_angle_deg. When fewer than S_n qualify, the S_n farthest
  non-positive templates are used instead (all qualifying ones plus the farthest others) and
  `fallback` is True.
Positives and negatives are each listed by increasing angle (ties by lower index). Everything
depends on the query's viewing direction only, so an in-plane rotation of the query changes
nothing.

Randomness: `select(R_query, rng)` draws with `rng` when it is a torch.Generator (advancing it),
with a fresh generator seeded by `rng` when it is an int, and otherwise with the selector's own
generator, seeded with `seed` at construction and advanced by every call (a reproducible
sequence). Same seed, same selection; "nearest" positives and the reference are not random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fresnel.vpog.geometry import out_of_plane_angle, viewing_direction

MODES = ("nearest", "random_within_range")


@dataclass(frozen=True)
class Selection:
    """Template indices for one query; see the module docstring for the rules."""

    positives: Tensor  # long (S_p,)
    negatives: Tensor  # long (S_n,)
    d_ref: Tensor  # (3,) viewing direction of the reference template
    reference: int  # index of the nearest template
    fallback: bool  # True when the negatives had to include templates below the minimum angle


class TemplateSelector:
    """Positive / negative template choice over a fixed set of (N, 3, 3) template rotations."""

    def __init__(
        self,
        template_R: Tensor,
        num_positive: int = 4,
        num_negative: int = 2,
        negative_min_angle_deg: float = 90.0,
        mode: str = "nearest",
        positive_max_angle_deg: float | None = None,
        seed: int = 0,
    ) -> None:
        template_R = torch.as_tensor(template_R)
        if template_R.ndim != 3 or template_R.shape[1:] != (3, 3):
            raise ValueError(f"template_R must be (N, 3, 3), got {tuple(template_R.shape)}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "random_within_range" and positive_max_angle_deg is None:
            raise ValueError("mode 'random_within_range' needs positive_max_angle_deg")
        if num_positive < 1 or num_negative < 0:
            raise ValueError("need num_positive >= 1 and num_negative >= 0")
        if num_positive + num_negative > len(template_R):
            raise ValueError(
                f"{num_positive} positives + {num_negative} negatives > {len(template_R)} templates"
            )
        self.template_R = template_R
        self.num_positive = num_positive
        self.num_negative = num_negative
        self.negative_min_angle = math.radians(negative_min_angle_deg)
        self.positive_max_angle = (
            None if positive_max_angle_deg is None else math.radians(positive_max_angle_deg)
        )
        self.mode = mode
        self.generator = torch.Generator().manual_seed(seed)
        self._template_R64 = template_R.to(torch.float64)

    def angles(self, R_query: Tensor) -> Tensor:
        """(N,) float64 out-of-plane angles (radians) from the query to every template."""
        R_query = torch.as_tensor(R_query).to(self._template_R64)
        return out_of_plane_angle(R_query, self._template_R64)

    def select(self, R_query: Tensor, rng: torch.Generator | int | None = None) -> Selection:
        """Reference, positives and negatives for one (3, 3) query rotation (module docstring)."""
        angles = self.angles(R_query)
        generator = _generator(rng, self.generator)
        by_angle = torch.sort(angles, stable=True).indices
        reference = int(by_angle[0])
        positives = self._positives(angles, by_angle, generator)
        negatives, fallback = self._negatives(angles, positives, generator)
        return Selection(
            positives=_ordered_by_angle(positives, angles),
            negatives=_ordered_by_angle(negatives, angles),
            d_ref=viewing_direction(self.template_R[reference]),
            reference=reference,
            fallback=fallback,
        )

    def _positives(self, angles: Tensor, by_angle: Tensor, generator: torch.Generator) -> Tensor:
        nearest = by_angle[: self.num_positive]
        if self.mode == "nearest":
            return nearest
        within_range = torch.nonzero(angles <= self.positive_max_angle)[:, 0]
        if len(within_range) < self.num_positive:
            return nearest  # all those within range, filled up with the nearest others
        return _draw(within_range, self.num_positive, generator)

    def _negatives(
        self, angles: Tensor, positives: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, bool]:
        allowed = torch.ones_like(angles, dtype=torch.bool)
        allowed[positives] = False
        candidates = torch.nonzero(allowed & (angles >= self.negative_min_angle))[:, 0]
        if len(candidates) >= self.num_negative:
            return _draw(candidates, self.num_negative, generator), False
        farthest_first = _by_descending_angle(torch.nonzero(allowed)[:, 0], angles)
        return farthest_first[: self.num_negative], True


def _generator(rng: torch.Generator | int | None, default: torch.Generator) -> torch.Generator:
    if isinstance(rng, torch.Generator):
        return rng
    if rng is None:
        return default
    return torch.Generator().manual_seed(int(rng))


def _draw(indices: Tensor, count: int, generator: torch.Generator) -> Tensor:
    return indices[torch.randperm(len(indices), generator=generator)[:count]]


def _ordered_by_angle(indices: Tensor, angles: Tensor) -> Tensor:
    indices = torch.sort(indices).values
    return indices[torch.sort(angles[indices], stable=True).indices]


def _by_descending_angle(indices: Tensor, angles: Tensor) -> Tensor:
    """Sorted `indices` (ascending) reordered farthest first, lower index first among ties."""
    return indices[torch.sort(angles[indices], descending=True, stable=True).indices]
