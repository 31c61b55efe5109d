"""The one AMP step: autocast and GradScaler from the device module's policy for the target.

Order inside `step`: finite-loss check, zero_grad, scaled backward, unscale (from here on
the gradients are the true ones: clipping and any statistics read them), clip, optimiser
step, scaler update. A family that reads gradients itself (densification statistics) calls
`backward` and `apply` separately and reads in between.
"""

from __future__ import annotations

import contextlib

import torch

from fresnel.device import Target


class TrainingDiverged(RuntimeError):
    """A loss or a gradient norm became NaN or infinite."""


class Amp:
    """Autocast + GradScaler for one target; `enabled=False` (a config's use_amp) turns AMP off."""

    def __init__(self, target: Target, enabled: bool = True):
        self.target = target
        self.enabled = bool(enabled) and target.amp_dtype is not None
        self.scaler = torch.amp.GradScaler(
            target.torch_device().type, enabled=self.enabled and target.grad_scaler
        )

    def describe(self) -> str:
        if not self.enabled:
            return "off"
        return f"{self.target.amp_dtype}" + (" + GradScaler" if self.scaler.is_enabled() else "")

    def autocast(self):
        return self.target.autocast() if self.enabled else contextlib.nullcontext()

    def backward(self, loss: torch.Tensor, optimizer, what: str = "loss", reduce=None) -> None:
        """Check the loss, backpropagate it scaled, `reduce()` the gradients (summing them over
        ranks: before unscaling, so that every rank's scaler sees the same inf/NaN), and
        unscale the optimiser's gradients."""
        check_finite(loss, what)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if reduce is not None:
            reduce()
        self.scaler.unscale_(optimizer)

    def apply(self, optimizer, params=None, clip: float | None = None) -> float | None:
        """Clip (when `clip`) and take the optimiser step; returns the gradient norm."""
        norm = None
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(params, clip)
            # With a GradScaler an inf norm is an overflow: the scaler skips the step.
            if not torch.isfinite(norm) and not self.scaler.is_enabled():
                raise TrainingDiverged(f"gradient norm is {float(norm)}")
            norm = float(norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        return norm

    def step(self, loss, optimizer, params=None, clip=None, what: str = "loss", reduce=None):
        self.backward(loss, optimizer, what, reduce)
        return self.apply(optimizer, params, clip)


def check_finite(loss: torch.Tensor, what: str = "loss") -> None:
    if not torch.isfinite(loss.detach()).all():
        raise TrainingDiverged(f"the {what} is {float(loss.detach())}")
