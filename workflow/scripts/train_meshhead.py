"""Rule gaze_meshhead: step 1, the canonical MeshHead on the training subjects
(fresnel.gaze.meshhead). Trains in a work folder that survives a killed job; a rerun resumes
from its checkpoints/last.pth."""

from fresnel.gaze.meshhead import NAMES, train_meshhead
from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec, resumable(snakemake, f"checkpoints/{NAMES.last}", rec) as (work, _):
    rec.stats = train_meshhead(snakemake.input.data, run_dir=work, progress=False,
                               **snakemake.params.cfg)  # fmt: skip
