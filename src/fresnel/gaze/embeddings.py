"""Learned gaze / head-pose / expression embeddings and the orthogonality loss between them.

Conventions: gaze is (B, 2) (pitch, yaw) radians, head pose (B, P) radians (ETH-XGaze's
(pitch, yaw), P = 2, or (pitch, yaw, roll)),
expression (B, E) codes; every embedding is (B, D) with a common width D. The orthogonality
loss acts on these learned embeddings (so gradients reach the networks), comparing the
embeddings of the same sample: it pushes the three conditions into independent directions.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, out_dim))


class ConditionEmbeddings(nn.Module):
    """Three small MLPs: gaze (2 -> D), head pose (P -> D), expression (E -> D)."""

    def __init__(self, expression_dim: int = 64, width: int = 64, hidden: int = 128,
                 head_pose_dim: int = 3) -> None:  # fmt: skip
        super().__init__()
        self.width = width
        self.gaze = _mlp(2, hidden, width)
        self.head_pose = _mlp(head_pose_dim, hidden, width)
        self.expression = _mlp(expression_dim, hidden, width)

    def forward(
        self, gaze: Tensor, head_pose: Tensor, expression: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(B, 2), (B, P), (B, E) -> three (B, D) embeddings in that order."""
        return self.gaze(gaze), self.head_pose(head_pose), self.expression(expression)


def _validate(embeddings: Sequence[Tensor]) -> None:
    if len(embeddings) < 2:
        raise ValueError(f"orthogonality needs at least 2 embeddings, got {len(embeddings)}")
    shapes = [tuple(e.shape) for e in embeddings]
    if any(len(s) != 2 for s in shapes) or len(set(shapes)) != 1:
        raise ValueError(
            f"embeddings must all be (B, D) with the same B and D, got shapes {shapes}; "
            "project them to a common width first (ConditionEmbeddings does)"
        )


def _pair_cosines(embeddings: Sequence[Tensor]) -> Tensor:
    """(P, B) cosine similarities of the same sample's embeddings, for every pair."""
    _validate(embeddings)
    unit = [nn.functional.normalize(e, dim=-1, eps=1e-8) for e in embeddings]
    return torch.stack([(a * b).sum(-1) for a, b in itertools.combinations(unit, 2)])


def orthogonality_loss(embeddings: Sequence[Tensor]) -> Tensor:
    """Mean over pairs and samples of the squared cosine similarity (0: orthogonal, 1: parallel)."""
    return _pair_cosines(embeddings).square().mean()


def mean_abs_cosine(embeddings: Sequence[Tensor]) -> Tensor:
    """Mean over pairs and samples of |cosine similarity| (the metric reported)."""
    return _pair_cosines(embeddings).abs().mean()
