"""End to end: VPOG's chain built by the DAG on synthetic objects, on the CPU: templates ->
query shards -> Lightning training on the Hydra config params.yaml hands over -> BOP AR and
retrieval on held-out queries against the random-template baseline."""

import json

import pytest

from support.workspace import (
    assert_docs_show_the_tables_of,
    make_workspace,
    planned_rules,
    run,
    set_param,
)

pytestmark = pytest.mark.slow
EVAL = "results/vpog/eval"


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("vpog") / "ws")
    run(f"snakemake --profile cpu {EVAL}", ws)
    return ws


def test_the_model_beats_the_random_template_baseline_on_held_out_queries(chain):
    metrics = json.loads((chain / EVAL / "metrics.json").read_text())
    vpog, baseline = metrics["vpog"], metrics["random_template"]
    assert vpog["queries"] == baseline["queries"] == 48
    assert vpog["retrieval_accuracy"] > baseline["retrieval_accuracy"], metrics
    assert vpog["AR"] > baseline["AR"], metrics
    assert 0 <= vpog["AR"] <= 1 and vpog["AR"] == pytest.approx(
        (vpog["AR_VSD"] + vpog["AR_MSSD"] + vpog["AR_MSPD"]) / 3
    )
    table = (chain / EVAL / "table.md").read_text()
    assert "| vpog | 48 |" in table and "| random_template | 48 |" in table
    for picture in ("retrieval.png", "flow.png"):
        assert (chain / EVAL / picture).stat().st_size > 1_000


def test_the_pose_stage_given_perfect_network_outputs_recovers_the_poses(chain):
    oracle = json.loads((chain / EVAL / "metrics.json").read_text())["oracle"]
    assert oracle["retrieval_exact"] == 1.0  # the nearest template, by construction
    assert oracle["AR"] > 0.8 and oracle["rotation_error_deg_median"] < 3.0, oracle


def test_training_ran_the_hydra_config_that_params_yaml_handed_over(chain):
    config = (chain / "results/vpog/run/config.yaml").read_text()
    assert "max_epochs: 8" in config and "patch_size: 8" in config
    assert "d_ref_source: random_template" in config
    assert (chain / "results/vpog/run/checkpoints/last.ckpt").is_file()
    assert (chain / "data/vpog/templates/box/mesh.pt").is_file()
    assert len(list((chain / "data/vpog/train_pbr_web").glob("shard-*.tar"))) >= 1


def test_nothing_is_stale_and_a_training_edit_reruns_training_and_evaluation_only(chain):
    assert planned_rules(chain, EVAL, "vpog_") == set()
    set_param(chain, "vpog.train.optimizer.lr", 0.003)
    assert planned_rules(chain, EVAL, "vpog_") == {"vpog_train", "vpog_evaluate"}
    set_param(chain, "vpog.queries.seed", 1)
    assert planned_rules(chain, EVAL, "vpog_") == {"vpog_queries", "vpog_train", "vpog_evaluate"}


def test_the_report_shows_the_table(chain):
    run(f"snakemake --report report.zip {EVAL}", chain)
    assert (chain / "report.zip").stat().st_size > 20_000


def test_the_doc_page_shows_this_table(chain):
    assert_docs_show_the_tables_of(chain, "vpog.md")
