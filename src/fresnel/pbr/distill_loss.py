"""The distillation loss:

    alpha * L(student, teacher) + (1 - alpha) * L(student, ground truth)

with L the teacher's reconstruction loss: per-map weighted L1 (w_l1 x w_albedo, ...),
1 - SSIM on albedo (w_ssim) and 1 - cos between normals (w_normal; the cosine of the
angular error, which has a finite gradient where the angle is 0).

Temperature is the regression analogue of Hinton et al.'s: there, teacher and student
logits are divided by T before the softmax so the soft targets carry more of the "dark
knowledge" in small probabilities. Our albedo/roughness/metallic maps are sigmoids, so both
sides of the teacher term pass through p -> sigmoid(logit(p) / T), which pulls values
towards 0.5 and evens out the gradient between saturated and mid-range pixels. Softening
the student too (as Hinton does) keeps the optimum at student == teacher; softening only the
teacher would train the student to reproduce a flattened teacher. T = 1 is the identity;
normals (unit vectors, not probabilities) are never softened.
"""

from __future__ import annotations

import torch

from fresnel import metrics
from fresnel.pbr.losses import normal_cosine
from fresnel.pbr.maps import MAPS

SCALAR_MAPS = ("albedo", "roughness", "metallic")  # sigmoid outputs: softened by temperature
MAP_WEIGHT_FIELDS = {
    "albedo": "w_albedo",
    "roughness": "w_roughness",
    "metallic": "w_metallic",
    "normal": "w_normal_map",
}


def soften(maps: dict[str, torch.Tensor], temperature: float, eps: float = 1e-6) -> dict:
    """p -> sigmoid(logit(p) / T) on albedo/roughness/metallic; normals unchanged."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    out = dict(maps)
    for name in SCALAR_MAPS:
        out[name] = torch.sigmoid(torch.logit(maps[name].clamp(eps, 1 - eps)) / temperature)
    return out


def reconstruction_loss(
    pred: dict,
    ref: dict,
    w_l1: float,
    w_ssim: float,
    w_normal: float,
    map_weights: dict[str, float],
) -> tuple[torch.Tensor, dict]:
    """Weighted per-map L1 + w_ssim (1 - SSIM(albedo)) + w_normal mean(1 - cos(normals)),
    the teacher's HybridLoss terms (fresnel.pbr.losses) without its GAN term."""
    l1 = {m: (pred[m] - ref[m]).abs().mean() for m in MAPS}
    l1_total = sum(map_weights[m] * l1[m] for m in MAPS)
    ssim_term = 1 - metrics.ssim(pred["albedo"], ref["albedo"])
    normal_term = (1 - normal_cosine(pred["normal"], ref["normal"])).mean()
    total = w_l1 * l1_total + w_ssim * ssim_term + w_normal * normal_term
    parts = {"l1": l1_total, "ssim": ssim_term, "normal": normal_term}
    return total, {k: float(v.detach()) for k, v in parts.items()}


class DistillationLoss(torch.nn.Module):
    """alpha * L(student, teacher; softened by T) + (1 - alpha) * L(student, ground truth).

    A term whose weight is 0 is not computed at all, so alpha = 0 never looks at the teacher.
    """

    def __init__(
        self,
        alpha: float,
        temperature: float = 1.0,
        w_l1: float = 1.0,
        w_ssim: float = 0.3,
        w_normal: float = 0.5,
        map_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.temperature = float(alpha), float(temperature)
        self.weights = (w_l1, w_ssim, w_normal)
        self.map_weights = {m: 1.0 for m in MAPS} | dict(map_weights or {})

    @classmethod
    def from_config(cls, cfg) -> DistillationLoss:
        loss, training = cfg.loss, cfg.training
        weights = {m: float(getattr(loss, f, 1.0)) for m, f in MAP_WEIGHT_FIELDS.items()}
        return cls(
            training.alpha, training.temperature, loss.w_l1, loss.w_ssim, loss.w_normal, weights
        )

    def _term(self, pred: dict, ref: dict):
        return reconstruction_loss(pred, ref, *self.weights, self.map_weights)

    def forward(self, pred: dict, teacher: dict, target: dict) -> tuple[torch.Tensor, dict]:
        total, parts = pred["albedo"].new_zeros(()), {}
        if self.alpha > 0:
            soft_loss, _ = self._term(
                soften(pred, self.temperature), soften(teacher, self.temperature)
            )
            total = total + self.alpha * soft_loss
            parts["teacher_loss"] = float(soft_loss.detach())
        if self.alpha < 1:
            hard_loss, _ = self._term(pred, target)
            total = total + (1 - self.alpha) * hard_loss
            parts["hard_loss"] = float(hard_loss.detach())
        parts["loss"] = float(total.detach())
        return total, parts
