"""Rule gaze_evaluate: the guide's redirected samples of one variant and its metrics on the
held-out frames, measured by the test-subject estimator (fresnel.gaze.redirect)."""

from pathlib import Path

from fresnel.gaze import redirect
from fresnel.gaze.train import final_gazegaussian
from fresnel.pipeline.adapter import stage

with stage(snakemake) as rec:
    cfg = snakemake.params.cfg
    rec.stats = redirect.test_gazegaussian(
        final_gazegaussian(snakemake.input.run), snakemake.input.data, snakemake.output[0],
        estimator_path=str(Path(snakemake.input.estimator) / "estimator.pth"),
        num_samples=cfg["num_samples"], lpips_weights=cfg["lpips_weights"] or None, seed=cfg["seed"],
    )  # fmt: skip
