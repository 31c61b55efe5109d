"""Normal-heavy loss weights: the angular term (w_normal) and the normal-map L1 weight
(w_normal_map) are raised, the other maps slightly lowered; ResNet50 with the GAN on.

Use: pass configs/pbr/normal_focused.py as the training config (fresnel.pbr.config.get_config).
"""

from __future__ import annotations

from fresnel.pbr.config import TrainConfig


def get_config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.encoder_backbone = "resnet50"
    cfg.model.transformer_depth = 4
    cfg.model.use_gan = True

    cfg.loss.w_l1 = 1.0
    cfg.loss.w_ssim = 0.2
    cfg.loss.w_normal = 1.5
    cfg.loss.w_gan = 0.08
    cfg.loss.w_albedo = 0.8
    cfg.loss.w_roughness = 0.8
    cfg.loss.w_metallic = 0.8
    cfg.loss.w_normal_map = 2.0

    cfg.training.epochs = 150
    cfg.training.batch_size = 1
    cfg.training.gan_start_epoch = 8

    cfg.optimizer.g_lr = 1.5e-4
    cfg.optimizer.d_lr = 2e-4
    cfg.optimizer.scheduler = "cosine"
    return cfg
