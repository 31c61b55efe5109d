"""One checkpoint layout for every family, saved atomically and resumed exactly.

A checkpoint is a plain dict that loads with `torch.load(weights_only=True)`:

    format       "fresnel.training/1"
    config       the run's config as a plain dict
    epoch        epochs completed          global_step   optimiser steps taken
    best_metric  best monitored value      best_epoch    the epoch that reached it
    history      per-epoch records (no wall-clock values: two identical runs give
                 byte-identical files; timings live in the run log's history.json)
    extra        family data (the train/val split, ...)
    <component>  one state dict per component, under the key the family chose
                 (`model`, `optimizer`, ... or the guide's `generator_state_dict`, ...)

File names come from `CheckpointNames`: every epoch writes `last`, an improved monitored
metric copies it to `best`, and every N-th epoch to the periodic name. The stages read the
final weights through `final_checkpoint`, which is `last` of a finished run.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from fresnel.io import write_bytes

FORMAT = "fresnel.training/1"
PROGRESS_KEYS = ("epoch", "global_step", "best_metric", "best_epoch", "history")
# Record keys that measure time: kept out of checkpoints so reruns are byte-identical.
WALL_CLOCK_KEYS = frozenset({"seconds", "epoch_seconds", "iter_time"})


class CheckpointError(ValueError):
    """A checkpoint that is missing, unsafe to load, or not of the expected kind."""


@dataclass(frozen=True)
class CheckpointNames:
    last: str = "last.pt"
    best: str = "best.pt"
    periodic: str = "epoch_{epoch}.pt"  # formatted with epoch=N

    def epoch(self, epoch: int) -> str:
        return self.periodic.format(epoch=epoch)


@dataclass
class Progress:
    """Counters a resume restores; `best_metric` is lower-is-better (negate a PSNR)."""

    epoch: int = 0
    global_step: int = 0
    best_metric: float = math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)

    def finish_epoch(self, record: dict, monitored: float | None = None) -> bool:
        """Count the epoch `record["epoch"]` as done; True when `monitored` improved."""
        self.epoch = int(record["epoch"])
        self.history.append({k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS})
        if monitored is not None and monitored < self.best_metric:
            self.best_metric, self.best_epoch = float(monitored), self.epoch
            return True
        return False


class Checkpointer:
    """Saves and restores the named components of one run (modules, optimisers, schedulers,
    AMP scalers: anything with state_dict/load_state_dict; None entries are skipped)."""

    def __init__(self, directory, names: CheckpointNames = CheckpointNames(), **components):
        self.dir = Path(directory)
        self.names = names
        self.components = {k: v for k, v in components.items() if v is not None}

    def state(self, progress: Progress, config: dict, extra: dict | None = None) -> dict:
        state = {"format": FORMAT, "config": config, **asdict(progress), "extra": extra or {}}
        state.update({k: c.state_dict() for k, c in self.components.items()})
        return state

    def save(self, name: str, progress: Progress, config: dict, extra=None) -> Path:
        path = self.dir / name
        write_bytes(path, serialize(self.state(progress, config, extra)))
        return path

    def save_epoch(self, progress: Progress, config: dict, *, improved: bool, periodic: bool,
                   extra: dict | None = None) -> dict[str, Path]:  # fmt: skip
        """Write `last`; copy its bytes to `best` when improved and to the periodic name."""
        data = serialize(self.state(progress, config, extra))
        written = {"last": self.dir / self.names.last}
        if improved:
            written["best"] = self.dir / self.names.best
        if periodic:
            written["periodic"] = self.dir / self.names.epoch(progress.epoch)
        for path in written.values():
            write_bytes(path, data)
        return written

    def load(self, path, map_location="cpu") -> tuple[Progress, dict]:
        """Restore every component from `path`; returns (progress, extra)."""
        return self.restore(read_checkpoint(path, map_location), path)

    def restore(self, state: dict, source="checkpoint") -> tuple[Progress, dict]:
        """`load` from a state already read (to check its config first); `source` names it."""
        missing = sorted(set(self.components) - set(state))
        if missing:
            raise CheckpointError(f"{source}: has no {', '.join(missing)}; not this run's kind")
        for key, component in self.components.items():
            component.load_state_dict(state[key])
        progress = Progress(**{k: state[k] for k in PROGRESS_KEYS})
        progress.history = list(progress.history)
        return progress, dict(state.get("extra", {}))


class _ValuePickler(pickle.Pickler):
    """A pickler without memo: equal values give equal bytes, whichever objects happen to be
    shared (a resumed run's history holds other string objects than a fresh run's)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fast = True


_VALUE_PICKLE = types.SimpleNamespace(Pickler=_ValuePickler, __name__="pickle")


def serialize(state: dict) -> bytes:
    """torch.save into memory: the bytes depend only on the state's values (not on a file
    name, a clock or object identity)."""
    buffer = io.BytesIO()
    torch.save(state, buffer, pickle_module=_VALUE_PICKLE)
    return buffer.getvalue()


def read_checkpoint(path, map_location="cpu") -> dict:
    """torch.load(weights_only=True) with errors that name the file and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: it holds objects other than tensors and plain data, and "
            "loading it could run code; use a checkpoint written by fresnel "
            f"({str(exc).splitlines()[0][:120]})"
        ) from None
    except (RuntimeError, EOFError, ValueError, struct.error) as exc:
        raise CheckpointError(
            f"{path}: unreadable checkpoint (truncated or not torch): {exc}"
        ) from None
    if not isinstance(state, dict) or "config" not in state:
        raise CheckpointError(f"{path}: not a training checkpoint (no 'config' entry)")
    return state


def final_checkpoint(run_dir, names: CheckpointNames = CheckpointNames()) -> Path:
    """The final weights of a finished run: its `last` checkpoint."""
    path = Path(run_dir) / names.last
    if not path.is_file():
        raise CheckpointError(f"{run_dir}: no {names.last}; train the run first (or resume it)")
    return path
