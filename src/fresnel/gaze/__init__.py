"""GazeGaussian: gaze geometry, orthogonal condition embeddings, DiT / U-Net renderers + VAE."""
