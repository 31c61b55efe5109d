"""train_gazegaussian and test_gazegaussian as the guide's users run them: files, log lines,
resume, the VAE trained here before it is frozen, and one-line errors."""

import json
import shutil

import pytest

from fresnel.gaze import synthetic
from fresnel.gaze.meshhead import train_meshhead
from fresnel.gaze.options import GazeGaussianOptions, MeshHeadOptions
from fresnel.gaze.train import load_gazegaussian, train_gazegaussian
from support.workspace import run


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gazetrain")
    synthetic.write_synthetic_xgaze(root / "data", num_subjects=3, frames_per_subject=10,
                                    num_test=1, seed=1)  # fmt: skip
    options = MeshHeadOptions(img_dir=str(root / "data"), batch_size=4, num_epochs=1,
                              num_workers=0, run_dir=str(root / "meshhead"))  # fmt: skip
    mesh = train_meshhead(options, progress=False)
    return root, mesh["best"]


def _options(root, meshhead, **changes) -> GazeGaussianOptions:
    values = dict(
        img_dir=str(root / "data"), run_dir=str(root / "run"), load_meshhead_checkpoint=meshhead,
        num_epochs=1, batch_size=4, num_workers=0, lr=1e-3, clip_grad=True, dit_hidden=32,
        feature_channels=8, embedding_width=16, max_face_gaussians=300, vae_epochs=1,
        estimator_epochs=1, save_every=1,
    )  # fmt: skip
    return GazeGaussianOptions(**{**values, **changes})


def test_train_resume_and_redirect(setup):
    root, meshhead = setup
    first = train_gazegaussian(_options(root, meshhead), progress=False)
    assert first["epochs"] == 1
    checkpoints = root / "run" / "checkpoints"
    assert {p.name for p in checkpoints.iterdir()} >= {"gazegaussian_epoch_1.pth", "last.pth",
                                                      "vae.pth", "gaze_estimator.pth"}  # fmt: skip
    log = (root / "run" / "log.txt").read_text()
    assert "[VAE] no --vae_weights given: trained here" in log
    assert "  - VAE: Enabled (z_channels=4, frozen=True)" in log
    assert "[Loss Components]" in log and "VGG Loss: unavailable" in log
    second = train_gazegaussian(_options(root, meshhead, num_epochs=2), progress=False)
    assert second["epochs"] == 2
    assert "[Resume] from" in (root / "run" / "log.txt").read_text()
    model, opt = load_gazegaussian(checkpoints / "gazegaussian_epoch_2.pth")
    assert opt.num_epochs == 2 and model.renderer.vae_frozen
    out = root / "samples"
    run(f"fresnel test_gazegaussian --load_gazegaussian_checkpoint {checkpoints}/"
        f"gazegaussian_epoch_2.pth --img_dir {root / 'data'} --output_dir {out} "
        f"--gaze_estimator {checkpoints}/gaze_estimator.pth --num_samples 2", root)  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    assert metrics["frames"] == 2 and metrics["fid"].startswith("unavailable")
    assert len(list(out.glob("subject*.png"))) == 2


def test_training_on_the_test_set_is_one_line(setup, tmp_path):
    root, meshhead = setup
    test_dir = tmp_path / "test"  # ETH-XGaze's layout: the split file one level up
    test_dir.mkdir()
    shutil.copy(root / "data" / "subject0002.h5", test_dir / "subject0002.h5")
    shutil.copy(root / "data" / "train_test_split.json", tmp_path / "train_test_split.json")
    result = run(f"fresnel train_gazegaussian --img_dir {test_dir} "
                 f"--load_meshhead_checkpoint {meshhead}", root, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "test subjects" in result.stderr and "Traceback" not in result.stderr
    result = run(f"fresnel train_gazegaussian --img_dir {root / 'data'}", root, check=False)
    assert "--load_meshhead_checkpoint is required" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_vgg_loss_loads_its_backbone_from_a_file(tmp_path):
    """The VGG loss (LPIPS-VGG) never downloads: torchvision's vgg16 weights from a file."""
    import torch
    import torchvision

    from fresnel import metrics

    features = torchvision.models.vgg16().features.state_dict()
    torch.save({f"features.{k}": v for k, v in features.items()}, tmp_path / "vgg16.pth")
    vgg = metrics.load_lpips(str(tmp_path / "vgg16.pth"), "--vgg_weights", net="vgg")
    x, y = torch.rand(2, 1, 3, 32, 32) * 2 - 1
    assert float(vgg(x, x)) == 0 and float(vgg(x, y)) > 0
    with pytest.raises(metrics.MetricUnavailable, match=r"vgg16-397923af\.pth"):
        metrics.load_lpips(None, "--vgg_weights", net="vgg")
