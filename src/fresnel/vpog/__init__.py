"""VPOG: template-based pose estimation of unseen objects."""
