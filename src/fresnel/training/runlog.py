"""The run log of a training run: per-epoch scalars to TensorBoard, dvclive (for `dvc plots`)
and `history.json`, `curves.png` of the chosen panels, and Weights & Biases when a config
asks for it (offline mode unless the config says otherwise; a missing wandb package is an
error, never silently ignored).

`history.json` is `{"epochs": [record, ...], **meta}`. A resumed run keeps the records of
the epochs it did not redo. Wall-clock values (the records' `WALL_CLOCK_KEYS`, and TensorBoard's
event files, named by time, host and PID) go to `clock_dir` when one is given: `timings.json`
there holds them per epoch, across resumes, and the run directory then holds the same bytes on
every run (the DAG's tracked outputs). Without it they stay in the run directory.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from fresnel.io import atomic_path, write_json
from fresnel.training.checkpoint import WALL_CLOCK_KEYS

log = logging.getLogger(__name__)

HISTORY = "history.json"
TIMINGS = "timings.json"
CURVES = "curves.png"


@dataclass(frozen=True)
class Panel:
    """One plot of curves.png: the record keys drawn against the epoch."""

    ylabel: str
    keys: tuple[str, ...]
    log_scale: bool = False


DEFAULT_PANELS = (Panel("loss", ("train_loss", "val_loss"), log_scale=True),)


class LogFile:
    """A run's human-readable `log.txt` (the lines a guide promises); each line also goes to
    the module logger."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text.rstrip("\n") + "\n")
        for line in text.splitlines():
            log.info("%s", line)


class RunLog:
    def __init__(self, directory, *, resume_epoch: int = 0, panels=DEFAULT_PANELS,
                 tensorboard_dir=None, dvclive: bool = False, wandb: dict | None = None,
                 meta: dict | None = None, clock_dir=None):  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.clock_dir = Path(clock_dir) if clock_dir else None
        self.panels, self.meta = tuple(panels), dict(meta or {})
        self.records = _previous_records(self.dir / HISTORY, resume_epoch)
        self.timings = []
        if self.clock_dir is not None:
            self.clock_dir.mkdir(parents=True, exist_ok=True)
            self.timings = _previous_records(self.clock_dir / TIMINGS, resume_epoch)
        tensorboard_dir = tensorboard_dir or (self.clock_dir or self.dir) / "tensorboard"
        self.tensorboard = SummaryWriter(str(tensorboard_dir))
        self.live = self._dvclive() if dvclive else None
        self.wandb = _start_wandb(wandb, self.dir) if wandb else None

    def _dvclive(self):
        """A fresh dvclive folder replaying the kept records: on a resume it then holds
        exactly the steps an uninterrupted run has (dvclive's own resume appends after the
        last step written, which may be an epoch being redone)."""
        from dvclive import Live

        live = Live(str(self.dir / "dvclive"), save_dvc_exp=False, dvcyaml=None, report=None)
        for record in self.records:
            _log_live(live, record)
        return live

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        """Step-level scalars (TensorBoard and W&B only)."""
        for name, value in _numbers(values):
            self.tensorboard.add_scalar(f"{prefix}{name}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}{k}": v for k, v in _numbers(values)}, step=step)

    def epoch(self, record: dict) -> None:
        """Log one epoch's record (it has an `epoch` key) everywhere and rewrite history.json
        (and timings.json)."""
        epoch = record["epoch"]
        numbers = [(k, v) for k, v in _numbers(record) if k != "epoch"]
        for name, value in numbers:
            self.tensorboard.add_scalar(name, value, epoch)
        if self.clock_dir is not None:
            self.timings.append(
                {k: v for k, v in record.items() if k == "epoch" or k in WALL_CLOCK_KEYS}
            )
            write_json(self.clock_dir / TIMINGS, {"epochs": self.timings})
            record = {k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS}
            numbers = [(k, v) for k, v in numbers if k not in WALL_CLOCK_KEYS]
        self.records.append(record)
        if self.live is not None:
            _log_live(self.live, record)
        if self.wandb is not None:
            self.wandb.log({**dict(numbers), "epoch": epoch})
        self.tensorboard.flush()
        write_json(self.dir / HISTORY, {"epochs": self.records, **self.meta})

    def close(self) -> None:
        """Flush everything and draw curves.png (also after an interrupted run)."""
        self.tensorboard.close()
        if self.live is not None:
            self.live.end()
        if self.wandb is not None:
            self.wandb.finish()
        if self.records:
            plot_curves(self.records, self.dir / CURVES, self.panels)


def _log_live(live, record: dict) -> None:
    """In sorted order, as history.json holds a record (a replay then writes the same bytes)."""
    for name, value in sorted(_numbers(record)):
        if name != "epoch":
            live.log_metric(name, value)
    live.next_step()


def _numbers(values: dict):
    for key, value in values.items():
        if _is_number(value):
            yield key, value


def _previous_records(path: Path, resume_epoch: int) -> list[dict]:
    if resume_epoch <= 0 or not path.is_file():
        return []
    records = json.loads(path.read_text()).get("epochs", [])
    return [r for r in records if r.get("epoch", 0) <= resume_epoch]


def _start_wandb(settings: dict, directory: Path):
    try:
        import wandb
    except ImportError:
        raise RuntimeError(
            "the config turns Weights & Biases on (use_wandb) but the wandb package is not "
            "installed: `pip install wandb`, or set use_wandb to false"
        ) from None
    settings = {"mode": "offline", **settings}
    log.info("Weights & Biases: project %s, mode %s", settings.get("project"), settings["mode"])
    return wandb.init(dir=str(directory), **settings)


def plot_curves(records: list[dict], path, panels=DEFAULT_PANELS) -> None:
    """One subplot per panel: each of its keys that the records hold, against the epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for key in panel.keys:
            points = [(r["epoch"], r[key]) for r in records if _is_number(r.get(key))]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=key)
        ax.set(xlabel="epoch", ylabel=panel.ylabel, yscale="log" if panel.log_scale else "linear")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
