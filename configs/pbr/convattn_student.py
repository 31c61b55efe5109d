"""Alternative iPhone student: PLK (pre-computed large kernel) bottleneck instead of a ViT.

One 17x17 depthwise kernel shared by 3 PLK blocks plus a dynamic 3x3 branch: memory grows
linearly with the pixel count. 512x512 views -> 1024x1024 maps via a 2x SR head, so it trains
on the same 1024 teacher shards as mobilenetv3_512 (the guide contradicts itself here; see
fresnel.pbr.student). Converges in 50-70 epochs.
"""

from fresnel.pbr.student import StudentConfig


def get_config() -> StudentConfig:
    cfg = StudentConfig()
    cfg.model.arch = "convattn"
    cfg.model.width_mult = 1.0
    cfg.model.transformer_dim = 256
    cfg.model.plk_kernel_size = 17
    cfg.model.plk_blocks = 3
    cfg.model.use_sr = True
    cfg.model.sr_scale = 2

    cfg.data.image_size = 512
    cfg.data.output_size = 1024

    cfg.training.epochs = 60
    cfg.training.batch_size = 8
    return cfg
