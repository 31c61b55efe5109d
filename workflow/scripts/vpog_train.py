"""Rule vpog_train: params.yaml `vpog.train` handed to Hydra as overrides of
fresnel/vpog/configs/train.yaml, then Lightning (fresnel.vpog.train). Trains in a work folder
that survives a killed job; a rerun resumes from its checkpoints/last.ckpt."""

from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable
from fresnel.vpog.config import compose
from fresnel.vpog.train import LAST_CHECKPOINT, dag_overrides, train

with stage(snakemake) as rec, resumable(snakemake, LAST_CHECKPOINT, rec) as (work, _resume):
    overrides = dag_overrides(snakemake.params.cfg, snakemake.input.queries,
                              snakemake.input.templates, work, rec.device)  # fmt: skip
    rec.stats = train(compose(overrides), progress=False)
