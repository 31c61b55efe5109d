"""What every model family's training shares: checkpoints, AMP, seeding, the run log and
data-parallel ranks.

    from fresnel.training import Amp, Checkpointer, CheckpointNames, Progress, RunLog
    world = distributed.init(device)                      # torchrun / srun ranks, else one
    amp = Amp(target, enabled=cfg.use_amp)                # autocast + GradScaler, one policy
    ckpt = Checkpointer(out_dir, CheckpointNames(), model=model, optimizer=opt, scaler=amp.scaler)
    progress = ckpt.load(resume) if resume else Progress()  # exact resume
    ...
    amp.step(loss, opt, model.parameters(), clip=1.0,       # finite check, unscale, clip, step
             reduce=lambda: world.reduce_gradients(model.parameters(), share_of_batch))
    ckpt.save_epoch(progress, config, improved=..., periodic=...)

A family owns its model, data, losses and step; this package owns the plumbing around them.
"""

from fresnel.training.amp import Amp, TrainingDiverged
from fresnel.training.checkpoint import (
    Checkpointer,
    CheckpointNames,
    Progress,
    final_checkpoint,
    read_checkpoint,
)
from fresnel.training.distributed import World
from fresnel.training.runlog import LogFile, Panel, RunLog, plot_curves
from fresnel.training.seeding import EPOCH_SEED_STRIDE, epoch_generator, epoch_seed

__all__ = [
    "EPOCH_SEED_STRIDE",
    "Amp",
    "CheckpointNames",
    "Checkpointer",
    "LogFile",
    "Panel",
    "Progress",
    "RunLog",
    "TrainingDiverged",
    "World",
    "epoch_generator",
    "epoch_seed",
    "final_checkpoint",
    "plot_curves",
    "read_checkpoint",
]
