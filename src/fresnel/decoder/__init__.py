"""The Fresnel Gaussian decoder: DINOv2 features + depth -> 3D Gaussians.

gaussians (packed layout, camera), models (experiments 1-3), fresnel_zones (the guide's
Fresnel-inspired flags), config/train/hfts/losses/pictures (training), export (ONNX,
inference, PLY), evaluate (held-out metrics and baselines). Import the module you need;
this package file stays empty so that importing one does not load the others.
"""
