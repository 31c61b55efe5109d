"""Student for iPhone (the guide's recommended one): 512x512 views -> 1024x1024 maps.

MobileNetV3-Large encoder shared by the three views, a small ViT (dim 256, depth 2) fusing
the bottleneck tokens of all views, and a trained 2x super-resolution head. Train it on
1024 teacher shards (`teacher_infer --shard-output-size 1024`).
"""

from fresnel.pbr.student import StudentConfig


def get_config() -> StudentConfig:
    cfg = StudentConfig()
    cfg.model.arch = "mobilenetv3_vit"
    cfg.model.width_mult = 1.0
    cfg.model.transformer_dim = 256
    cfg.model.transformer_depth = 2
    cfg.model.transformer_heads = 8
    cfg.model.use_sr = True
    cfg.model.sr_scale = 2

    cfg.data.image_size = 512
    cfg.data.output_size = 1024

    cfg.training.epochs = 100
    cfg.training.batch_size = 8
    cfg.training.lr = 1e-3
    cfg.training.alpha = 0.7
    return cfg
