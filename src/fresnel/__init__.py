"""Fresnel pipelines: reproducible, cached training pipeline for image-to-3D models.

The package holds all logic; Snakemake rules and DVC stages only call into it.
"""

__version__ = "0.1.0"
