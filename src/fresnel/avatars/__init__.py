"""GaussianAvatars (guide 004): 3D Gaussians rigged to the triangles of a head mesh.

- `binding`: face frames, Gaussians bound to faces, densify / prune that keep the binding;
- `head`: the built-in synthetic parametric head; `flame`: FLAME from the user's licensed
  files (a restricted unpickler); both behind one interface;
- `densify`: view-space gradient statistics (correct under AMP), percentile densification;
  `calibration`: the colour-calibration network (identity at start).
"""
