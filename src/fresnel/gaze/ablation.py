"""The ablation table of GazeGaussian's three contributions: one row per variant (same seed and
training budget), from each run's history and each evaluation's metrics."""

from __future__ import annotations

import json
from pathlib import Path

from fresnel import metrics

COLUMNS = (
    ("renderer", "renderer"),
    ("vae", "VAE"),
    ("orthogonality", "orth. loss"),
    ("psnr", "PSNR"),
    ("ssim", "SSIM"),
    ("gaze_error_deg", "gaze err (deg)"),
    ("gaze_error_no_redirection_deg", "no redirection (deg)"),
    ("head_pose_error_deg", "head pose err (deg)"),
    ("mean_abs_cos", "mean abs cos"),
    ("train_seconds", "train s"),
)


def variant_row(name: str, run_dir, eval_dir) -> dict:
    history = json.loads((Path(run_dir) / "history.json").read_text())
    options = history["options"]
    last = history["epochs"][-1]
    found = json.loads((Path(eval_dir) / "metrics.json").read_text())["metrics"]
    return {
        "variant": name,
        "renderer": options["neural_renderer_type"],
        "vae": "on" if options["use_vae"] else "off",
        "orthogonality": "on" if options["use_orthogonality_loss"] else "off",
        "epochs": last["epoch"],
        "mean_abs_cos": last["val_mean_abs_cos"],
        "train_seconds": sum(r.get("seconds", 0.0) for r in history["epochs"]),
        **{k: found[k] for k in ("psnr", "ssim", "gaze_error_deg", "gaze_error_no_redirection_deg",
                                 "head_pose_error_deg", "head_pose_error_no_redirection_deg",
                                 "estimator_error_on_real_deg", "lpips", "fid", "frames")},
    }  # fmt: skip


def _cell(value) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    axes[0].bar(names, [r["gaze_error_deg"] for r in rows], label="redirected")
    axes[0].axhline(rows[0]["gaze_error_no_redirection_deg"], color="k", ls="--",
                    label="no redirection")  # fmt: skip
    axes[0].set_ylabel("gaze error (deg)")
    axes[0].legend(fontsize=8)
    axes[1].bar(names, [r["psnr"] for r in rows])
    axes[1].set_ylabel("reconstruction PSNR (dB)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_ablation(runs: dict, evaluations: dict, out_dir) -> dict:
    """table.md, table.png, per_item.csv and summary.json in out_dir."""
    out_dir = Path(out_dir)
    rows = [variant_row(name, runs[name], evaluations[name]) for name in runs]
    first = rows[0]
    note = (f"GazeGaussian ablation: {first['epochs']} epochs each, same seed; metrics on "
            f"{first['frames']} held-out frames, measured by an estimator trained on the test "
            f"subjects only (its error on the real frames: "
            f"{first['estimator_error_on_real_deg']:.1f} deg). LPIPS: {_cell(first['lpips'])}; "
            f"FID: {first['fid']}.")  # fmt: skip
    table = metrics.markdown_table(["variant", *(label for _, label in COLUMNS)],
                                   [[r["variant"], *(_cell(r[k]) for k, _ in COLUMNS)]
                                    for r in rows], note=note)  # fmt: skip
    summary = {r["variant"]: {k: r[k] for k, _ in COLUMNS} for r in rows}
    metrics.write_table(out_dir, rows, summary, table)
    _plot(rows, out_dir / "table.png")
    return {"variants": len(rows)}
