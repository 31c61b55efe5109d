"""GaussianAvatars training: the guide's flags, files, log lines and TensorBoard names, exact
resume, the additions wired in, and render / metrics commands. A tiny synthetic subject."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from fresnel.avatars import options as opts
from fresnel.avatars.data import SyntheticConfig, write_synthetic
from fresnel.avatars.evaluate import evaluate_folders, load_model, render_sets
from fresnel.avatars.options import AvatarOptions
from fresnel.avatars.scene import load_scene
from fresnel.avatars.train import AvatarTraining, exponential_lr, latest_checkpoint, train
from fresnel.cli import main
from fresnel.device import resolve
from fresnel.io import write_bytes
from fresnel.training.checkpoint import read_checkpoint, serialize

TINY = dict(iterations=40, interval=20, eval=True, white_background=True, sh_degree=1,
            sh_degree_interval=10, densify_from_iter=5, densify_until_iter=35,
            densification_interval=10, opacity_reset_interval=30)  # fmt: skip
ALL = dict(use_region_adaptive_loss=True, use_smart_densification=True,
           use_progressive_resolution=True, resolution_milestones="10,20",
           use_color_calibration=True, use_contrastive_reg=True, use_amp=True)  # fmt: skip


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars") / "subject"
    write_synthetic(root, SyntheticConfig(image_size=32, cameras=4, timesteps=4, test_timesteps=1,
                                          val_cameras=[1]))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def trained(subject, tmp_path_factory):
    """All five additions and AMP, 40 iterations; the log it printed."""
    model = tmp_path_factory.mktemp("model")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("fresnel").addHandler(handler)
    logging.getLogger("fresnel").setLevel(logging.INFO)
    try:
        summary = train(
            subject, model, AvatarOptions(**TINY, **ALL), resolve("cpu"), progress=False
        )
    finally:
        logging.getLogger("fresnel").removeHandler(handler)
    return model, summary, records


def test_the_guide_log_lines_files_and_tensorboard_names(trained):
    model, summary, lines = trained
    for expected in (
        "[Innovation] Progressive resolution schedule 0.5,0.75,1.0 with milestones [10, 20]",
        "[Innovation] Region-adaptive loss enabled (eyes=2.0, mouth=2.0, nose=1.5)",
        "[Innovation] Smart densification enabled (clone=75.0%, split=90.0%)",
        "[Innovation] Color calibration network enabled",
        "[Innovation] Contrastive regularization enabled (cache=2)",
        "[AMP] requested, but target cpu trains in float32 (AMP off)",
        "[ITER 10] Switching to resolution scale 0.75",
        "[ITER 20] Switching to resolution scale 1.0",
    ):
        assert expected in lines
    evals = [x for x in lines if x.startswith("[ITER 40] Evaluating test: L1 ")]
    assert evals and evals[0].endswith("LPIPS unavailable"), lines
    for name in ("chkpnt20.pth", "chkpnt40.pth", "point_cloud/iteration_40/point_cloud.ply",
                 "point_cloud/iteration_40/flame_param.npz", "cfg_args", "curves.png"):  # fmt: skip
        assert (model / name).is_file(), name
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = EventAccumulator(str(model)).Reload().Tags()["scalars"]
    for tag in ("train_loss_patches/total_loss", "train_loss_patches/l1_loss",
                "train_loss_patches/ssim_loss", "iter_time", "total_points"):  # fmt: skip
        assert tag in tags
    assert summary["additions"] == list(opts.ADDITIONS)
    assert summary["gaussians"] != 1280  # densification and pruning ran


def test_resume_from_a_checkpoint_ends_exactly_like_the_uninterrupted_run(
    subject, trained, tmp_path
):
    model, _, _ = trained
    options = AvatarOptions(**TINY, **ALL)
    shutil.copy(model / "history.json", tmp_path / "history.json")  # as in the run's folder
    summary = train(subject, tmp_path, options, resolve("cpu"),
                    start_checkpoint=model / "chkpnt20.pth", progress=False)  # fmt: skip
    kept = json.loads((tmp_path / "history.json").read_text())["epochs"]
    assert [r["epoch"] for r in kept] == [20, 40]
    assert summary["seconds"] == kept[1]["seconds"] > kept[0]["seconds"] > 0  # both parts
    a, b = read_checkpoint(model / "chkpnt40.pth"), read_checkpoint(tmp_path / "chkpnt40.pth")
    for key in ("gaussians", "head_params", "calibration"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    assert latest_checkpoint(tmp_path).name == "chkpnt40.pth"


def test_a_checkpoint_of_the_earlier_face_frame_is_one_line(subject, trained, tmp_path):
    model, _, _ = trained
    state = read_checkpoint(model / "chkpnt20.pth")
    write_bytes(tmp_path / "chkpnt20.pth", serialize({**state, "format": "fresnel.avatars/1"}))
    with pytest.raises(SystemExit) as exc:
        main(["avatars_train", "-s", str(subject), "-m", str(tmp_path / "m"), "--iterations", "40",
              "--start_checkpoint", str(tmp_path / "chkpnt20.pth")])  # fmt: skip
    assert "before this package took GaussianAvatars' face frame" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_the_same_options_give_byte_identical_checkpoints(subject, tmp_path):
    options = AvatarOptions(**{**TINY, **ALL, "iterations": 12, "interval": 12})
    for name in ("a", "b"):
        train(subject, tmp_path / name, options, resolve("cpu"), progress=False)
    assert (tmp_path / "a/chkpnt12.pth").read_bytes() == (tmp_path / "b/chkpnt12.pth").read_bytes()


def test_training_lowers_the_loss_and_the_rig_beats_the_frozen_avatar(subject, tmp_path):
    options = AvatarOptions(**{**TINY, "iterations": 100, "interval": 100})
    training = AvatarTraining(load_scene(subject), options, resolve("cpu"))
    before = training.evaluate("train")["psnr"]
    for _ in range(options.iterations):
        training.step()
    after = training.evaluate("train")
    assert after["psnr"] > before + 3
    frozen = training.params.select([0] * training.params.num_timesteps)
    assert training.evaluate("test")["psnr"] > training.evaluate("test", params=frozen)["psnr"]


def test_region_weights_scale_the_l1_term_by_the_rasterised_regions(subject):
    options = AvatarOptions(**TINY, use_region_adaptive_loss=True, region_weight_eyes=4.0)
    training = AvatarTraining(load_scene(subject), options, resolve("cpu"))
    frame = training.scene.frames["train"][0]
    target = training.scene.image(frame)
    image = torch.full_like(target, 0.5)
    weights = training._weight_map(frame, frame.camera)
    assert set(weights.unique().tolist()) <= {1.0, 4.0, 2.0, 1.5} and (weights == 4.0).any()
    expected = ((image - target).abs() * weights).mean() / weights.mean()
    got = training.losses(image, target, frame, frame.camera)["l1"]
    torch.testing.assert_close(got, expected)


def test_runs_read_only_the_flags_of_their_additions():
    avatars = {"train": {"iterations": 5},
               "additions": {"region_adaptive_loss": {"region_weight_eyes": 3.0},
                             "smart_densification": {"densify_percentile_clone": 60}, "amp": {}},
               "runs": {"baseline": [], "ablation_2": ["region_adaptive_loss", "smart_densification"],
                        "balanced": ["region_adaptive_loss", "smart_densification", "amp"]},
               "sensitivity_base": "balanced"}  # fmt: skip
    assert opts.run_options(avatars, "baseline") == {"iterations": 5}
    assert opts.run_param_paths(avatars, "baseline") == ["avatars.train", "avatars.runs.baseline"]
    run = opts.run_options(avatars, "ablation_2")
    assert run["use_region_adaptive_loss"] and run["use_smart_densification"]
    assert run["region_weight_eyes"] == 3.0 and "use_amp" not in run
    assert "avatars.additions.smart_densification" in opts.run_param_paths(avatars, "ablation_2")
    sweep = opts.run_options(avatars, "region_weight_2.5")
    assert sweep["region_weight_eyes"] == sweep["region_weight_mouth"] == 2.5 and sweep["use_amp"]
    assert opts.run_options(avatars, "densify_clone_80")["densify_percentile_clone"] == 80
    with pytest.raises(KeyError, match="no run 'nope'"):
        opts.run_options(avatars, "nope")
    with pytest.raises(ValueError, match="unknown option 'use_ampp'"):
        AvatarOptions.from_dict({"use_ampp": True})


def test_position_learning_rate_is_log_linear():
    assert exponential_lr(0, 1e-2, 1e-4, 100) == pytest.approx(1e-2)
    assert exponential_lr(50, 1e-2, 1e-4, 100) == pytest.approx(1e-3)
    assert exponential_lr(500, 1e-2, 1e-4, 100) == pytest.approx(1e-4)


def test_render_and_metrics_commands_write_the_guide_layout(trained, subject, capsys):
    model, _, _ = trained
    main(["avatars_render", "-m", str(model), "--iteration", "40", "--skip_train", "--skip_val",
          "--target", "cpu"])  # fmt: skip
    renders = sorted((model / "test" / "ours_40" / "renders").glob("*.png"))
    assert len(renders) == 4 and (model / "test" / "ours_40" / "gt" / renders[0].name).is_file()
    main(["avatars_metrics", "-m", str(model)])
    results = (model / "results.json").read_text()
    assert '"test/ours_40"' in results and "unavailable" in results
    loaded = load_model(model, 40)
    direct = loaded.evaluate("test")
    assert evaluate_folders(model)["test/ours_40"]["PSNR"] == pytest.approx(direct["psnr"], abs=0.2)
    assert render_sets(loaded, model / "again", ["val"])["val/ours"].is_dir()


def test_metrics_over_several_model_folders_is_one_table(trained, tmp_path, capsys):
    model, _, _ = trained
    main(["avatars_render", "-m", str(model), "--iteration", "40", "--skip_train", "--skip_test",
          "--target", "cpu"])  # fmt: skip
    other = shutil.copytree(model, tmp_path / "other")
    main(["avatars_metrics", "-m", str(model), str(other), "--table", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert capsys.readouterr().out.endswith(table)
    rows = [line for line in table.splitlines() if "| val/ours_40 |" in line]
    assert [row.split(" | ")[0] for row in rows] == [f"| {model}", f"| {other}"]
    assert rows[0].split(" | ")[2:] == rows[1].split(" | ")[2:]  # the same renders, same scores
    assert (other / "results.json").is_file()


def test_a_missing_dataset_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["avatars_train", "-s", str(tmp_path / "none"), "-m", str(tmp_path / "m")])
    assert "transforms_train.json not found" in str(exc.value)


def test_a_preset_by_hand_is_the_guides_schedule_and_says_so(tmp_path, caplog):
    params = Path(__file__).parents[2] / "params.yaml"
    avatars = yaml.safe_load(params.read_text())["avatars"]
    options = AvatarOptions.from_dict(opts.preset_options(avatars, "balanced"))
    assert (options.iterations, options.resolution_milestones) == (600_000, "100000,300000")
    assert options.enabled() == ["region_adaptive_loss", "smart_densification",
                                 "progressive_resolution", "color_calibration", "amp"]  # fmt: skip
    assert options.region_weight_eyes == 2.0 and options.densify_percentile_clone == 75
    assert opts.run_options(avatars, "balanced")["iterations"] == 400  # the DAG's demo budget
    caplog.set_level(logging.INFO)
    with pytest.raises(SystemExit):  # no dataset: it stops before training, having said it
        main(["avatars_train", "-s", str(tmp_path / "none"), "-m", str(tmp_path / "m"),
              "--preset", "balanced", "--params", str(params)])  # fmt: skip
    assert "600000 iterations, resolution milestones 100000,300000" in caplog.text
