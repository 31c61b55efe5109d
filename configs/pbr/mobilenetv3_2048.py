"""Desktop / high-memory student: 2048x2048 views -> 2048x2048 maps, no SR head.

Train it on full-resolution teacher shards (`teacher_infer` without --shard-output-size).
The ViT attends over a 16x16 token grid per view (the 64x64 bottleneck average-pooled 4x),
because attention memory grows as the square of the token count.
"""

from fresnel.pbr.student import StudentConfig


def get_config() -> StudentConfig:
    cfg = StudentConfig()
    cfg.model.arch = "mobilenetv3_vit"
    cfg.model.width_mult = 1.0
    cfg.model.transformer_dim = 256
    cfg.model.transformer_depth = 2
    cfg.model.transformer_heads = 8
    cfg.model.attention_grid = 16
    cfg.model.use_sr = False

    cfg.data.image_size = 2048
    cfg.data.output_size = 2048

    cfg.training.epochs = 100
    cfg.training.batch_size = 2
    return cfg
