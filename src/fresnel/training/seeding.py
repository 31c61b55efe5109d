"""Named per-epoch seeds: every stochastic choice of an epoch derives from (seed, epoch), so
a run resumed at epoch E draws exactly what an uninterrupted run draws there."""

from __future__ import annotations

# A prime larger than any epoch count: (seed, epoch) pairs map to distinct seeds.
EPOCH_SEED_STRIDE = 100_003


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * EPOCH_SEED_STRIDE + epoch


def epoch_generator(seed: int, epoch: int):
    """A torch.Generator seeded for this epoch (CPU generator: identical on every target)."""
    import torch

    return torch.Generator().manual_seed(epoch_seed(seed, epoch))
