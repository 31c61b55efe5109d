"""Highest-fidelity teacher: ResNet101 encoder, a deeper (6-block) cross-view ViT, stronger
SSIM/normal terms, a longer warm-up and a later GAN start. Needs a large GPU at 2048 px.

Use: pass configs/pbr/high_quality.py as the training config (fresnel.pbr.config.get_config).
"""

from __future__ import annotations

from fresnel.pbr.config import TrainConfig


def get_config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.encoder_backbone = "resnet101"
    cfg.model.transformer_depth = 6
    cfg.model.transformer_num_heads = 32
    cfg.model.use_gan = True

    cfg.loss.w_l1 = 1.0
    cfg.loss.w_ssim = 0.5
    cfg.loss.w_normal = 0.8
    cfg.loss.w_gan = 0.1
    cfg.loss.w_albedo = 1.2

    cfg.training.epochs = 200
    cfg.training.batch_size = 1
    cfg.training.gan_start_epoch = 10
    cfg.training.grad_clip_norm = 1.0

    cfg.optimizer.g_lr = 1e-4
    cfg.optimizer.d_lr = 2e-4
    cfg.optimizer.scheduler = "cosine"
    cfg.optimizer.scheduler_warmup_epochs = 10
    return cfg
