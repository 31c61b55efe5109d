"""Rule avatars_train: one GaussianAvatars run (logic in fresnel.avatars.train). Trains in a
work folder that survives a killed job; a rerun resumes from its last chkpnt{N}.pth."""

from fresnel.avatars.options import AvatarOptions
from fresnel.avatars.train import latest_checkpoint, train
from fresnel.device import resolve
from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec:
    options = AvatarOptions.from_dict(dict(snakemake.params.cfg), "params.yaml avatars")
    with resumable(snakemake, latest_checkpoint, rec) as (work, resume):
        rec.stats = train(snakemake.input.data, work, options, resolve(rec.device), resume,
                          progress=False)  # fmt: skip
