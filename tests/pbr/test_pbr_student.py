"""The PBR student: preset shapes, SR, the shared PLK kernel, view fusion, reference layers,
configs and checkpoints. Presets are built at their real widths but run at 64 px (their
real input sizes are too slow on a CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fresnel.config import ConfigError, load_config_file
from fresnel.pbr.student import (
    Attention,
    DynamicDepthwise3x3,
    MobileNetV3Encoder,
    PBRStudent,
    build_student,
    load_student,
    parameter_counts,
    save_student,
)
from fresnel.pbr.student_config import (
    ARCHS,
    PRESETS,
    StudentConfig,
    apply_overrides,
    get_student_config,
)

REPO = Path(__file__).resolve().parents[2]
SIDE = 64
CONFIG_FILES = ("mobilenetv3_512", "convattn_student", "mobilenetv3_2048")


def _views(batch=1, side=SIDE, seed=0):
    return torch.randn(batch, 3, 3, side, side, generator=torch.Generator().manual_seed(seed))


def _tiny(arch="mobilenetv3_vit", **overrides) -> tuple[PBRStudent, StudentConfig]:
    cfg = apply_overrides(get_student_config("tiny_student"), {"model.arch": arch, **overrides})
    torch.manual_seed(0)
    return build_student(cfg), cfg


@pytest.mark.parametrize("name", PRESETS)
def test_preset_output_shapes_ranges_and_parameter_counts(name):
    cfg = get_student_config(name)
    torch.manual_seed(0)
    model = build_student(cfg).eval()
    with torch.no_grad():
        out = model(_views(batch=2))
    scale = cfg.model.sr_scale if cfg.model.use_sr else 1
    assert cfg.data.output_size == cfg.data.image_size * scale
    for key, channels in {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}.items():
        assert out[key].shape == (2, channels, SIDE * scale, SIDE * scale), key
    for key in ("albedo", "roughness", "metallic"):
        assert out[key].min() >= 0 and out[key].max() <= 1
    torch.testing.assert_close(out["normal"].norm(dim=1), torch.ones(2, SIDE * scale, SIDE * scale))
    counts = parameter_counts(model)
    print(name, counts)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] == sum(v for k, v in counts.items() if k != "total")
    assert (counts["sr_head"] > 0) == cfg.model.use_sr
    if name != "tiny_student":  # a phone-sized student: a few million parameters
        assert 2e6 < counts["total"] < 8e6


def test_encoder_is_mobilenetv3_large():
    """Same weights in torchvision's MobileNetV3-Large features[:16] give the same output."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    reference = torchvision.models.mobilenet_v3_large(weights=None).features[:16]
    for module in reference.modules():
        if isinstance(module, nn.BatchNorm2d):  # non-trivial running statistics
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    ours = MobileNetV3Encoder(1.0)
    mapped = dict(zip(ours.state_dict(), reference.state_dict().values(), strict=True))
    ours.load_state_dict(mapped)
    x = torch.randn(2, 3, SIDE, SIDE)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x)[-1], reference.eval()(x))
    assert [f.shape[1] for f in ours(x)] == [16, 24, 40, 112, 160]


def test_attention_matches_torch_multihead_attention():
    torch.manual_seed(0)
    ours = Attention(32, heads=4)
    reference = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(ours.qkv.weight)
        reference.in_proj_bias.copy_(ours.qkv.bias)
        reference.out_proj.weight.copy_(ours.proj.weight)
        reference.out_proj.bias.copy_(ours.proj.bias)
        x = torch.randn(2, 12, 32)
        torch.testing.assert_close(ours(x), reference(x, x, x, need_weights=False)[0])


def test_dynamic_kernel_equals_per_sample_depthwise_conv():
    torch.manual_seed(0)
    layer = DynamicDepthwise3x3(8)
    x = torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        kernels = layer.predict(x.mean(dim=(2, 3), keepdim=True)).reshape(2, 8, 1, 3, 3)
        expected = torch.cat(
            [F.conv2d(x[i : i + 1], kernels[i], padding=1, groups=8) for i in range(2)]
        )
        torch.testing.assert_close(layer(x), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_sr_doubles_the_side_and_can_be_bypassed(arch):
    model, cfg = _tiny(arch)
    model.eval()
    with torch.no_grad():
        with_sr = model(_views())
        without = model(_views(), use_sr=False)
    assert cfg.model.sr_scale == 2
    assert with_sr["albedo"].shape[-1] == 2 * SIDE == model.output_side(SIDE)
    assert without["albedo"].shape[-1] == SIDE == model.output_side(SIDE, use_sr=False)
    torch.testing.assert_close(without["normal"].norm(dim=1), torch.ones(1, SIDE, SIDE))


def test_plk_kernel_is_one_parameter_shared_by_three_blocks():
    model = build_student(get_student_config("convattn_student"))
    large = [(n, p) for n, p in model.named_parameters() if p.shape[-2:] == (17, 17)]
    assert [n for n, _ in large] == ["fusion.plk_weight"]
    assert large[0][1].shape[1] == 1  # depthwise: one 17x17 filter per channel
    assert len(model.fusion.blocks) == 3
    for block in model.fusion.blocks:  # no block owns a large kernel of its own
        assert all(p.ndim < 4 or p.shape[-1] < 17 for p in block.parameters())
    # Every block reads the shared kernel: its gradient collects a contribution from each.
    model.eval()
    feats = torch.randn(3, model.encoder.channels[-1], 2, 2)
    grads = []
    for n_blocks in (1, 2, 3):
        fusion = model.fusion
        fusion.zero_grad()
        x = fusion.fuse(fusion.proj_in(feats).reshape(1, 3, -1, 2, 2))
        for block in fusion.blocks[:n_blocks]:
            x = block(x, fusion.plk_weight)
        x.square().sum().backward()
        grads.append(fusion.plk_weight.grad.abs().sum().item())
    assert all(g > 0 for g in grads) and len(set(grads)) == 3


@pytest.mark.parametrize("arch", ARCHS)
def test_every_view_reaches_the_output(arch):
    model, _ = _tiny(arch)
    model.eval()
    views = _views().requires_grad_(True)
    out = model(views)
    sum(o.square().mean() for o in out.values()).backward()
    per_view = views.grad.abs().sum(dim=(0, 2, 3, 4))
    assert (per_view > 0).all(), per_view
    # The bottleneck fusion alone (no skips) also mixes all three views.
    feats = torch.randn(3, model.encoder.channels[-1], 1, 1, requires_grad=True)
    model.fusion(feats, batch=1).square().sum().backward()
    assert (feats.grad.abs().sum(dim=(1, 2, 3)) > 0).all()


def test_attention_grid_pools_large_bottlenecks():
    model, _ = _tiny(**{"model.attention_grid": 1})
    model.eval()
    assert model.fusion.pool_factor(2) == 2
    with torch.no_grad():
        assert model(_views())["albedo"].shape[-1] == 2 * SIDE
    model, _ = _tiny(**{"model.attention_grid": 3})
    with pytest.raises(ValueError, match="attention_grid"):
        model(torch.randn(1, 3, 3, 128, 128))


def test_bad_inputs_are_named():
    model, _ = _tiny()
    with pytest.raises(ValueError, match=r"\[B, 3, 3, H, W\]"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        model(torch.randn(1, 3, 3, 48, 48))


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_config_files_match_presets(name):
    path = REPO / "configs" / "pbr" / f"{name}.py"
    assert load_config_file(path, StudentConfig).to_dict() == get_student_config(name).to_dict()
    assert get_student_config(str(path)).to_dict() == get_student_config(name).to_dict()


def test_config_overrides_roundtrip_and_errors(tmp_path):
    cfg = get_student_config("mobilenetv3_512")
    apply_overrides(cfg, {"data": {"image_size": "256"}, "model.width_mult": "0.5"})
    assert cfg.data.image_size == 256 and cfg.data.output_size == 512
    assert cfg.model.width_mult == 0.5
    apply_overrides(cfg, {"model.use_sr": "false"})
    assert cfg.model.use_sr is False and cfg.data.output_size == 256
    assert StudentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"model\.widht"):
        apply_overrides(cfg, {"model.widht": 1})
    bad = cfg.to_dict()
    bad["data"]["output_size"] = 1000
    with pytest.raises(ValueError, match="output_size=1000"):
        StudentConfig.from_dict(bad)
    with pytest.raises(ConfigError, match="unknown config 'mobilenetv4'"):
        get_student_config("mobilenetv4")
    assert get_student_config("mobilenetv3_512.py") == get_student_config("mobilenetv3_512")
    with pytest.raises(ConfigError, match=r"configs/pbr/mobilenetv3_512\.py"):
        get_student_config(tmp_path / "configs" / "mobilenetv3_512.py")  # the guide's path
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config():\n    return {}\n")
    with pytest.raises(ValueError, match=r"broken\.py"):
        get_student_config(broken)


def test_checkpoint_roundtrip(tmp_path):
    model, cfg = _tiny("convattn")
    model.train()
    model(_views(batch=2))  # move the BatchNorm statistics away from their initial values
    path = tmp_path / "best_student.pth"
    save_student(path, model, cfg, epoch=7)
    loaded, loaded_cfg = load_student(path)
    assert not loaded.training and loaded_cfg == cfg
    assert torch.load(path, weights_only=True)["epoch"] == 7
    with torch.no_grad():
        expected, got = model.eval()(_views()), loaded(_views())
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    teacher_like = tmp_path / "best_model.pth"
    torch.save({"generator_state_dict": {}, "config": {}}, teacher_like)
    with pytest.raises(ValueError, match=r"best_model\.pth"):
        load_student(teacher_like)
