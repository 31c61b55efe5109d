"""Student for iPhone (the guide's recommended one): 512x512 views -> 1024x1024 maps.

MobileNetV3-Large encoder shared by the three views, a small ViT (dim 256, depth 2) fusing
the bottleneck tokens of all views, and a trained 2x super-resolution head. Train it on
1024 teacher shards (`teacher_infer --shard-output-size 1024`).
"""

from fresnel.pbr.student_config import StudentConfig, get_student_config


def get_config() -> StudentConfig:
    # The preset is defined once, in fresnel.pbr.student_config; a variant of this file
    # changes fields of the returned config before returning it.
    return get_student_config("mobilenetv3_512")
