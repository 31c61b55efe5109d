"""Training objective of the NeuroPBR teacher (`HybridLoss`) and the map metrics it reports.

total = w_l1 * (w_albedo*L1_albedo + w_roughness*L1_roughness + w_metallic*L1_metallic
                + w_normal_map*L1_normal)
      + w_ssim * (1 - SSIM(albedo))            (fresnel.metrics.ssim)
      + w_normal * mean(1 - cos(pred_normal, gt_normal))   (the normal angular term)
      + w_gan * adversarial generator term     (only when the GAN is active)

The normal term is the mean of 1 - cos(angle) (smooth everywhere, unlike acos); the mean angle
in degrees is reported alongside as a metric. Losses are computed in float32 with autocast off.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fresnel import metrics
from fresnel.pbr.config import LossConfig
from fresnel.pbr.discriminator import g_loss
from fresnel.pbr.maps import MAPS, split_maps


def as_map_dict(maps: dict[str, torch.Tensor] | torch.Tensor) -> dict[str, torch.Tensor]:
    """Accept the model's output dict or a packed [B, 8, H, W] target."""
    return split_maps(maps) if isinstance(maps, torch.Tensor) else maps


def normal_cosine(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cos(angle) between normal maps [B, 3, H, W] (both renormalised)."""
    return (F.normalize(pred.float(), dim=1) * F.normalize(target.float(), dim=1)).sum(dim=1)


def normal_angles_deg(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel angle in degrees between normal maps, [B, H, W]."""
    return torch.rad2deg(torch.acos(normal_cosine(pred, target).clamp(-1.0, 1.0)))


def mean_normal_angle_deg(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(normal_angles_deg(pred, target).mean())


class HybridLoss:
    """Weighted L1 per map + albedo SSIM + normal angular term + optional GAN term."""

    def __init__(
        self,
        cfg: LossConfig,
        use_gan: bool = False,
        gan_start_epoch: int = 0,
        use_sigmoid: bool = False,
    ):
        self.cfg = cfg
        self.use_gan = use_gan and cfg.w_gan > 0
        self.gan_start_epoch = gan_start_epoch
        self.use_sigmoid = use_sigmoid
        self.map_weights = {
            "albedo": cfg.w_albedo,
            "roughness": cfg.w_roughness,
            "metallic": cfg.w_metallic,
            "normal": cfg.w_normal_map,
        }

    def gan_active(self, epoch: int) -> bool:
        """GAN on for 1-based epoch numbers after `gan_start_epoch` reconstruction-only epochs."""
        return self.use_gan and epoch > self.gan_start_epoch

    def __call__(self, pred, target, d_fake: torch.Tensor | None = None):
        """-> (total loss tensor, {component: float}). `d_fake` = D's scores for `pred`."""
        pred, target = as_map_dict(pred), as_map_dict(target)
        with torch.autocast(device_type=pred["albedo"].device.type, enabled=False):
            return self._compute(pred, target, d_fake)

    def _compute(self, pred, target, d_fake):
        parts = {f"l1_{k}": F.l1_loss(pred[k].float(), target[k].float()) for k in MAPS}
        l1 = sum(self.map_weights[k] * parts[f"l1_{k}"] for k in MAPS)
        ssim_albedo = metrics.ssim(pred["albedo"], target["albedo"])
        cosine = normal_cosine(pred["normal"], target["normal"])
        normal_term = (1.0 - cosine).mean()
        total = self.cfg.w_l1 * l1 + self.cfg.w_ssim * (1 - ssim_albedo)
        total = total + self.cfg.w_normal * normal_term
        gan = torch.zeros((), device=total.device)
        if d_fake is not None:
            gan = g_loss(d_fake, self.cfg.gan_loss_type, self.use_sigmoid)
            total = total + self.cfg.w_gan * gan
        angle = torch.rad2deg(torch.acos(cosine.detach().clamp(-1, 1))).mean()
        parts.update(l1=l1, ssim=ssim_albedo, normal=normal_term, gan_g=gan, total=total)
        components = {k: float(v.detach()) for k, v in parts.items()}
        components["normal_angle_deg"] = float(angle)
        return total, components
