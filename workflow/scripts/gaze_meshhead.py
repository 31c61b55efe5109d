"""Rule gaze_meshhead: step 1, the canonical MeshHead on the training subjects
(fresnel.gaze.meshhead). Trains in a work folder that survives a killed job; a rerun resumes
from its checkpoints/last.pth."""

from fresnel.gaze.meshhead import NAMES, train_meshhead
from fresnel.gaze.options import MeshHeadOptions
from fresnel.pipeline.adapter import stage
from fresnel.pipeline.resume import resumable

with stage(snakemake) as rec, resumable(snakemake, f"checkpoints/{NAMES.last}", rec) as (work, _):
    options = MeshHeadOptions.from_dict({**snakemake.params.cfg, "img_dir": snakemake.input.data,
                                         "run_dir": str(work), "num_workers": 0})  # fmt: skip
    rec.stats = train_meshhead(options, progress=False)
