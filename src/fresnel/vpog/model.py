"""VPOG's network: a ViT encoder shared by query and templates, query-template attention with
S2RoPE, a patch classifier over template patches + "unseen", and a buddy-relative flow head.

Conventions
- `images` [B, S+1, 3, H, W] float in [0, 1]: index 0 is the query, 1..S the templates. H and W
  are multiples of `patch_size`; (Hp, Wp) = (H // ps, W // ps), N = Hp * Wp patches indexed
  row-major (row * Wp + col), as in `fresnel.vpog.flow`. The encoder normalises with the
  ImageNet mean and std (what CroCo and DINOv2 were trained with).
- `d_ref` [B, 3] and `template_dirs` [B, S, 3]: unit viewing directions in object coordinates
  (`fresnel.vpog.geometry`); d_ref is the reference template's, the query's stand-in.
- Features (`VPOGFeatures`, every field [B, S, N, D]): for each template s, the query's tokens
  and template s's tokens after `cross_depth` blocks of joint attention over the 2N tokens of
  that (query, template) pair. The query is processed once per template, never all S at once,
  and nothing of shape [B, S, N, N, D] is built.
- `classify` gives logits [B, S, N, N+1]: class j < N is template patch j (the query patch's
  buddy), class N is "unseen" (`fresnel.vpog.flow` labels).
- `flow` gives, for each query patch and a chosen buddy patch, the position of the query anchor
  pixel in the template relative to the buddy patch's centre, in patch units (pixels / ps);
  about [-0.5, 0.5] when the buddy is right (`fresnel.vpog.losses.buddy_residual`).

Rotary position embeddings (RoPE). A RoPE over P coordinates splits each attention head's D_h
channels into P equal parts of m = D_h / P channels (m even). Coordinate p rotates part p:
its channels (a_i, b_i) = (x[i], x[i + m/2]), i < m/2, become
    (a_i cos(c_p w_pi) - b_i sin(c_p w_pi),  b_i cos(c_p w_pi) + a_i sin(c_p w_pi)),
with frequencies w_pi = max_freq_p * base_p ** (-2 i / m). Applied to queries and keys, the
score of tokens at coordinates c and c' depends on c' - c only.
- Encoder: P = 2, (row, col) in patch units, base 100, max_freq 1 (rows on the first half of
  each head, columns on the second); there is no absolute position embedding (CroCo v2 style).
- S2RoPE (query-template blocks): P = 4, coordinates (row, col, s_x, s_y): the patch's (row,
  col) with base 100 and max_freq 1, and its image's viewing direction d mapped to the plane
  by the azimuthal equidistant (log) map around d_ref, with base 16 and max_freq 8:
      theta = angle(d_ref, d)                  polar angle, in [0, pi]
      phi   = azimuth of d about d_ref         in (-pi, pi]
      (s_x, s_y) = theta * (cos phi, sin phi)
  The query uses d = d_ref, so (s_x, s_y) = (0, 0). Azimuth 0 is the direction, seen from d_ref,
  of the first template (in order) whose direction is more than 1e-4 rad (sin theta) off the
  d_ref axis, and phi grows counter-clockwise about d_ref (right-handed: e2 = d_ref x e1).
  Every quantity is defined by the directions alone, so rotating d_ref and all template
  directions together (a change of object frame) leaves the model's outputs unchanged. A
  template at the antipode of d_ref (sin theta below the threshold, theta = pi) gets phi = 0.
  Since (s_x, s_y) is the log map, scores depend on the difference of the log-map coordinates:
  within one (query, template) pair that is the template's own coordinate, continuous through
  the pole.

Encoder parameter names follow timm/CroCo (`patch_embed.proj`, `blocks.N.norm1`,
`blocks.N.attn.qkv`, `blocks.N.attn.proj`, `blocks.N.norm2`, `blocks.N.mlp.fc1|fc2`, `norm`,
plus `blocks.N.ls1.gamma`/`ls2.gamma` LayerScale for DINOv2), so `load_encoder_weights` only
renames CroCo's `enc_blocks.`/`enc_norm.` prefixes. A checkpoint's number of heads cannot be
read from its tensors: set `num_heads` to the checkpoint's (6 for ViT-S, 12 for ViT-B).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PATCH_ROPE_BASE = 100.0
SPHERE_ROPE_BASE = 16.0
SPHERE_ROPE_MAX_FREQ = 8.0
OFF_AXIS_EPS = 1e-4  # sin(theta) below which a direction has no usable azimuth about d_ref
ENCODER_TYPES = ("croco", "dinov2")
# checkpoint keys that are not encoder tensors here (DINOv2's absolute embedding and tokens)
_DINOV2_SKIPPED = ("cls_token", "pos_embed", "mask_token", "register_tokens")

RopeTable = tuple[Tensor, Tensor]  # (cos, sin), each [..., T, P, m/2]


@dataclass
class VPOGModelConfig:
    """Sizes of the network. `image_size` is the training size (a multiple of `patch_size`);
    having no absolute position embedding, the model accepts any multiple of `patch_size`.
    `encoder_weights`: a CroCo or DINOv2 checkpoint file (`encoder_type`), None for random init.
    """

    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 384
    encoder_depth: int = 6
    num_heads: int = 6
    mlp_ratio: float = 4.0
    cross_depth: int = 2
    encoder_type: Literal["croco", "dinov2"] = "croco"
    encoder_weights: str | None = None
    flow_hidden: int = 128

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if self.embed_dim % self.num_heads or (self.embed_dim // self.num_heads) % 8:
            raise ValueError(
                f"embed_dim {self.embed_dim} / num_heads {self.num_heads} must be a "
                "whole head size divisible by 8 (four S2RoPE parts of even size)"
            )
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"encoder_type {self.encoder_type!r}: use one of {ENCODER_TYPES}")

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads


@dataclass
class VPOGFeatures:
    """Per-template token sets, every field [B, S, N, D] (batch first, so it can be sliced)."""

    query: Tensor
    templates: Tensor


# -- rotary embeddings ---------------------------------------------------------------------------
class Rotary(nn.Module):
    """RoPE over P coordinates (module docstring); `table(coords [..., T, P])` -> (cos, sin)."""

    def __init__(self, head_dim: int, max_freqs: Sequence[float], bases: Sequence[float]) -> None:
        super().__init__()
        parts = len(max_freqs)
        if head_dim % (2 * parts):
            raise ValueError(f"head size {head_dim} does not split into {parts} even parts")
        half = head_dim // parts // 2
        exponents = torch.arange(half, dtype=torch.float64) / half  # 2 i / m
        freqs = [f * b**-exponents for f, b in zip(max_freqs, bases, strict=True)]
        self.register_buffer("freqs", torch.stack(freqs).float(), persistent=False)  # [P, m/2]

    def table(self, coords: Tensor) -> RopeTable:
        angles = coords[..., None] * self.freqs.to(coords.dtype)  # [..., T, P, m/2]
        return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, table: RopeTable) -> Tensor:
    """Rotate x [..., T, D_h] by a table whose cos/sin broadcast against [..., T, P, m/2]."""
    cos, sin = table[0].to(x.dtype), table[1].to(x.dtype)
    parts = x.unflatten(-1, (cos.shape[-2], 2, cos.shape[-1]))  # [..., T, P, 2, m/2]
    a, b = parts.unbind(-2)
    rotated = torch.stack((a * cos - b * sin, b * cos + a * sin), dim=-2)
    return rotated.flatten(-3)


def _angle_dtype(x: Tensor) -> torch.dtype:
    """RoPE angles stay in float32 (float64 for float64 tokens), also under autocast."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def patch_grid(rows: int, cols: int, device: torch.device | str | None = None) -> Tensor:
    """[rows * cols, 2] float (row, col) of each patch, row-major."""
    r, c = torch.meshgrid(
        torch.arange(rows, device=device), torch.arange(cols, device=device), indexing="ij"
    )
    return torch.stack((r, c), -1).reshape(-1, 2).float()


def spherical_coordinates(d_ref: Tensor, dirs: Tensor) -> Tensor:
    """[B, S, 2] log-map coordinates theta * (cos phi, sin phi) of dirs [B, S, 3] about
    d_ref [B, 3], with the azimuth origin of the module docstring (S2RoPE)."""
    pole = F.normalize(d_ref, dim=-1)[:, None]  # [B, 1, 3]
    dirs = F.normalize(dirs, dim=-1)
    cos = (dirs * pole).sum(-1)
    tangent = dirs - cos[..., None] * pole
    sin = tangent.norm(dim=-1)
    theta = torch.atan2(sin, cos)
    off_axis = sin > OFF_AXIS_EPS
    unit = tangent / sin.clamp_min(OFF_AXIS_EPS)[..., None]
    first = off_axis.int().argmax(dim=1)  # first off-axis template (0 when there is none)
    e1 = unit.gather(1, first[:, None, None].expand(-1, 1, 3))  # [B, 1, 3]
    e2 = torch.linalg.cross(pole, e1)
    along = torch.where(off_axis, (unit * e1).sum(-1), 1.0)
    across = torch.where(off_axis, (unit * e2).sum(-1), 0.0)
    return theta[..., None] * torch.stack((along, across), -1)


class S2RoPE(Rotary):
    """Spherical + 2D RoPE of the query-template blocks (module docstring)."""

    def __init__(self, head_dim: int) -> None:
        super().__init__(
            head_dim,
            (1.0, 1.0, SPHERE_ROPE_MAX_FREQ, SPHERE_ROPE_MAX_FREQ),
            (PATCH_ROPE_BASE, PATCH_ROPE_BASE, SPHERE_ROPE_BASE, SPHERE_ROPE_BASE),
        )

    def pair_table(self, grid: Tensor, sphere: Tensor) -> RopeTable:
        """Table for [query tokens; template tokens] of each pair: grid [N, 2] (row, col),
        sphere [M, 2] the template's log-map coordinates -> cos/sin [M, 2N, 4, m/2]."""
        n = grid.shape[0]
        query = torch.cat((grid, grid.new_zeros(n, 2)), -1).expand(sphere.shape[0], n, 4)
        template = torch.cat(
            (grid.expand(sphere.shape[0], n, 2), sphere[:, None].expand(-1, n, 2)), -1
        )
        return self.table(torch.cat((query, template), dim=1))


# -- transformer parts ---------------------------------------------------------------------------
class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        M, T, D = x.shape
        q, k, v = self.qkv(x).view(M, T, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        if rope is not None:
            table = (rope[0].unsqueeze(-4), rope[1].unsqueeze(-4))  # broadcast over heads
            q, k = apply_rotary(q, table), apply_rotary(k, table)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(M, T, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-LayerNorm transformer block; LayerScale (DINOv2's ls1/ls2) when `layer_scale`."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, layer_scale: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: Tensor, rope: RopeTable | None = None) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)  # [M, N, D]


class ViTEncoder(nn.Module):
    """images [M, 3, H, W] in [0, 1] -> tokens [M, N, D], with 2D RoPE and no class token."""

    def __init__(self, cfg: VPOGModelConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.embed_dim)
        layer_scale = cfg.encoder_type == "dinov2"
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, layer_scale)
            for _ in range(cfg.encoder_depth)
        )
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.rope = Rotary(cfg.head_dim, (1.0, 1.0), (PATCH_ROPE_BASE, PATCH_ROPE_BASE))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN)[:, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD)[:, None, None], persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patch_embed((images - self.mean) / self.std)
        rows, cols = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        rope = self.rope.table(patch_grid(rows, cols, images.device).to(_angle_dtype(x)))
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)


# -- checkpoints ---------------------------------------------------------------------------------
def _encoder_key(key: str, encoder_type: str) -> str | None:
    """The encoder parameter a checkpoint key maps to (None: not an encoder tensor here)."""
    if encoder_type == "croco":
        for old, new in (("enc_blocks.", "blocks."), ("enc_norm.", "norm.")):
            if key.startswith(old):
                return new + key[len(old) :]
        return key if key.startswith("patch_embed.") else None
    if key.split(".")[0] in _DINOV2_SKIPPED:
        return None
    return key if key.startswith(("patch_embed.", "blocks.", "norm.")) else None


def load_encoder_weights(encoder: ViTEncoder, path: str | Path, encoder_type: str) -> list[str]:
    """Load a CroCo (state dict under "model", `enc_blocks.N.*`, `enc_norm.*`) or DINOv2
    (`blocks.N.*`, `norm.*`) checkpoint into `encoder`; returns the checkpoint keys left unused
    (decoders, DINOv2's cls_token/pos_embed, blocks beyond the encoder's depth). Every encoder
    tensor must be present with its shape, else ValueError."""
    if encoder_type not in ENCODER_TYPES:
        raise ValueError(f"encoder_type {encoder_type!r}: use one of {ENCODER_TYPES}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    expected = encoder.state_dict()
    mapped, unused = {}, []
    for key, value in state.items():
        name = _encoder_key(key, encoder_type)
        if name in expected:
            mapped[name] = value
        else:
            unused.append(key)
    _check_loadable(path, encoder_type, expected, mapped)
    encoder.load_state_dict(mapped, strict=True)
    return unused


def _check_loadable(path, encoder_type: str, expected: dict, mapped: dict) -> None:
    missing = [name for name in expected if name not in mapped]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} encoder tensors missing from this "
            f"{encoder_type} checkpoint (first: {missing[0]}); check encoder_type "
            "and that encoder_depth does not exceed the checkpoint's depth"
        )
    for name, value in mapped.items():
        if value.shape != expected[name].shape:
            raise ValueError(
                f"{path}: {name} has shape {tuple(value.shape)} in the checkpoint "
                f"but {tuple(expected[name].shape)} in the model; set embed_dim, "
                "patch_size and mlp_ratio to the checkpoint's"
            )


# -- the model -----------------------------------------------------------------------------------
class VPOGModel(nn.Module):
    """`forward(images, d_ref, template_dirs) -> VPOGFeatures`, then `classify` and `flow`."""

    def __init__(self, cfg: VPOGModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.embed_dim
        self.encoder = ViTEncoder(cfg)
        self.encoder_source = "random init"
        if cfg.encoder_weights:
            load_encoder_weights(self.encoder, cfg.encoder_weights, cfg.encoder_type)
            self.encoder_source = f"{cfg.encoder_type}:{cfg.encoder_weights}"
        self.role = nn.Parameter(torch.zeros(2, dim))  # added to query / template tokens
        self.cross_blocks = nn.ModuleList(
            Block(dim, cfg.num_heads, cfg.mlp_ratio) for _ in range(cfg.cross_depth)
        )
        self.cross_norm = nn.LayerNorm(dim, eps=1e-6)
        self.s2rope = S2RoPE(cfg.head_dim)
        self.match_query = nn.Linear(dim, dim)
        self.match_template = nn.Linear(dim, dim)
        self.unseen = nn.Parameter(torch.zeros(dim))
        self.flow_head = nn.Sequential(
            nn.Linear(2 * dim, cfg.flow_hidden),
            nn.GELU(),
            nn.Linear(cfg.flow_hidden, cfg.flow_hidden),
            nn.GELU(),
            nn.Linear(cfg.flow_hidden, 2),
        )
        self._init_new_weights()

    def _init_new_weights(self) -> None:
        """Truncated-normal linears; the encoder keeps PyTorch's init (or loaded weights)."""
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("encoder."):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.role, std=0.02)
        nn.init.trunc_normal_(self.unseen, std=0.02)

    def forward(self, images: Tensor, d_ref: Tensor, template_dirs: Tensor) -> VPOGFeatures:
        B, S, H, W = _check_inputs(images, d_ref, template_dirs, self.cfg.patch_size)
        ps = self.cfg.patch_size
        tokens = self.encoder(images.flatten(0, 1)).unflatten(0, (B, S + 1))  # [B, S+1, N, D]
        N, D = tokens.shape[-2:]
        query = tokens[:, :1].expand(B, S, N, D) + self.role[0]
        pairs = torch.cat((query, tokens[:, 1:] + self.role[1]), dim=2).reshape(B * S, 2 * N, D)
        angle_dtype = _angle_dtype(pairs)
        sphere = spherical_coordinates(d_ref.to(angle_dtype), template_dirs.to(angle_dtype))
        grid = patch_grid(H // ps, W // ps, images.device).to(angle_dtype)
        rope = self.s2rope.pair_table(grid, sphere.reshape(B * S, 2))
        for block in self.cross_blocks:
            pairs = block(pairs, rope)
        pairs = self.cross_norm(pairs).view(B, S, 2 * N, D)
        return VPOGFeatures(query=pairs[:, :, :N], templates=pairs[:, :, N:])

    def classify(self, features: VPOGFeatures) -> Tensor:
        """[B, S, N, N+1]: scaled dot products of projected query and template tokens, and of
        the query token with a learned unseen token (last class)."""
        q = self.match_query(features.query)
        k = self.match_template(features.templates)
        unseen = self.unseen.expand(*k.shape[:2], 1, -1)
        return q @ torch.cat((k, unseen), dim=2).transpose(-1, -2) / math.sqrt(q.shape[-1])

    def flow(self, features: VPOGFeatures, buddy: Tensor) -> Tensor:
        """[B, S, N, 2] anchor position relative to the buddy patch centre (patch units), from
        each query token and its buddy's template token; buddy [B, S, N] long in 0..N-1."""
        index = buddy[..., None].expand(*buddy.shape, features.templates.shape[-1])
        partner = features.templates.gather(2, index)
        return self.flow_head(torch.cat((features.query, partner), dim=-1))


def _check_inputs(images: Tensor, d_ref: Tensor, dirs: Tensor, ps: int) -> tuple[int, ...]:
    if images.ndim != 5 or images.shape[1] < 2 or images.shape[2] != 3:
        raise ValueError(f"images {tuple(images.shape)}: expected [B, S+1, 3, H, W], S >= 1")
    B, S1, _, H, W = images.shape
    if H % ps or W % ps:
        raise ValueError(f"images {H}x{W} are not multiples of patch_size {ps}")
    if d_ref.shape != (B, 3) or dirs.shape != (B, S1 - 1, 3):
        raise ValueError(
            f"d_ref {tuple(d_ref.shape)} / template_dirs {tuple(dirs.shape)}: "
            f"expected ({B}, 3) / ({B}, {S1 - 1}, 3)"
        )
    return B, S1 - 1, H, W
