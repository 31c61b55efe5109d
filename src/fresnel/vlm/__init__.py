"""VLM semantic guidance: per-image importance density maps for loss weighting.

Layers, bottom up:

* ``client``    - OpenAI-compatible chat/completions client (LM Studio by default): image
  input as a base64 data URL, timeouts, bounded retries with backoff, an in-flight limit;
* ``grid``      - the prompts, and parsers that turn free-form answers into a grid, a
  yes/no, or facial landmarks (or reject them with a reason);
* ``density``   - pure numpy: grid -> density, landmarks -> Gaussian blobs, normalisation
  (non-negative, mean 1) and importance levels;
* ``offline``   - a provider that needs no server: scikit-image's LBP face cascade plus
  landmark priors, or spectral-residual saliency when no face is found;
* ``providers`` - the "vlm" (grid or smart mode) and "offline" providers behind one API;
* ``visualize`` - ``{name}_density.png``, ``{name}_density.npy``, ``{name}_segments.png``;
* ``stage``     - the pipeline stage: manifest in, ``{id}_vlm_density.npy`` out, with an
  answer cache keyed by image content, prompt, model, grid size and smart mode.
"""
