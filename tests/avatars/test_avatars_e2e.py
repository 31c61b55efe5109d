"""End to end: the GaussianAvatars ablation (guide section 9.1) built by the DAG on the
synthetic head, on the CPU, and only the stale runs rerunning after a params edit."""

import json
import re

import pytest
import yaml

from support.workspace import assert_docs_show_the_tables_of, make_workspace, run

pytestmark = pytest.mark.slow
ABLATION = "results/avatars/synthetic/ablation"
RUNS = ["baseline", "ablation_1", "ablation_2", "ablation_3", "ablation_4", "ablation_5"]


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("avatars") / "ws")
    run(f"snakemake --profile cpu {ABLATION}", ws)
    return ws


def planned_runs(ws, target=ABLATION) -> set[str]:
    """The avatar runs a dry run would train."""
    out = run(f"snakemake -n {target}", ws)
    text = out.stdout + out.stderr
    jobs = re.findall(r"rule avatars_train:.*?avatar_run=([\w.]+)", text, flags=re.S)
    return set(jobs)


def edit(ws, section: str, key: str, value) -> None:
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["avatars"]["additions"][section][key] = value
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def test_the_ablation_table_has_every_run_with_deltas_to_the_baseline(ablation):
    table = ablation / ABLATION
    rows = json.loads((table / "summary.json").read_text())["runs"]
    assert [r["run"] for r in rows] == RUNS
    assert rows[5]["additions"] == ("region_adaptive_loss+smart_densification+"
                                    "progressive_resolution+color_calibration+contrastive_reg")  # fmt: skip
    assert rows[0]["novel_view.PSNR.delta"] == 0.0
    assert all(r["novel_view.PSNR"] > 15 for r in rows), rows
    text = (table / "table.md").read_text()
    assert "held-out-timestep PSNR" in text and ("(+" in text or "(-" in text)
    assert (table / "table.png").stat().st_size > 10_000


def test_the_rigging_drives_the_gaussians_on_held_out_timesteps(ablation):
    for name in RUNS:
        summary = json.loads(
            (ablation / f"results/avatars/synthetic/eval/{name}/summary.json").read_text()
        )
        assert summary["held_out"]["PSNR"] > summary["frozen_t0"]["PSNR"] + 1.0, (name, summary)
        assert summary["video"] == "held_out.mp4"
        assert 15 < summary["held_out"]["face_region_PSNR"] < summary["held_out"]["PSNR"]


def test_a_second_call_reruns_nothing_and_an_edit_reruns_only_the_runs_that_use_it(ablation):
    assert planned_runs(ablation) == set()
    edit(ablation, "contrastive_reg", "lambda_contrastive", 0.02)
    assert planned_runs(ablation) == {"ablation_5"}
    edit(ablation, "region_adaptive_loss", "region_weight_eyes", 3.0)
    assert planned_runs(ablation) == set(RUNS) - {"baseline"}


def test_the_report_shows_the_table(ablation):
    run(f"snakemake --report report.zip {ABLATION}", ablation)
    assert (ablation / "report.zip").stat().st_size > 20_000


def test_the_doc_page_shows_this_table(ablation):
    assert_docs_show_the_tables_of(ablation, "avatars.md")
