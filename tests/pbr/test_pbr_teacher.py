"""NeuroPBR teacher: config, generator (multi-view fusion), PatchGAN and HybridLoss."""

from __future__ import annotations

import copy
import itertools
import math
import re
from pathlib import Path

import pytest
import torch

from fresnel.pbr.config import (
    PRESETS,
    ConfigError,
    TrainConfig,
    apply_overrides,
    get_config,
)
from fresnel.pbr.discriminator import (
    PatchDiscriminator,
    d_loss,
    discriminator_input,
    g_loss,
    measured_receptive_field,
    receptive_field,
)
from fresnel.pbr.losses import HybridLoss, mean_normal_angle_deg, normal_angles_deg
from fresnel.pbr.maps import MAPS, join_maps
from fresnel.pbr.teacher import MultiViewPBRGenerator, load_generator
from fresnel.training.checkpoint import CheckpointError

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pbr"
CONFIG_FILES = ("high_quality", "fast_iteration", "normal_focused")


def tiny_model(seed: int = 0, **overrides) -> MultiViewPBRGenerator:
    cfg = get_config("tiny")
    apply_overrides(cfg, {f"model.{k}": v for k, v in overrides.items()})
    torch.manual_seed(seed)
    return MultiViewPBRGenerator(cfg.model).eval()


def small_resnet(seed: int = 0, **overrides) -> MultiViewPBRGenerator:
    model = {
        "encoder_backbone": "resnet18",
        "transformer_dim": 32,
        "transformer_num_heads": 4,
        "transformer_depth": 1,
        "transformer_pos_grid": 2,
        **overrides,
    }
    cfg = get_config("quick_test")
    apply_overrides(cfg, {"model": model})
    torch.manual_seed(seed)
    return MultiViewPBRGenerator(cfg.model).eval()


def views(batch: int = 2, size: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- config -----------------------------------------------------------------------------------
def test_presets_match_the_guide_table():
    default, quick, light = (get_config(n) for n in ("default", "quick_test", "lightweight"))
    assert (default.model.encoder_backbone, default.model.transformer_depth) == ("resnet50", 4)
    assert default.model.use_gan and default.training.gan_start_epoch == 5
    assert (quick.model.encoder_backbone, quick.model.transformer_depth) == ("resnet18", 2)
    assert quick.training.epochs == 20
    assert light.model.encoder_backbone == "resnet50" and not light.model.use_gan
    assert default.data.val_ratio == 0.1 and default.training.seed == 42
    assert default.transform.mean == [0.485, 0.456, 0.406]
    assert set(PRESETS) == {"default", "quick_test", "lightweight", "tiny"}


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_files_load(name):
    cfg = get_config(REPO_CONFIGS / f"{name}.py")
    assert isinstance(cfg, TrainConfig)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_guide_config_file_values():
    hq = get_config(REPO_CONFIGS / "high_quality.py")
    normal = get_config(REPO_CONFIGS / "normal_focused.py")
    assert hq.model.encoder_backbone == "resnet101" and hq.model.transformer_depth == 6
    assert normal.loss.w_normal > get_config("default").loss.w_normal
    assert normal.loss.w_normal_map > normal.loss.w_albedo


def test_overrides_dotted_and_nested_and_unknown_keys():
    cfg = get_config("tiny")
    apply_overrides(cfg, {"model.use_gan": False, "loss": {"w_ssim": 1}})
    assert cfg.model.use_gan is False and cfg.loss.w_ssim == 1.0
    assert isinstance(cfg.loss.w_ssim, float)
    with pytest.raises(ConfigError, match=re.escape("model.not_an_option")):
        apply_overrides(cfg, {"model.not_an_option": 1})
    with pytest.raises(ConfigError, match="nonsense"):
        apply_overrides(cfg, {"nonsense": {"x": 1}})
    with pytest.raises(ConfigError, match="encoder_backbone"):
        apply_overrides(get_config("default"), {"model.encoder_backbone": "resnet19"})
    with pytest.raises(ConfigError, match="gan_loss_type='bce'"):
        apply_overrides(cfg, {"model.discriminator_use_sigmoid": True})


def test_unknown_preset_and_missing_file_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="quick_tset"):
        get_config("quick_tset")
    with pytest.raises(ConfigError, match=re.escape("nope.py")):
        get_config(tmp_path / "nope.py")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config():\n    return {}\n")
    with pytest.raises(ConfigError, match=re.escape("bad.py")):
        get_config(bad)


def test_legacy_use_dirty_means_curriculum_2():
    cfg = get_config("tiny")
    assert cfg.curriculum == 0
    cfg.data.use_dirty_renders = True
    assert cfg.curriculum == 2


# --- generator --------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", [tiny_model, small_resnet], ids=["unet", "resnet18"])
def test_output_shapes_ranges_and_unit_normals(builder):
    model = builder()
    size = 32 if builder is tiny_model else 64
    with torch.no_grad():
        out = model(views(2, size))
    assert set(out) == set(MAPS)
    for name, channels in {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}.items():
        assert out[name].shape == (2, channels, size, size)
    for name in ("albedo", "roughness", "metallic"):
        assert out[name].min() >= 0 and out[name].max() <= 1
    assert torch.allclose(out["normal"].norm(dim=1), torch.ones(2, size, size), atol=1e-5)


def test_sr_head_doubles_and_stride_two_keeps_the_size():
    with torch.no_grad():
        sr = tiny_model(use_sr=True, sr_scale=2)(views(1, 32))
        half = tiny_model(encoder_stride=2)(views(1, 32))
        resnet = small_resnet(encoder_stride=2, use_sr=True)(views(1, 64))
    assert sr["normal"].shape == (1, 3, 64, 64)
    assert half["albedo"].shape == (1, 3, 32, 32)
    assert resnet["roughness"].shape == (1, 1, 128, 128)


@pytest.mark.parametrize("builder", [tiny_model, small_resnet], ids=["unet", "resnet18"])
def test_one_output_pixel_depends_on_every_view(builder):
    model = builder()
    size = 32 if builder is tiny_model else 64
    x = views(1, size).requires_grad_(True)
    out = model(x)
    (out["albedo"][0, :, 5, 9].sum() + out["normal"][0, 2, 5, 9]).backward()
    per_view = x.grad[0].abs().flatten(1).sum(1)
    assert (per_view > 0).all(), per_view


def _randomise_view_parameters(model: MultiViewPBRGenerator) -> None:
    torch.manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("view_bias") or name.endswith("view_embed"):
                param.normal_(0.0, 0.5)


def _permute_view_parameters(model: MultiViewPBRGenerator, perm: list[int]) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("view_bias") or name.endswith("view_embed"):
                param.copy_(param[perm].clone())


@pytest.mark.parametrize("perm", [p for p in itertools.permutations(range(3)) if p != (0, 1, 2)])
def test_permuting_views_with_their_parameters_reproduces_the_output(perm):
    model = tiny_model()
    _randomise_view_parameters(model)
    permuted = copy.deepcopy(model)
    _permute_view_parameters(permuted, list(perm))
    x = views(2, 32)
    with torch.no_grad():
        reference, result = model(x), permuted(x[:, list(perm)])
        unmatched = model(x[:, list(perm)])  # control: the per-view parameters do matter
    for name in MAPS:
        assert torch.allclose(reference[name], result[name], atol=1e-5), name
    assert (reference["albedo"] - unmatched["albedo"]).abs().max() > 1e-4


def test_freeze_bn_keeps_running_statistics_and_freeze_backbone_stops_gradients():
    model = small_resnet(freeze_bn=True, freeze_backbone=True).train()
    bn = model.encoder.backbone["stem"][1]
    before = bn.running_mean.clone()
    out = model(views(1, 64))
    assert not bn.training and torch.equal(bn.running_mean, before)
    out["albedo"].mean().backward()
    assert all(p.grad is None for p in model.encoder.backbone.parameters())
    assert model.fusion.proj_in.weight.grad is not None


def test_pretrained_weights_load_from_a_local_file_and_a_missing_one_is_named(tmp_path):
    import torchvision

    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18-local.pth"
    torch.save(reference.state_dict(), weights)
    model = small_resnet(encoder_pretrained_path=str(weights))
    assert torch.equal(model.encoder.backbone["stem"][0].weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match=re.escape("missing-weights.pth")):
        small_resnet(encoder_pretrained_path=str(tmp_path / "missing-weights.pth"))


def test_load_generator_round_trip_with_weights_only(tmp_path):
    model = tiny_model(seed=7)
    cfg = get_config("tiny")
    path = tmp_path / "best_model.pth"
    torch.save(
        {"generator_state_dict": model.state_dict(), "config": cfg.to_dict(), "epoch": 3}, path
    )
    loaded, loaded_cfg = load_generator(path)
    assert loaded_cfg == cfg and not loaded.training
    x = views(1, 32)
    with torch.no_grad():
        assert torch.equal(model(x)["normal"], loaded(x)["normal"])
    with pytest.raises(CheckpointError, match=re.escape("absent.pth")):
        load_generator(tmp_path / "absent.pth")


# --- discriminator ----------------------------------------------------------------------------
@pytest.mark.parametrize(("n_layers", "expected"), [(1, 16), (2, 34), (3, 70), (4, 142), (6, 574)])
def test_receptive_field_matches_the_gradient_footprint(n_layers, expected):
    assert receptive_field(n_layers) == expected
    torch.manual_seed(0)
    disc = PatchDiscriminator(in_channels=8, ndf=4, n_layers=n_layers)
    assert measured_receptive_field(disc, 8, expected + 64) == (expected, expected)


def test_discriminator_input_packs_maps_and_optionally_the_mean_view():
    maps = {
        "albedo": torch.rand(2, 3, 16, 16),
        "roughness": torch.rand(2, 1, 16, 16),
        "metallic": torch.rand(2, 1, 16, 16),
        "normal": torch.rand(2, 3, 16, 16),
    }
    assert torch.equal(discriminator_input(maps), join_maps(maps))
    x = torch.randn(2, 3, 3, 8, 8)
    cond = discriminator_input(maps, x)
    assert cond.shape == (2, 11, 16, 16)
    disc = PatchDiscriminator(in_channels=11, ndf=8, n_layers=2, norm="instance")
    assert disc(cond).shape[:2] == (2, 1)


def test_gan_losses_known_values():
    ones, zeros = torch.ones(4), torch.zeros(4)
    assert float(d_loss(2 * ones, -2 * ones, "hinge")) == 0.0
    assert float(d_loss(zeros, zeros, "hinge")) == 2.0
    assert float(g_loss(3 * ones, "hinge")) == -3.0
    assert math.isclose(float(d_loss(zeros, zeros, "bce")), 2 * math.log(2), rel_tol=1e-6)
    logits = torch.tensor([0.3, -1.2, 2.0])
    via_probabilities = d_loss(torch.sigmoid(logits), torch.sigmoid(-logits), "bce", True)
    assert math.isclose(
        float(via_probabilities), float(d_loss(logits, -logits, "bce")), rel_tol=1e-5
    )


# --- losses -----------------------------------------------------------------------------------
def _maps(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    normal = torch.nn.functional.normalize(torch.randn(2, 3, 16, 16, generator=g), dim=1)
    return {
        "albedo": torch.rand(2, 3, 16, 16, generator=g),
        "roughness": torch.rand(2, 1, 16, 16, generator=g),
        "metallic": torch.rand(2, 1, 16, 16, generator=g),
        "normal": normal,
    }


def test_hybrid_loss_is_zero_for_a_perfect_prediction_and_weights_act_per_map():
    cfg = get_config("tiny").loss
    target, pred = _maps(0), _maps(1)
    total, parts = HybridLoss(cfg)(target, join_maps(target))
    assert abs(float(total)) < 1e-6 and parts["normal_angle_deg"] < 0.1
    base, parts = HybridLoss(cfg)(pred, target)
    cfg2 = copy.deepcopy(cfg)
    cfg2.w_albedo += 1.0
    heavier, _ = HybridLoss(cfg2)(pred, target)
    assert math.isclose(float(heavier - base), cfg.w_l1 * parts["l1_albedo"], rel_tol=1e-5)
    expected_normal = float((1 - (pred["normal"] * target["normal"]).sum(1)).mean())
    assert math.isclose(parts["normal"], expected_normal, rel_tol=1e-5)


def test_gan_term_only_after_gan_start_epoch():
    cfg = get_config("tiny").loss
    loss = HybridLoss(cfg, use_gan=True, gan_start_epoch=5)
    assert not loss.gan_active(5) and loss.gan_active(6)
    pred, target = _maps(1), _maps(0)
    plain, _ = loss(pred, target)
    with_gan, parts = loss(pred, target, d_fake=torch.full((2, 1, 3, 3), 2.0))
    assert math.isclose(float(with_gan - plain), -2.0 * cfg.w_gan, rel_tol=1e-5)
    assert parts["gan_g"] == -2.0


def test_normal_angle_helper_known_angles():
    up = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    tilted = torch.tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    side = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert math.isclose(mean_normal_angle_deg(tilted, up), 45.0, rel_tol=1e-5)
    assert math.isclose(mean_normal_angle_deg(side, up), 90.0, rel_tol=1e-5)
    assert normal_angles_deg(up, up).abs().max() < 0.1


def test_guide_export_format_loads(tmp_path):
    """The guide's export: {'config', 'model_state_dict'}; MultiViewPBRGenerator(ckpt['config'])."""
    model = tiny_model(seed=2)
    path = tmp_path / "model_inference.pth"
    torch.save(
        {"config": get_config("tiny").to_dict(), "model_state_dict": model.state_dict()}, path
    )
    ckpt = torch.load(path, weights_only=True)
    rebuilt = MultiViewPBRGenerator(ckpt["config"]).eval()
    rebuilt.load_state_dict(ckpt["model_state_dict"])
    loaded, _ = load_generator(path)
    x = views(1, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x)["albedo"], model(x)["albedo"])
        assert torch.equal(loaded(x)["albedo"], model(x)["albedo"])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # fixed-size export
def test_generator_exports_to_onnx_and_matches_onnxruntime(tmp_path):
    import numpy as np
    import onnxruntime as ort

    class Packed(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return tuple(out[name] for name in MAPS)

    model = Packed(tiny_model(seed=4))
    x = views(1, 32)
    path = tmp_path / "teacher.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, opset_version=17)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x)
    for a, b in zip(got, expected, strict=True):
        assert np.abs(a - b.numpy()).max() < 1e-4
