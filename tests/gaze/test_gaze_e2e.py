"""End to end: GazeGaussian's chain built by the DAG on synthetic ETH-XGaze subjects, on the
CPU: synthetic subjects -> MeshHead -> VAE and estimators -> four ablation variants of
GazeGaussian -> redirection samples and metrics -> one ablation table. A shortened schedule
of the params.yaml one (which takes about 4 minutes on 2 cores)."""

import json
import re

import pytest

from support.workspace import (
    assert_docs_show_the_tables_of,
    make_workspace,
    planned_rules,
    run,
    set_param,
)

pytestmark = pytest.mark.slow
TABLE = "results/gaze/ablation"
SHORT = {
    "gaze.synthetic.frames_per_subject": 24,
    "gaze.meshhead.num_epochs": 2,
    "gaze.estimator.epochs": 10,
    "gaze.vae.epochs": 8,
    "gaze.train.num_epochs": 3,
    "gaze.train.max_face_gaussians": 1000,
}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    ws = make_workspace(tmp_path_factory.mktemp("gaze") / "ws")
    for key, value in SHORT.items():
        set_param(ws, key, value)
    run(f"snakemake --profile cpu {TABLE}", ws)
    return ws


def test_redirection_beats_no_redirection_and_orthogonality_decorrelates(chain):
    summary = json.loads((chain / TABLE / "summary.json").read_text())
    assert set(summary) == {"full", "unet", "no_vae", "no_orthogonality"}
    for name, row in summary.items():
        assert row["gaze_error_deg"] < row["gaze_error_no_redirection_deg"], (name, row)
    assert summary["full"]["mean_abs_cos"] < summary["no_orthogonality"]["mean_abs_cos"]
    table = (chain / TABLE / "table.md").read_text()
    assert "| full | dit | on | on |" in table and "| unet | unet | on | on |" in table
    assert "LPIPS: unavailable" in table and "FID: unavailable" in table
    assert (chain / TABLE / "table.png").stat().st_size > 5_000


def test_the_guide_outputs_of_both_steps(chain):
    meshhead = chain / "results/gaze/meshhead"
    assert (meshhead / "checkpoints/meshhead_epoch_2.pth").is_file()
    assert "mesh_gt_distance" in (meshhead / "log.txt").read_text()
    run_dir = chain / "results/gaze/runs/full"
    assert (run_dir / "checkpoints/gazegaussian_epoch_3.pth").is_file()
    log = (run_dir / "log.txt").read_text()
    for line in ("[DiT Neural Renderer] Initializing with:", "  - Depth: 6", "  - Num Heads: 8",
                 "  - Patch Size: 8", "  - VAE: Enabled (z_channels=4, frozen=True)",
                 "[Loss Components]", "  - VGG Loss: unavailable", "  - Orthogonality Loss:"):  # fmt: skip
        assert line in log, line
    samples = sorted((chain / "results/gaze/eval/full").glob("subject*.png"))
    assert len(samples) == 4 and all(p.stat().st_size > 2_000 for p in samples)


def test_nothing_is_stale_and_a_variant_edit_reruns_that_variant_only(chain):
    assert planned_rules(chain, TABLE, "gaze_") == set()
    set_param(chain, "gaze.variants.unet", {"neural_renderer_type": "unet", "lr": 0.002})
    assert planned_rules(chain, TABLE, "gaze_") == {"gaze_train", "gaze_evaluate", "gaze_ablation"}
    out = run(f"snakemake -n {TABLE}", chain).stdout
    assert re.search(r"gaze_train\s+1\n", out) and "output: results/gaze/runs/unet" in out


def test_the_report_shows_the_table(chain):
    run(f"snakemake --report report.zip {TABLE}", chain)
    assert (chain / "report.zip").stat().st_size > 20_000


def test_the_doc_page_shows_this_table(chain):
    assert_docs_show_the_tables_of(chain, "gaze.md")
