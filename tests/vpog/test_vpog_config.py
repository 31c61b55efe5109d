"""VPOG's Hydra configs, the Slurm scripts written from them, and the HSV flow colours."""

import subprocess

import pytest
import torch

from fresnel.vpog.config import (
    VPOGConfigError,
    compose,
    overrides_from_params,
    trainer_kwargs,
    training_datasets,
)
from fresnel.vpog.slurm import MULTI_NODE, SINGLE_NODE, write_scripts
from fresnel.vpog.train import train
from fresnel.vpog.visualize import flow_to_rgb, hsv_to_rgb


def test_the_local_machine_composes_with_the_guides_keys_and_num_gpus_override():
    cfg = compose(["machine=local", "machine.num_gpus=2"])
    loader = cfg.data.dataloader
    assert (loader.num_positive_templates, loader.num_negative_templates) == (4, 2)
    assert (loader.patch_size, loader.image_size) == (16, 224)
    assert cfg.train_dataset_id == 0 and cfg.max_epochs == 100
    assert cfg.visualization.save_dir == cfg.vis_dir == f"{cfg.save_dir}/visualizations"
    kwargs = trainer_kwargs(cfg)
    assert kwargs["devices"] == 2 and kwargs["strategy"] == "ddp"  # auto -> ddp for 2 processes
    assert trainer_kwargs(compose())["strategy"] == "auto"


def test_the_slurm_machine_has_ddp_sync_batchnorm_and_accumulation_and_the_guides_gpus_key():
    cfg = compose(["machine=slurm", "machine.gpus=4", "machine.nodes=2"])
    kwargs = trainer_kwargs(cfg)
    assert kwargs["strategy"] == "ddp" and kwargs["sync_batchnorm"] is True
    assert kwargs["accumulate_grad_batches"] == 2
    assert (kwargs["devices"], kwargs["num_nodes"]) == (4, 2)
    assert compose(["machine=slurm", "machine.num_gpus=2"]).machine.num_gpus == 2


def test_bad_configs_are_one_line_naming_the_key():
    with pytest.raises(VPOGConfigError, match="machine/nope"):
        compose(["machine=nope"])
    with pytest.raises(VPOGConfigError, match="not a multiple of patch_size"):
        compose(["data.dataloader.image_size=100"])
    with pytest.raises(VPOGConfigError, match="needs 2 entries"):
        training_datasets(compose(["train_dataset_id=2", "data.dataloader.datasets=[{name:x}]"]))


BAD_CONFIGS = {
    "max_epochs=-1": "max_epochs=-1: must be a whole number >= 1",
    "machine.batch_size=0": "machine.batch_size=0: must be a whole number >= 1",
    "data.dataloader.image_size=0": "data.dataloader.image_size=0: must be a whole number >= 1",
    "data.dataloader.patch_size=0": "data.dataloader.patch_size=0: must be a whole number >= 1",
    "optimizer.lr=-1": "optimizer.lr=-1: must be a finite number > 0",
    "optimizer.lr=nan": "optimizer.lr=nan: must be a finite number > 0",
    "max_epochs=2.5": "max_epochs=2.5: must be a whole number >= 1",
    "model.encoder_weights=weights/no_such_dinov2.pth": "no such file; give a CroCo or DINOv2",
    "machine.nope=1": "use +machine.nope=1",  # Hydra's own hint, kept
}


@pytest.mark.parametrize("override", BAD_CONFIGS)
def test_each_bad_value_is_refused_in_one_line_naming_the_key(override):
    with pytest.raises(VPOGConfigError) as error:
        compose([override])
    assert BAD_CONFIGS[override] in str(error.value) and "\n" not in str(error.value)


def test_an_onnx_export_is_not_taken_for_encoder_weights(tmp_path):
    export = tmp_path / "dinov2_small.onnx"
    export.write_bytes(b"onnx")
    with pytest.raises(VPOGConfigError, match="an ONNX export has no trainable weights"):
        compose([f"model.encoder_weights={export}"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the check is for machines without a GPU")
def test_the_slurm_machine_without_a_gpu_is_one_line_before_lightning_starts(tmp_path):
    with pytest.raises(VPOGConfigError, match="torch sees none here; on this machine use"):
        train(compose(["machine=slurm", f"save_dir={tmp_path}"]), progress=False)
    assert not any(tmp_path.iterdir())


def test_train_dataset_id_picks_the_guides_datasets():
    names = {i: [d.name for d in training_datasets(compose([f"train_dataset_id={i}"]))]
             for i in (0, 1, 2)}  # fmt: skip
    assert names == {0: ["gso"], 1: ["shapenet"], 2: ["gso", "shapenet"]}


def test_a_params_section_becomes_overrides_that_compose_to_the_same_values():
    section = {"max_epochs": 3, "machine": {"batch_size": 2},
               "data": {"dataloader": {"patch_size": 8, "image_size": 64,
                                       "datasets": [{"name": "s", "web_dir": "a b/c",
                                                     "templates_dir": "t"}]}},
               "model": {"encoder_weights": None}, "visualization": {"enabled": True}}  # fmt: skip
    cfg = compose(overrides_from_params(section))
    assert cfg.max_epochs == 3 and cfg.machine.batch_size == 2
    assert cfg.model.patch_size == 8 and cfg.model.image_size == 64  # interpolated from data
    assert cfg.data.dataloader.datasets[0].web_dir == "a b/c"
    assert cfg.model.encoder_weights is None and cfg.visualization.enabled is True


def test_slurm_scripts_request_one_task_per_gpu_and_run_the_same_overrides(tmp_path):
    overrides = ["machine.gpus=4", "max_epochs=7"]
    cfg = compose(["machine=slurm", *overrides])
    single, multi = write_scripts(cfg, overrides, tmp_path)
    assert (single.name, multi.name) == (SINGLE_NODE, MULTI_NODE)
    text = single.read_text()
    for line in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --partition=gpu"):  # fmt: skip
        assert line in text.splitlines()
    assert (
        "srun fresnel vpog_train machine=slurm max_epochs=7 machine.gpus=4 machine.nodes=1" in text
    )
    assert "#SBATCH --nodes=2" in multi.read_text() and "machine.nodes=2" in multi.read_text()
    subprocess.run(["bash", "-n", str(single)], check=True)  # valid shell
    cpu = write_scripts(compose(["machine=slurm", "machine.accelerator=cpu"]), [], tmp_path / "c")
    assert "--gpus-per-node" not in cpu[0].read_text()


def test_slurm_scripts_refuse_the_local_machine(tmp_path):
    with pytest.raises(ValueError, match="machine=slurm"):
        write_scripts(compose(), [], tmp_path)


def test_flow_colours_follow_direction_and_magnitude():
    flow = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], [[0.0, 0.0], [0.5, 0.0], [9, 9]]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    rgb = flow_to_rgb(flow, valid, max_magnitude=1.0)
    assert rgb[0, 0].tolist() == [255, 0, 0]  # +u: hue 0, red
    assert rgb[0, 1].tolist() == [128, 255, 0]  # +v: hue 1/4
    assert rgb[0, 2].tolist() == [0, 255, 255]  # -u: hue 1/2, cyan
    assert rgb[1, 0].tolist() == [255, 255, 255]  # zero flow: white
    assert rgb[1, 1].tolist() == [255, 128, 128]  # half the magnitude: half saturation
    assert rgb[1, 2].tolist() == [0, 0, 0]  # invalid: black
    nan = flow_to_rgb(torch.full((1, 1, 2), float("nan")))
    assert nan.tolist() == [[[0, 0, 0]]]


def test_hsv_to_rgb_matches_colorsys():
    import colorsys

    hsv = torch.rand(50, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    reference = torch.tensor(
        [colorsys.hsv_to_rgb(*row.tolist()) for row in hsv], dtype=torch.float64
    )
    assert torch.allclose(ours, reference, atol=1e-12)
