"""Rapid experiments: ResNet18 encoder decoding at half resolution (encoder_stride 2 plus a
learned x2 upsampler), a 2-block ViT and 50 epochs.

Use: pass configs/pbr/fast_iteration.py as the training config (fresnel.pbr.config.get_config).
"""

from __future__ import annotations

from fresnel.pbr.config import TrainConfig


def get_config() -> TrainConfig:
    cfg = TrainConfig()
    cfg.model.encoder_backbone = "resnet18"
    cfg.model.encoder_stride = 2
    cfg.model.transformer_dim = 512  # ResNet18's bottleneck width
    cfg.model.transformer_num_heads = 16
    cfg.model.transformer_depth = 2
    cfg.model.use_gan = True

    cfg.training.epochs = 50
    cfg.training.batch_size = 1
    cfg.training.gan_start_epoch = 5
    cfg.training.save_every_n_epochs = 10

    cfg.optimizer.g_lr = 2e-4
    cfg.optimizer.d_lr = 2e-4
    cfg.optimizer.scheduler = "cosine"
    return cfg
