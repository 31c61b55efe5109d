"""VPOG's AR against its training budget, beside the random template and the oracle.

    python benchmarks/vpog_budget.py [--epochs 2,4,8,16,32] [--workdir DIR]

On the demo's data (`make demo` first: data/vpog/templates, train_pbr_web, test_pbr_web) and
params.yaml's `vpog.train` config, one run trains to each budget in turn (a rerun resumes from
the last checkpoint, and the optimiser has no schedule, so the model at N epochs is the one a
run of N epochs gives: the demo's 8 epochs land on the demo's table), and after each budget
`vpog_evaluate` scores the held-out queries. Writes benchmarks/results/vpog_budget.json and
vpog_budget.png (AR and retrieval accuracy against epochs; the oracle's AR is the pose stage's
ceiling, the random template its floor).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from common import RESULTS, save
from fresnel.vpog.config import compose
from fresnel.vpog.evaluate import evaluate_run
from fresnel.vpog.train import dag_overrides, train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "vpog"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", default="2,4,8,16,32")
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    if not (DATA / "test_pbr_web").is_dir():
        raise SystemExit(f"{DATA}: no demo data; run `make demo` first")
    section = yaml.safe_load((REPO / "params.yaml").read_text())["vpog"]["train"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        run = (args.workdir or Path(tmp)) / "run"
        for epochs in [int(e) for e in args.epochs.split(",")]:
            overrides = dag_overrides({**section, "max_epochs": epochs}, DATA / "train_pbr_web",
                                      DATA / "templates", run, "cpu")  # fmt: skip
            start = time.perf_counter()
            stats = train(compose(overrides), progress=False)
            seconds = time.perf_counter() - start
            summary = evaluate_run(run, DATA / "test_pbr_web", DATA / "templates",
                                   run.parent / f"eval_{epochs}", progress=False)  # fmt: skip
            rows.append({"epochs": epochs, "train_seconds": round(seconds, 1),
                         "train_accuracy": stats.get("train/accuracy_epoch"), **{
                             f"{method}.{key}": value for method, row in summary.items()
                             for key, value in row.items()}})  # fmt: skip
            print(epochs, {k: round(v, 3) for k, v in rows[-1].items() if "AR" in k}, flush=True)
    save("vpog_budget", {"config": "params.yaml vpog.train, max_epochs varied", "rows": rows})
    plot(rows, RESULTS / "vpog_budget.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [row["epochs"] for row in rows]
    fig, (ar, retrieval) = plt.subplots(1, 2, figsize=(9, 3.5))
    for method, style in (("vpog", "o-"), ("oracle", "s--"), ("random_template", "x:")):
        ar.plot(epochs, [row[f"{method}.AR"] for row in rows], style, label=method)
        retrieval.plot(epochs, [row[f"{method}.retrieval_accuracy"] for row in rows], style,
                       label=method)  # fmt: skip
    for axes, title in ((ar, "BOP AR (held-out queries)"), (retrieval, "retrieval accuracy")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("training epochs")
        axes.set_title(title)
        axes.set_ylim(0, 1)
        axes.grid(alpha=0.3)
    ar.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
