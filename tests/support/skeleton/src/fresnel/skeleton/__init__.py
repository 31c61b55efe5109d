"""A model family written only from the kit (fresnel.training, fresnel.metrics, fresnel.config,
fresnel.device): a denoising toy that trains, checkpoints, resumes exactly and writes the
standard table. tests/training/test_skeleton_family.py drops it into a copy of the project to
show what adding a family touches: this package, its rule file, its params section, its doc."""
