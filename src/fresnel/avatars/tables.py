"""Comparison tables of GaussianAvatars runs (the guide's presets, its cumulative ablation of
section 9.1 and its sensitivity sweep of 9.2): one row per run with PSNR / SSIM / LPIPS on novel
views and on held-out timesteps, training time and Gaussian count, each with its delta to the
first run (the baseline), as table.md, per_item.csv, summary.json and a plot."""

from __future__ import annotations

import json
from pathlib import Path

from fresnel.io import atomic_path
from fresnel.metrics import SUMMARY, markdown_table, write_table

COLUMNS = (  # (summary key, column title, decimals)
    ("novel_view.PSNR", "novel-view PSNR", 2),
    ("novel_view.SSIM", "novel-view SSIM", 4),
    ("novel_view.LPIPS", "novel-view LPIPS", 4),
    ("held_out.PSNR", "held-out-timestep PSNR", 2),
    ("held_out.SSIM", "held-out-timestep SSIM", 4),
    ("held_out.LPIPS", "held-out-timestep LPIPS", 4),
    ("held_out.face_region_PSNR", "held-out eyes/nose/mouth PSNR", 2),
    ("train_seconds", "train time (s)", 1),
    ("gaussians", "Gaussians", 0),
)


def run_row(name: str, evaluation_dir) -> dict:
    summary = json.loads((Path(evaluation_dir) / SUMMARY).read_text())
    row = {"run": name, "additions": "+".join(summary["additions"]) or "none"}
    for key, _, _ in COLUMNS:
        row[key] = _lookup(summary, key)
    return row


def _lookup(summary: dict, dotted: str):
    value = summary
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def with_deltas(rows: list[dict]) -> list[dict]:
    """Each numeric column's difference to the first row, as `<key>.delta`."""
    base = rows[0]
    out = []
    for row in rows:
        extra = {f"{key}.delta": row[key] - base[key] for key, _, _ in COLUMNS
                 if _numeric(row[key]) and _numeric(base[key])}  # fmt: skip
        out.append({**row, **extra})
    return out


def _numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(row: dict, key: str, decimals: int, first: bool) -> str:
    value = row[key]
    if not _numeric(value):
        return "unavailable" if value is None or isinstance(value, str) else str(value)
    text = f"{value:.{decimals}f}"
    delta = row.get(f"{key}.delta")
    return text if first or delta is None else f"{text} ({delta:+.{decimals}f})"


def markdown(rows: list[dict], title: str, note: str = "") -> str:
    header = ["run", "additions", *(title for _, title, _ in COLUMNS)]
    cells = [[r["run"], r["additions"], *(_cell(r, k, d, i == 0) for k, _, d in COLUMNS)]
             for i, r in enumerate(rows)]  # fmt: skip
    footer = f"Deltas in brackets are to the first row ({rows[0]['run']})." + (
        f" {note}" if note else ""
    )
    return f"## {title}\n\n" + markdown_table(header, cells, footer=footer)


def plot(rows: list[dict], path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["run"] for r in rows]
    panels = [("novel_view.PSNR", "novel-view PSNR (dB)"), ("held_out.PSNR", "held-out PSNR (dB)"),
              ("gaussians", "Gaussians")]  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.2))
    for ax, (key, label) in zip(axes, panels, strict=True):
        values = [r[key] if _numeric(r[key]) else 0.0 for r in rows]
        ax.bar(range(len(rows)), values, color=["#888"] + ["#3a7"] * (len(rows) - 1))
        ax.set_xticks(range(len(rows)), names, rotation=40, ha="right", fontsize=7)
        ax.set_ylabel(label)
        if key != "gaussians":
            low = min(values)
            ax.set_ylim(low - 0.5, max(values) + 0.3)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write(runs: dict[str, Path], out_dir, title: str, note: str = "") -> list[dict]:
    """The table of `runs` (name -> its evaluation folder; the first is the baseline)."""
    rows = with_deltas([run_row(name, folder) for name, folder in runs.items()])
    out_dir = Path(out_dir)
    write_table(out_dir, rows, {"title": title, "runs": rows}, markdown(rows, title, note))
    plot(rows, out_dir / "table.png", title)
    return rows
