"""Alternative iPhone student: PLK (pre-computed large kernel) bottleneck instead of a ViT.

One 17x17 depthwise kernel shared by 3 PLK blocks plus a dynamic 3x3 branch: memory grows
linearly with the pixel count. 512x512 views -> 1024x1024 maps via a 2x SR head, so it trains
on the same 1024 teacher shards as mobilenetv3_512 (the guide contradicts itself here; see
fresnel.pbr.student). Converges in 50-70 epochs.
"""

from fresnel.pbr.student_config import StudentConfig, get_student_config


def get_config() -> StudentConfig:
    # The preset is defined once, in fresnel.pbr.student_config; a variant of this file
    # changes fields of the returned config before returning it.
    return get_student_config("convattn_student")
