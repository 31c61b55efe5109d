"""Desktop / high-memory student: 2048x2048 views -> 2048x2048 maps, no SR head.

Train it on full-resolution teacher shards (`teacher_infer` without --shard-output-size).
The ViT attends over a 16x16 token grid per view (the 64x64 bottleneck average-pooled 4x),
because attention memory grows as the square of the token count.
"""

from fresnel.pbr.student_config import StudentConfig, get_student_config


def get_config() -> StudentConfig:
    # The preset is defined once, in fresnel.pbr.student_config; a variant of this file
    # changes fields of the returned config before returning it.
    return get_student_config("mobilenetv3_2048")
