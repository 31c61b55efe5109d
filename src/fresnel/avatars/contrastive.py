"""Contrastive regularisation (the guide's --use_contrastive_reg), made contrastive.

The fork's term pulled the render towards cached features with no negatives, which is a plain
feature distance. This is a patch-wise InfoNCE (CUT, Park et al. 2020): each p x p patch of the
render (anchor) must match the ground-truth patch at its location (positive) better than the
other ground-truth patches of the same image and every patch of the `cache_size` previous
ground-truth images (negatives; other views and timesteps). Patch features are the pixels,
mean-subtracted and L2-normalised, so they are fixed-length whatever the image size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-6  # flat patches have norm ~0


class PatchContrastive:
    def __init__(self, patch_size: int = 8, cache_size: int = 2, temperature: float = 0.07,
                 max_anchors: int = 256):  # fmt: skip
        self.patch_size, self.cache_size = patch_size, cache_size
        self.temperature, self.max_anchors = temperature, max_anchors
        self.cache: list[Tensor] = []  # (P, 3 p^2) features of previous targets, oldest first

    def describe(self) -> str:
        return f"[Innovation] Contrastive regularization enabled (cache={self.cache_size})"

    def features(self, image: Tensor) -> Tensor:
        """(P, C p^2): the image's full non-overlapping patches, mean-free and unit-norm."""
        p = self.patch_size
        patches = F.unfold(image[None].float(), kernel_size=p, stride=p)[0].T
        patches = patches - patches.mean(dim=1, keepdim=True)
        return patches / (patches.norm(dim=1, keepdim=True) + EPS)

    def loss(
        self, render: Tensor, target: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """InfoNCE of the render's patches against the target's; then the target joins the cache."""
        anchors, positives = self.features(render), self.features(target).detach()
        if anchors.shape[0] == 0:
            raise ValueError(
                f"images of {tuple(render.shape[-2:])} hold no {self.patch_size}-px patch"
            )
        chosen = torch.arange(anchors.shape[0])
        if anchors.shape[0] > self.max_anchors:
            chosen = torch.randperm(anchors.shape[0], generator=generator)[: self.max_anchors]
        keys = torch.cat([positives, *(c.to(positives) for c in self.cache)])
        logits = anchors[chosen.to(anchors.device)] @ keys.T / self.temperature
        loss = F.cross_entropy(logits, chosen.to(logits.device))
        self._remember(positives)
        return loss

    def _remember(self, features: Tensor) -> None:
        if self.cache_size <= 0:
            return
        self.cache = [*self.cache, features.detach()][-self.cache_size :]

    def cached_patches(self) -> int:
        return sum(c.shape[0] for c in self.cache)

    def state_dict(self) -> dict:
        return {"cache": [c.cpu() for c in self.cache]}

    def load_state_dict(self, state: dict) -> None:
        self.cache = (
            [c.clone() for c in state["cache"]][-self.cache_size :] if self.cache_size else []
        )
