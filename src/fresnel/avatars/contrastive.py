"""Contrastive regularisation (the guide's --use_contrastive_reg), made contrastive.

The fork's term had no negatives: it pulled the render towards cached features, which is a plain
feature distance. This is a patch-wise InfoNCE (CUT, Park et al. 2020) between the rendered image
and its ground truth: each p x p patch of the render (anchor) must be closer to the ground-truth
patch at its location (positive) than to the other ground-truth patches of the image and to all
patches of the `cache_size` previous ground-truth images (negatives: other views and timesteps).

Features are a patch's pixels, mean-subtracted and L2-normalised (fixed length C p^2 whatever the
image size, so progressive resolution can share the cache); similarity is cosine / temperature.
Patches with RMS contrast below `min_contrast` are not rescaled to unit length (the norm is
clamped there, so near-flat patches cannot amplify noise), and a ground-truth patch that flat
takes no part at all: one flat patch cannot be told from another, and as anchors they would
only push flat background to become textured."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


class PatchContrastive:
    """Patch InfoNCE between a render and its ground truth with a FIFO cache of negatives.

    max_anchors bounds the cost: when more textured patches exist, that many anchors are drawn
    without replacement with `generator` (all patches stay candidates as negatives)."""

    def __init__(self, patch_size: int = 8, cache_size: int = 2, temperature: float = 0.07,
                 max_anchors: int = 256, min_contrast: float = 1 / 255):  # fmt: skip
        if patch_size < 1 or cache_size < 0 or temperature <= 0 or max_anchors < 1:
            raise ValueError("PatchContrastive needs patch_size >= 1, cache_size >= 0, "
                             "temperature > 0 and max_anchors >= 1")  # fmt: skip
        self.patch_size, self.cache_size = patch_size, cache_size
        self.temperature, self.max_anchors = temperature, max_anchors
        self.min_contrast = min_contrast
        self.cache: list[Tensor] = []  # (P_i, C p^2) features of previous targets, oldest first

    def describe(self) -> str:
        """The guide's start-up line."""
        return f"[Innovation] Contrastive regularization enabled (cache={self.cache_size})"

    def features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """(features (P, C p^2), textured (P,) bool) of the image's full non-overlapping p x p
        patches in row-major order; features are mean-free, unit-norm where textured."""
        p = self.patch_size
        patches = F.unfold(image[None].float(), kernel_size=p, stride=p)[0].T
        patches = patches - patches.mean(dim=1, keepdim=True)
        floor = self.min_contrast * math.sqrt(patches.shape[1])  # the norm at RMS min_contrast
        textured = patches.detach().norm(dim=1) >= floor
        return F.normalize(patches, dim=1, eps=max(floor, 1e-12)), textured

    def loss(
        self, render: Tensor, target: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """Scalar InfoNCE (differentiable w.r.t. render only); then the target joins the cache.
        Zero (still attached to render) when the target has no textured patch."""
        self._check(render, target)
        anchors, _ = self.features(render)
        keys, textured = self.features(target.detach())
        anchors, keys = anchors[textured], keys[textured]
        chosen = self._choose(anchors.shape[0], generator).to(anchors.device)
        self.cache = [c.to(keys) for c in self.cache]
        negatives = torch.cat([keys, *self.cache])
        if chosen.numel() == 0:
            loss = render.sum() * 0.0
        else:
            logits = anchors[chosen] @ negatives.T / self.temperature
            loss = F.cross_entropy(logits, chosen)
        self._remember(keys)
        return loss

    def _check(self, render: Tensor, target: Tensor) -> None:
        p = self.patch_size
        if render.dim() != 3 or render.shape != target.shape:
            raise ValueError(f"contrastive loss needs render and target of one (C, H, W) shape, "
                             f"got {tuple(render.shape)} and {tuple(target.shape)}")  # fmt: skip
        if min(render.shape[-2:]) < p:
            raise ValueError(f"contrastive loss: a {tuple(render.shape[-2:])} image holds no "
                             f"{p} x {p} patch; use a smaller patch_size")  # fmt: skip

    def _choose(self, count: int, generator: torch.Generator | None) -> Tensor:
        if count <= self.max_anchors:
            return torch.arange(count)
        device = generator.device if generator is not None else "cpu"
        return torch.randperm(count, generator=generator, device=device)[: self.max_anchors]

    def _remember(self, features: Tensor) -> None:
        if self.cache_size > 0:
            self.cache = [*self.cache, features.detach()][-self.cache_size :]

    def cached_patches(self) -> int:
        """How many negatives the cache holds (textured patches of the previous targets)."""
        return sum(c.shape[0] for c in self.cache)

    def state_dict(self) -> dict:
        return {"patch_size": self.patch_size, "cache": [c.cpu() for c in self.cache]}

    def load_state_dict(self, state: dict) -> None:
        saved = state.get("patch_size", self.patch_size)
        if saved != self.patch_size:
            raise ValueError(f"the contrastive cache holds {saved}-px patches, this term uses "
                             f"{self.patch_size}-px ones; resume with the same patch size")  # fmt: skip
        cache = [c.clone() for c in state["cache"]]
        self.cache = cache[-self.cache_size :] if self.cache_size else []
