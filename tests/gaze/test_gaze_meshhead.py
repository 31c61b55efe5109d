"""MeshHead: the SDF grid, expressions, checkpoints, and fitting a synthetic subject."""

import pytest
import torch

from fresnel.gaze import synthetic
from fresnel.gaze.meshhead import (
    MeshHead,
    MeshHeadConfig,
    load_meshhead,
    mesh_to_mesh_distance,
    train_meshhead,
)
from fresnel.gaze.options import MeshHeadOptions
from fresnel.training.checkpoint import CheckpointError


def test_sdf_interpolates_the_grid_values_and_starts_as_the_sphere():
    model = MeshHead(MeshHeadConfig())
    with torch.no_grad():
        model.sdf_values.add_(torch.randn_like(model.sdf_values) * 1e-3)
        assert torch.allclose(model.sdf_at(model.grid), model.sdf_values, atol=1e-6)
    fresh = MeshHead(MeshHeadConfig())
    points = torch.tensor([[0.03, 0.01, -0.05], [0.0, 0.0, -0.085]])
    expected = points.norm(dim=1) - fresh.cfg.init_radius
    # Trilinear interpolation of |x| - r is exact to within the grid's curvature error.
    assert torch.allclose(fresh.sdf_at(points), expected, atol=2e-3)


def test_the_neutral_expression_does_not_move_the_mesh():
    model = MeshHead(MeshHeadConfig())
    torch.nn.init.normal_(model.expression_mlp[-1].weight)
    points = torch.randn(10, 3) * 0.05
    assert model.expression_offset(points, torch.zeros(3)).abs().max() == 0
    assert model.expression_offset(points, torch.tensor([1.0, 0, 0])).abs().max() > 0


def test_distance_of_a_mesh_to_itself_is_zero_and_to_a_scaled_copy_is_known():
    v, f = MeshHead(MeshHeadConfig()).extract()
    v = v.detach()
    assert mesh_to_mesh_distance(v, f, v, f) < 1e-6  # point to triangle: no sampling floor
    d = mesh_to_mesh_distance(v, f, v * 1.1, f, front_only=False)
    assert d == pytest.approx(0.1 * 0.085, rel=0.03)  # a 10 % larger sphere of 8.5 cm


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("meshhead")
    synthetic.write_synthetic_xgaze(root / "data", num_subjects=2, frames_per_subject=48,
                                    num_test=1, seed=0)  # fmt: skip
    options = MeshHeadOptions(img_dir=str(root / "data"), batch_size=4, num_epochs=5,
                              num_workers=0, run_dir=str(root / "run"), early_stopping=True)  # fmt: skip
    stats = train_meshhead(options, progress=False)
    return root / "run", stats


def test_meshhead_overfits_a_synthetic_subject(fitted):
    """Mesh to ground truth (front half) from the sphere prior: measured 4.6 -> 2.6 mm."""
    _, stats = fitted
    assert stats["final_gt_distance_mm"] < stats["initial_gt_distance_mm"] / 1.5, stats


def test_the_guide_files_and_a_checkpoint_round_trip(fitted, tmp_path):
    run, stats = fitted
    for epoch in range(1, 6):
        assert (run / "checkpoints" / f"meshhead_epoch_{epoch}.pth").is_file()
    log = (run / "log.txt").read_text()
    assert "epoch 5 train_loss" in log and "mesh_gt_distance" in log
    model = load_meshhead(stats["best"])
    assert len(model.extract()[1]) > 1000
    (tmp_path / "bad.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match=r"bad\.pth"):
        load_meshhead(tmp_path / "bad.pth")
