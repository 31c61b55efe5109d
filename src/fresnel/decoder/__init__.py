"""Gaussian decoders: DINOv2 patch features + relative depth -> packed 3D Gaussians.

``gaussians`` holds the packed (B, N, 14) layout, the camera convention and the depth prior;
``models`` the three experiments (``build_decoder``); ``fresnel_zones`` the guide's
Fresnel-inspired utilities. Nothing here imports the renderer.
"""

from fresnel.decoder.gaussians import (
    FOV_DEGREES,
    PACKED_DIM,
    intrinsics,
    pack,
    patch_rays,
    select_per_patch,
    unpack,
)
from fresnel.decoder.models import (
    EXPERIMENTS,
    DecoderFlags,
    DirectPatchDecoder,
    FeatureGuidedDecoder,
    GaussianDecoder,
    SAAGRefinementDecoder,
    build_decoder,
    export_onnx,
    saag_init,
)

__all__ = [
    "EXPERIMENTS",
    "FOV_DEGREES",
    "PACKED_DIM",
    "DecoderFlags",
    "DirectPatchDecoder",
    "FeatureGuidedDecoder",
    "GaussianDecoder",
    "SAAGRefinementDecoder",
    "build_decoder",
    "export_onnx",
    "intrinsics",
    "pack",
    "patch_rays",
    "saag_init",
    "select_per_patch",
    "unpack",
]
