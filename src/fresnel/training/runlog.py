"""The run log of a training run: per-epoch scalars to TensorBoard, dvclive (for `dvc plots`)
and `history.json`, `curves.png` of the chosen panels, and Weights & Biases when a config
asks for it (offline mode unless the config says otherwise; a missing wandb package is an
error, never silently ignored).

`history.json` is `{"epochs": [record, ...], **meta}`; records carry wall-clock timings
(checkpoints do not). A resumed run keeps the records of the epochs it did not redo.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from fresnel.io import atomic_path, write_json

log = logging.getLogger(__name__)

HISTORY = "history.json"
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
                 meta: dict | None = None):  # fmt: skip
        from torch.utils.tensorboard import SummaryWriter

        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.panels, self.meta = tuple(panels), dict(meta or {})
        self.records = _previous_records(self.dir / HISTORY, resume_epoch)
        self.tensorboard = SummaryWriter(str(tensorboard_dir or self.dir / "tensorboard"))
        self.live = self._dvclive(resume_epoch) if dvclive else None
        self.wandb = _start_wandb(wandb, self.dir) if wandb else None

    def _dvclive(self, resume_epoch: int):
        from dvclive import Live

        return Live(str(self.dir / "dvclive"), resume=resume_epoch > 0, save_dvc_exp=False,
                    dvcyaml=None, report=None)  # fmt: skip

    def scalars(self, step: int, values: dict, prefix: str = "") -> None:
        """Step-level scalars (TensorBoard and W&B only)."""
        for name, value in _numbers(values):
            self.tensorboard.add_scalar(f"{prefix}{name}", value, step)
        if self.wandb is not None:
            self.wandb.log({f"{prefix}{k}": v for k, v in _numbers(values)}, step=step)

    def epoch(self, record: dict) -> None:
        """Log one epoch's record (it has an `epoch` key) everywhere and rewrite history.json."""
        epoch = record["epoch"]
        self.records.append(record)
        numbers = [(k, v) for k, v in _numbers(record) if k != "epoch"]
        for name, value in numbers:
            self.tensorboard.add_scalar(name, value, epoch)
        if self.live is not None:
            for name, value in numbers:
                self.live.log_metric(name, value)
            self.live.next_step()
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
