"""Tests of the VPOG network (`fresnel.vpog.model`) on tiny configs: 32 px images of 8 px patches
(a 4 x 4 grid, N = 16), 32 channels, 2 heads of 16 channels, one block of each kind."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fresnel.vpog.model import (
    S2RoPE,
    ViTEncoder,
    VPOGFeatures,
    VPOGModel,
    VPOGModelConfig,
    apply_rotary,
    load_encoder_weights,
    patch_grid,
    spherical_coordinates,
)

TINY = dict(
    image_size=32,
    patch_size=8,
    embed_dim=32,
    encoder_depth=1,
    num_heads=2,
    cross_depth=1,
    flow_hidden=16,
)
N = 16


def tiny(**overrides) -> VPOGModelConfig:
    return VPOGModelConfig(**{**TINY, **overrides})


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q


def inputs(B: int = 2, S: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(B, S + 1, 3, 32, 32, generator=g)
    d_ref = F.normalize(torch.randn(B, 3, generator=g), dim=-1)
    dirs = F.normalize(torch.randn(B, S, 3, generator=g), dim=-1)
    return images, d_ref, dirs


# -- shapes and the model's heads ----------------------------------------------------------------
def test_forward_classify_flow_shapes() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny())
    features = model(*inputs())
    assert isinstance(features, VPOGFeatures)
    assert features.query.shape == features.templates.shape == (2, 3, N, 32)
    assert model.classify(features).shape == (2, 3, N, N + 1)
    buddy = torch.randint(0, N, (2, 3, N))
    assert model.flow(features, buddy).shape == (2, 3, N, 2)
    assert model.encoder_source == "random init"


def test_each_template_is_matched_independently() -> None:
    """A template's tokens and logits do not depend on the other templates of the batch."""
    torch.manual_seed(0)
    model = VPOGModel(tiny()).eval()
    images, d_ref, dirs = inputs(B=1, S=3)
    both = model(images, d_ref, dirs)
    # drop the last template: the azimuth origin (the first template) stays the same
    alone = model(images[:, [0, 1, 2]], d_ref, dirs[:, [0, 1]])
    torch.testing.assert_close(alone.query, both.query[:, :2])
    torch.testing.assert_close(model.classify(alone), model.classify(both)[:, :2])


def test_flow_uses_the_gathered_buddy_token() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny()).eval()
    features = model(*inputs(B=1, S=1))
    buddy = torch.arange(N).flip(0)[None, None]
    manual = model.flow_head(torch.cat((features.query, features.templates[:, :, buddy[0, 0]]), -1))
    torch.testing.assert_close(model.flow(features, buddy), manual)


def test_classify_is_scaled_dot_products_with_an_unseen_token() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny()).eval()
    features = model(*inputs(B=1, S=1))
    logits = model.classify(features)[0, 0]
    q = model.match_query(features.query[0, 0, 5])
    k = model.match_template(features.templates[0, 0, 7])
    torch.testing.assert_close(logits[5, 7], q @ k / math.sqrt(32))
    torch.testing.assert_close(logits[5, N], q @ model.unseen / math.sqrt(32))


def test_backward_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny())
    features = model(*inputs())
    loss = model.classify(features).logsumexp(-1).mean()
    loss = loss + model.flow(features, torch.zeros(2, 3, N, dtype=torch.long)).square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_bfloat16_autocast_forward() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = model(*inputs())
        logits = model.classify(features)
        residual = model.flow(features, torch.zeros(2, 3, N, dtype=torch.long))
    assert torch.isfinite(logits).all() and torch.isfinite(residual).all()


def test_bad_inputs_raise() -> None:
    model = VPOGModel(tiny())
    images, d_ref, dirs = inputs()
    with pytest.raises(ValueError, match="template_dirs"):
        model(images, d_ref, dirs[:, :2])
    with pytest.raises(ValueError, match="multiples of patch_size"):
        model(images[..., :30], d_ref, dirs)
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny(embed_dim=24)


# -- S2RoPE --------------------------------------------------------------------------------------
def test_model_is_invariant_to_the_object_frame() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny()).eval()
    images, d_ref, dirs = inputs()
    rotation = random_rotation(torch.Generator().manual_seed(3)).float()
    base = model(images, d_ref, dirs)
    turned = model(images, d_ref @ rotation.T, dirs @ rotation.T)
    torch.testing.assert_close(turned.query, base.query, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model.classify(turned), model.classify(base), atol=1e-5, rtol=1e-5)


def test_model_depends_on_the_template_direction() -> None:
    torch.manual_seed(0)
    model = VPOGModel(tiny()).eval()
    images, d_ref, dirs = inputs()
    moved = F.normalize(dirs + 0.3 * d_ref[:, None], dim=-1)
    assert not torch.allclose(model(images, d_ref, dirs).query, model(images, d_ref, moved).query)


def test_spherical_coordinates_known_answers() -> None:
    pole = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)
    s = math.sin(0.5)
    dirs = torch.tensor(
        [
            [
                [s, 0.0, math.cos(0.5)],  # the azimuth origin, theta 0.5
                [0.0, 1.0, 0.0],  # 90 degrees counter-clockwise about +z, theta pi/2
                [0.0, 0.0, 1.0],  # the pole
                [-1.0, 0.0, 0.0],
            ]
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [[[0.5, 0.0], [0.0, math.pi / 2], [0.0, 0.0], [-math.pi / 2, 0.0]]], dtype=torch.float64
    )
    torch.testing.assert_close(spherical_coordinates(pole, dirs), expected)


def test_azimuth_origin_skips_templates_on_the_pole() -> None:
    pole = torch.tensor([[1.0, 0.0, 0.0]])
    dirs = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]]])
    coords = spherical_coordinates(pole, dirs)
    half_pi = math.pi / 2
    # origin: +z (template 1); e2 = x cross z = -y, so +y is at azimuth -90 degrees
    expected = torch.tensor([[[0.0, 0.0], [half_pi, 0.0], [0.0, -half_pi]]])
    torch.testing.assert_close(coords, expected)


def rope_scores(rope: S2RoPE, q, k, coords_q, coords_k) -> torch.Tensor:
    q_rot = apply_rotary(q, rope.table(coords_q))
    k_rot = apply_rotary(k, rope.table(coords_k))
    return q_rot @ k_rot.transpose(-1, -2)


def test_rope_scores_depend_on_relative_positions_only() -> None:
    g = torch.Generator().manual_seed(0)
    rope = S2RoPE(16).double()
    q = torch.randn(5, 16, generator=g, dtype=torch.float64)
    k = torch.randn(7, 16, generator=g, dtype=torch.float64)
    coords_q = torch.randn(5, 4, generator=g, dtype=torch.float64) * 3
    coords_k = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    shift = torch.tensor([2.0, -5.0, 0.7, -1.3], dtype=torch.float64)
    base = rope_scores(rope, q, k, coords_q, coords_k)
    torch.testing.assert_close(rope_scores(rope, q, k, coords_q + shift, coords_k + shift), base)
    assert not torch.allclose(rope_scores(rope, q, k, coords_q + shift, coords_k), base)


def test_rope_is_a_rotation_and_zero_is_identity() -> None:
    rope = S2RoPE(16)
    x = torch.randn(3, 16)
    torch.testing.assert_close(apply_rotary(x, rope.table(torch.zeros(3, 4))), x)
    turned = apply_rotary(x, rope.table(torch.randn(3, 4)))
    torch.testing.assert_close(turned.norm(dim=-1), x.norm(dim=-1))


def test_s2rope_attention_gradcheck() -> None:
    g = torch.Generator().manual_seed(0)
    rope = S2RoPE(8).double()
    grid = patch_grid(2, 2).double()
    sphere = torch.tensor([[0.4, -0.2]], dtype=torch.float64)
    table = rope.pair_table(grid, sphere)  # [1, 8, 4, 1]
    table = (table[0][:, None], table[1][:, None])  # one head axis

    def attention(q, k, v):
        return F.scaled_dot_product_attention(apply_rotary(q, table), apply_rotary(k, table), v)

    shape = (1, 1, 8, 8)
    q, k, v = (
        torch.randn(shape, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    assert torch.autograd.gradcheck(attention, (q, k, v))


# -- encoder checkpoints -------------------------------------------------------------------------
def encoder_and_images(encoder_type: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = tiny(encoder_type=encoder_type, encoder_depth=2)
    return cfg, ViTEncoder(cfg).eval(), torch.rand(2, 3, 32, 32)


def croco_naming(state: dict) -> dict:
    """CroCo's names for an encoder state dict: enc_blocks.N.*, enc_norm.*, patch_embed.*."""
    return {("enc_" + k if k.startswith(("blocks.", "norm.")) else k): v for k, v in state.items()}


def test_load_croco_checkpoint(tmp_path) -> None:
    cfg, source, images = encoder_and_images("croco")
    renamed = croco_naming(source.state_dict())
    renamed["dec_blocks.0.attn.qkv.weight"] = torch.zeros(3)  # a decoder tensor, ignored
    path = tmp_path / "croco.pth"
    torch.save({"model": renamed, "args": "whatever"}, path)
    assert "enc_norm.weight" in renamed and "enc_blocks.1.mlp.fc2.bias" in renamed
    torch.manual_seed(1)
    target = ViTEncoder(cfg).eval()
    assert not torch.equal(target(images), source(images))
    unused = load_encoder_weights(target, path, "croco")
    assert unused == ["dec_blocks.0.attn.qkv.weight"]
    assert torch.equal(target(images), source(images))


def test_load_dinov2_checkpoint_skips_tokens_and_extra_blocks(tmp_path) -> None:
    cfg, source, images = encoder_and_images("dinov2")
    state = dict(source.state_dict())
    assert "blocks.0.ls1.gamma" in state
    state.update(
        {
            "cls_token": torch.zeros(1, 1, 32),
            "pos_embed": torch.zeros(1, 17, 32),
            "blocks.2.norm1.weight": torch.ones(32),
        }
    )
    path = tmp_path / "dinov2.pth"
    torch.save(state, path)
    torch.manual_seed(1)
    target = ViTEncoder(cfg).eval()
    unused = load_encoder_weights(target, path, "dinov2")
    assert sorted(unused) == ["blocks.2.norm1.weight", "cls_token", "pos_embed"]
    assert torch.equal(target(images), source(images))


def test_model_records_its_encoder_source(tmp_path) -> None:
    _, source, images = encoder_and_images("dinov2")
    path = tmp_path / "dino.pth"
    torch.save(source.state_dict(), path)
    model = VPOGModel(tiny(encoder_type="dinov2", encoder_depth=2, encoder_weights=str(path)))
    assert model.encoder_source == f"dinov2:{path}"
    assert torch.equal(model.encoder.eval()(images), source(images))


def test_checkpoint_mismatches_raise_one_clear_line(tmp_path) -> None:
    _, source, _ = encoder_and_images("croco")
    state = croco_naming(source.state_dict())
    wide = ViTEncoder(tiny(embed_dim=64, encoder_depth=2))
    path = tmp_path / "small.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"small\.pth: patch_embed\.proj\.weight has shape") as err:
        load_encoder_weights(wide, path, "croco")
    assert "\n" not in str(err.value) and "embed_dim" in str(err.value)
    deep = ViTEncoder(tiny(encoder_depth=3))
    with pytest.raises(ValueError, match=r"missing .* \(first: blocks\.2\.") as err:
        load_encoder_weights(deep, path, "croco")
    assert "encoder_depth" in str(err.value)
    with pytest.raises(ValueError, match="missing"):
        load_encoder_weights(ViTEncoder(tiny(encoder_depth=2)), path, "dinov2")
