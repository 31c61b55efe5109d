"""Densification statistics (3DGS view-space gradients, correct under AMP) and the selection
rules: 3DGS's fixed gradient threshold and the guide's percentile ("smart") densification.

Statistics. For every Gaussian, 3DGS accumulates over the views where it was visible
(radius > 0) the norm of dL/dmeans2d, the gradient of the loss with respect to its projected
2D mean, and counts those views; densification reads the mean = sum / count. It also keeps the
largest 2D radius seen (the pruning rule for big screen-space Gaussians reads it).

AMP. With a GradScaler the backward pass is `scaler.scale(loss).backward()`, so every gradient
it produces is multiplied by the current scale (2**16 at start). `Amp.backward` then unscales
the *optimiser's* parameters only: `means2d` is an intermediate tensor (retain_grad), so its
`.grad` stays scaled. The GaussianAvatars fork accumulated that scaled gradient, making its
statistics ~65536x too large (every Gaussian passes any threshold). `GradientStats.add`
therefore takes the scale the gradient was computed with and divides by it; read it with
`loss_scale(amp)` after `amp.backward` and *before* `amp.apply` (whose `scaler.update()` may
change the scale):

    amp.backward(loss, optimizer)
    stats.add(out.means2d.grad, out.radii, loss_scale(amp))
    amp.apply(optimizer)

A gradient that overflowed (inf/NaN on a visible row: the GradScaler skips that step) is not
accumulated at all.

Keeping rows aligned with the Gaussians (`BoundGaussians` appends new rows at the end):
after `clone(mask)` call `stats.extend(int(mask.sum()))`; after `split(mask, n)` call
`stats.keep(~mask)` then `stats.extend(n * int(mask.sum()))`; after a prune, `stats.keep(kept)`
with the rows that were actually kept. New rows start at zero. 3DGS resets the statistics after
each densification anyway: `stats.reset(len(gaussians))`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from fresnel.training.amp import Amp


def loss_scale(amp: Amp | torch.amp.GradScaler) -> float:
    """The loss scale of the last scaled backward: `amp.scaler.get_scale()` when its GradScaler
    is enabled, else 1.0. Accepts an `Amp` or a GradScaler; call it before `scaler.update()`."""
    scaler = getattr(amp, "scaler", amp)
    return float(scaler.get_scale()) if scaler.is_enabled() else 1.0


class GradientStats:
    """Per-Gaussian view-space gradient statistics for n Gaussians.

    grad_sum: (n,) float32, sum over visible views of ||dL/dmeans2d|| (unscaled);
    count: (n,) int64, number of views where the Gaussian was visible;
    max_radii: (n,) float32, largest 2D radius seen (pixels).
    """

    def __init__(self, n: int, device: torch.device | str | None = None) -> None:
        self.reset(n, device)

    def reset(self, n: int | None = None, device: torch.device | str | None = None) -> None:
        """Zero the statistics (for n Gaussians when given, else the current number)."""
        n = len(self) if n is None else int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        device = self.grad_sum.device if device is None and hasattr(self, "grad_sum") else device
        self.grad_sum = torch.zeros(n, device=device)
        self.count = torch.zeros(n, dtype=torch.int64, device=device)
        self.max_radii = torch.zeros(n, device=device)

    def __len__(self) -> int:
        return self.grad_sum.shape[0]

    @torch.no_grad()
    def add(
        self,
        means2d_grad: Tensor | None,
        radii: Tensor,
        loss_scale: float = 1.0,
        image_size: tuple[int, int] | None = None,
    ) -> bool:
        """Accumulate one view, (n, 2) gradients and (n,) radii, or V views, (V, n, 2) and
        (V, n) (stack the `.grad` of each view's means2d).

        loss_scale: the factor the loss was multiplied by before this backward (the
            GradScaler's scale, see `loss_scale(amp)`; 1.0 without AMP). The gradient is
            divided by it, so the statistics do not depend on AMP.
        image_size: (width, height) to express the gradient in 3DGS's units, dL/d(NDC) =
            dL/dpixel * (width / 2, height / 2), so that 3DGS thresholds (0.0002) keep their
            meaning; None keeps pixel units.

        Returns False, accumulating nothing, when a visible row is not finite (an overflow
        under AMP, whose optimiser step the GradScaler skips too)."""
        if means2d_grad is None:
            raise ValueError(
                "means2d.grad is None: render with inputs that require grad and read "
                "out.means2d.grad after backward"
            )
        if not (math.isfinite(loss_scale) and loss_scale > 0):
            raise ValueError(f"loss_scale must be finite and > 0, got {loss_scale}")
        n = len(self)
        grad, radii = means2d_grad.detach(), radii.detach()
        if grad.shape[-1:] != (2,) or grad.shape[:-1] != radii.shape or radii.shape[-1:] != (n,):
            raise ValueError(
                f"expected means2d_grad (..., {n}, 2) and radii (..., {n}), got "
                f"{tuple(grad.shape)} and {tuple(radii.shape)}"
            )
        grad = grad.reshape(-1, n, 2).to(self.grad_sum)
        radii = radii.reshape(-1, n).to(self.grad_sum.device)
        if image_size is not None:
            width, height = image_size
            grad = grad * grad.new_tensor([width / 2, height / 2])
        norms = torch.linalg.vector_norm(grad, dim=-1) / loss_scale
        visible = radii > 0
        if not torch.isfinite(norms[visible]).all():
            return False
        self.grad_sum += torch.where(visible, norms, torch.zeros_like(norms)).sum(0)
        self.count += visible.sum(0)
        self.max_radii = torch.maximum(self.max_radii, radii.to(self.max_radii).amax(0))
        return True

    def mean(self) -> Tensor:
        """(n,) mean gradient norm over the views where each Gaussian was visible (0 if never)."""
        return self.grad_sum / self.count.clamp_min(1)

    def visible(self) -> Tensor:
        """(n,) bool: seen in at least one view since the last reset."""
        return self.count > 0

    def extend(self, k: int) -> None:
        """Append k zero rows (Gaussians added at the end by clone or split)."""
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.grad_sum = torch.cat((self.grad_sum, self.grad_sum.new_zeros(k)))
        self.count = torch.cat((self.count, self.count.new_zeros(k)))
        self.max_radii = torch.cat((self.max_radii, self.max_radii.new_zeros(k)))

    def keep(self, mask: Tensor) -> None:
        """Keep the rows where the bool (n,) mask is True, in order."""
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(self),):
            raise ValueError(f"mask must be bool ({len(self)},), got {mask.dtype} {mask.shape}")
        mask = mask.to(self.grad_sum.device)
        self.grad_sum, self.count = self.grad_sum[mask], self.count[mask]
        self.max_radii = self.max_radii[mask]

    def state_dict(self) -> dict[str, Tensor]:
        return {"grad_sum": self.grad_sum, "count": self.count, "max_radii": self.max_radii}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.grad_sum = state["grad_sum"].clone()
        self.count = state["count"].clone()
        self.max_radii = state["max_radii"].clone()


def classic(
    mean_grad: Tensor,
    max_scale: Tensor,
    grad_threshold: float,
    scene_extent: float,
    percent_dense: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """3DGS: Gaussians with mean gradient >= grad_threshold are densified; the small ones
    (largest world-space scale <= percent_dense * scene_extent) are cloned, the others split.
    Returns disjoint bool masks (clone, split)."""
    selected = mean_grad >= grad_threshold
    small = max_scale <= percent_dense * scene_extent
    return selected & small, selected & ~small


def percentile(
    mean_grad: Tensor,
    max_scale: Tensor,
    clone_percentile: float = 75.0,
    split_percentile: float = 90.0,
    scene_extent: float = 1.0,
    percent_dense: float = 0.01,
    visible: Tensor | None = None,
    min_grad: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """The guide's smart densification (--densify_percentile_clone / _split): the fixed
    gradient threshold of 3DGS becomes a percentile of the gradients, one per operation,
    taken over the Gaussians that operation applies to.

    As in 3DGS the size decides the operation: small = largest world-space scale <=
    percent_dense * scene_extent (clone candidates), large = the others (split candidates),
    both among the `visible` rows (default: all; pass `stats.visible()`).
    - clone: the small Gaussians in the top floor(n_small * (100 - clone_percentile) / 100)
      of the small ones by gradient;
    - split: the large Gaussians in the top floor(n_large * (100 - split_percentile) / 100)
      of the large ones by gradient.
    Ranks are by descending gradient, ties by lower index, so the counts are exact: with the
    defaults 25% of the small visible Gaussians are cloned and 10% of the large ones split.
    Rows with gradient < min_grad (default 0: none) are then dropped from both masks.
    Returns disjoint bool masks (clone, split)."""
    for name, p in (("clone_percentile", clone_percentile), ("split_percentile", split_percentile)):
        if not 0.0 <= p <= 100.0:
            raise ValueError(f"{name} must be in [0, 100], got {p}")
    if visible is None:
        visible = torch.ones_like(mean_grad, dtype=torch.bool)
    small = max_scale <= percent_dense * scene_extent
    clone = _top_fraction(mean_grad, visible & small, clone_percentile)
    split = _top_fraction(mean_grad, visible & ~small, split_percentile)
    strong = mean_grad >= min_grad
    return clone & strong, split & strong


def _top_fraction(values: Tensor, eligible: Tensor, percentile: float) -> Tensor:
    """Bool mask of the top floor(n * (100 - percentile) / 100) eligible rows by value."""
    idx = eligible.nonzero().squeeze(1)
    k = math.floor(idx.shape[0] * (100.0 - percentile) / 100.0 + 1e-9)
    order = torch.sort(values[idx], descending=True, stable=True).indices[:k]
    mask = torch.zeros_like(eligible)
    mask[idx[order]] = True
    return mask
