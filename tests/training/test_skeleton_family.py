"""The skeleton family (tests/support/skeleton): a model family written only from the kit
(fresnel.training, fresnel.metrics, fresnel.config, fresnel.device). It trains, checkpoints,
resumes exactly and writes the standard table: the proof that a new family copies nothing from
another. Dropped into a copy of the project, it shows what adding a family touches: its
package, its rule file (and scripts), its params section and its doc page, nothing shared."""

import importlib.util
import json
import os
import re
import shutil

import pytest

from fresnel.config import apply_overrides, get_config
from support.workspace import REPO, make_workspace, run

SKELETON = REPO / "tests/support/skeleton"


def load_toy():
    path = SKELETON / "src/fresnel/skeleton/train.py"
    spec = importlib.util.spec_from_file_location("skeleton_toy", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


toy = load_toy()


def test_config_presets_and_overrides_come_from_the_kit():
    cfg = apply_overrides(get_config("tiny", {"tiny": toy.ToyConfig}, toy.ToyConfig),
                          {"epochs": "3", "lr": 1})  # fmt: skip
    assert (cfg.epochs, cfg.lr) == (3, 1.0) and isinstance(cfg.lr, float)


def test_trains_and_beats_the_noisy_input_in_the_standard_table(tmp_path):
    progress = toy.train(toy.ToyConfig(), tmp_path / "run")
    assert progress.history[-1]["train_loss"] < progress.history[0]["train_loss"]
    assert "seconds" not in progress.history[0]  # wall clock stays out of checkpoints
    summary = toy.evaluate(tmp_path / "run", tmp_path / "eval")
    assert summary["model"]["psnr"]["mean"] > summary["noisy input"]["psnr"]["mean"] + 1.0
    table = (tmp_path / "eval/table.md").read_text()
    assert table.startswith("toy denoising\n\n| method | PSNR | SSIM |") and "| model |" in table
    assert (tmp_path / "eval/per_item.csv").read_text().count("\n") == 1 + 2 * 16
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"toy_last.pt", "toy_best.pt", "toy_epoch2.pt", "toy_epoch6.pt"} <= files
    assert {"history.json", "curves.png", "tensorboard"} <= files


def test_a_stopped_run_resumes_to_the_same_bytes_as_an_uninterrupted_one(tmp_path):
    toy.train(toy.ToyConfig(), tmp_path / "whole")
    toy.train(toy.ToyConfig(), tmp_path / "parts", stop_after=3)
    toy.train(toy.ToyConfig(), tmp_path / "parts", resume=tmp_path / "parts/toy_last.pt")
    for name in ("toy_last.pt", "toy_best.pt", "toy_epoch6.pt"):
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "parts" / name).read_bytes()
    history = json.loads((tmp_path / "parts/history.json").read_text())["epochs"]
    assert [r["epoch"] for r in history] == [1, 2, 3, 4, 5, 6]


def add_skeleton(ws) -> None:
    """What adding the family means: new files in its package, rule file, scripts, report and
    doc page, and its section appended to params.yaml. No shared file is edited."""
    for path in SKELETON.rglob("*"):
        if path.is_file() and path.name != "params.yaml":
            target = ws / path.relative_to(SKELETON)
            assert not target.exists(), f"{target} is a shared file"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    with (ws / "params.yaml").open("a") as params:
        params.write((SKELETON / "params.yaml").read_text())


@pytest.mark.slow
def test_a_new_family_joins_cli_dag_demo_and_contract_touching_no_shared_file(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    shutil.copytree(REPO / "tests", ws / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "pyproject.toml", ws / "pyproject.toml")  # pytest's settings
    add_skeleton(ws)
    env = {"PYTHONPATH": f"{ws / 'src'}{os.pathsep}{ws / 'tests'}"}
    assert "skeleton_train" in run("fresnel --help", ws, env=env).stdout
    assert "skeleton_evaluate" in run("snakemake --list", ws, env=env).stdout
    assert "results/skeleton/eval" in run("fresnel demo-targets", ws, env=env).stdout.split()
    run("fresnel check-params", ws, env=env)
    plan = run("snakemake -n results/skeleton/eval", ws, env=env)
    assert "skeleton_train" in plan.stdout + plan.stderr
    contract = run("python -m pytest -q -p no:cacheprovider tests/test_contract.py -k skeleton",
                   ws, env=env, check=False)  # fmt: skip
    assert contract.returncode == 0, contract.stdout[-4000:]
    # every item of the contract: options (2), rules, threads, errors, doc page, kill and
    # resume, missing data
    assert re.search(r"\b8 passed\b", contract.stdout), contract.stdout[-2000:]
