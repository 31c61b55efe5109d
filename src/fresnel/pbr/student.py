"""The distilled NeuroPBR student: a mobile-sized multi-view PBR network and its checkpoints.

Architecture (one encoder shared by the three views, fusion at the bottleneck, one decoder):

- Encoder: MobileNetV3-Large inverted residual blocks (1x1 expand, depthwise kxk, optional
  squeeze-excitation, hardswish/ReLU, 1x1 project), channels scaled by `width_mult`. Skips at
  strides 2, 4, 8 and 16, bottleneck at stride 32.
- Fusion ("mobilenetv3_vit"): a small ViT over the bottleneck tokens of all three views at once
  (cross-view attention, written with matmul + softmax so that it converts to Core ML; a
  depthwise 3x3 conv gives resolution-free positions and a learned embedding tells the views
  apart). `attention_grid` caps the token grid per view by average pooling with an integer
  factor (the 2048 student: 64x64 -> 16x16) because attention memory grows as O(N^2).
- Fusion ("convattn"): PLK blocks after the ESC paper (Emulating Self-attention with
  Convolution): ONE 17x17 depthwise kernel tensor is shared by (pre-computed for) all three
  blocks and applied to a fraction of the channels, plus a cheap dynamic branch: a per-sample,
  per-channel 3x3 kernel predicted from global pooling and applied as a sum of nine shifted
  maps (linear in the pixel count, no batch-folded grouped conv, so it exports). Views are
  mixed by a 1x1 conv over their concatenated features plus the learned view weights.
- Both fuse the per-view maps (bottleneck and every skip) with learned per-view, per-channel
  softmax weights, decode with nearest x2 upsampling + depthwise-separable blocks, and end in
  an optional PixelShuffle super-resolution head (x`sr_scale`) and four heads: sigmoid albedo,
  roughness and metallic, L2-normalised tangent-space normal.

ConvAttn resolution: the guide's table says 1024 -> 1024 without SR while its command says
"512 -> 1024 via 4x SR" (4x of 512 is 2048, not 1024: it contradicts itself). We follow the
shared contract: `convattn_student` is 512 -> 1024 with SR x2, so it trains on the same 1024
teacher shards as the ViT student. Run it at 1024 -> 1024 by overriding data.image_size=1024,
model.use_sr=False (the converter's --test-resolution 1024 does the same at export time).

Options and presets live in fresnel.pbr.student_config. SR can be bypassed at run time (`forward(views, use_sr=False)`): the heads then read the
decoder's full-resolution features and the output side equals the input side.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fresnel.device import resolve
from fresnel.pbr.maps import MAP_CHANNELS, NUM_VIEWS
from fresnel.pbr.student_config import (
    ARCHS,
    ENCODER_STRIDE,
    StudentConfig,
    StudentModelConfig,
    validate,
)
from fresnel.training import Checkpointer, Progress, read_checkpoint

# MobileNetV3-Large (Howard et al. 2019, table 1) without the classifier:
# (kernel, expansion channels, output channels, squeeze-excite, activation, stride)
MBV3_LARGE = (
    (3, 16, 16, False, "relu", 1),
    (3, 64, 24, False, "relu", 2),
    (3, 72, 24, False, "relu", 1),
    (5, 72, 40, True, "relu", 2),
    (5, 120, 40, True, "relu", 1),
    (5, 120, 40, True, "relu", 1),
    (3, 240, 80, False, "hswish", 2),
    (3, 200, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 184, 80, False, "hswish", 1),
    (3, 480, 112, True, "hswish", 1),
    (3, 672, 112, True, "hswish", 1),
    (5, 672, 160, True, "hswish", 2),
    (5, 960, 160, True, "hswish", 1),
    (5, 960, 160, True, "hswish", 1),
)
STEM_CHANNELS = 16
# Decoder widths at strides 32, 16, 8, 4, 2, 1 (before width_mult).
DECODER_CHANNELS = (128, 96, 64, 40, 24, 16)


# ----------------------------------------------------------------------------- layers


def make_divisible(value: float, divisor: int = 8) -> int:
    """MobileNet channel rounding: nearest multiple of `divisor`, never 10% below `value`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _activation(name: str | None) -> nn.Module:
    return {"relu": nn.ReLU(), "hswish": nn.Hardswish(), None: nn.Identity()}[name]


class ConvBNAct(nn.Sequential):
    def __init__(self, c_in, c_out, kernel=1, stride=1, groups=1, act="hswish"):
        super().__init__(
            nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(c_out, eps=1e-3),  # MobileNetV3's eps (torchvision uses it too)
            _activation(act),
        )


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        hidden = make_divisible(channels / 4)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x):
        s = x.mean(dim=(2, 3), keepdim=True)
        s = F.hardsigmoid(self.expand(F.relu(self.reduce(s))))
        return x * s


class InvertedResidual(nn.Module):
    def __init__(self, c_in, kernel, c_exp, c_out, use_se, act, stride):
        super().__init__()
        layers = [] if c_exp == c_in else [ConvBNAct(c_in, c_exp, 1, act=act)]
        layers.append(ConvBNAct(c_exp, c_exp, kernel, stride, groups=c_exp, act=act))
        if use_se:
            layers.append(SqueezeExcite(c_exp))
        layers.append(ConvBNAct(c_exp, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class MobileNetV3Encoder(nn.Module):
    """Returns features at strides 2, 4, 8, 16 and 32 (the last is the bottleneck)."""

    def __init__(self, width_mult: float):
        super().__init__()
        c = make_divisible(STEM_CHANNELS * width_mult)
        stages, self.channels = [[ConvBNAct(3, c, 3, 2)]], []
        for kernel, exp, out, se, act, stride in MBV3_LARGE:
            if stride == 2:
                self.channels.append(c)
                stages.append([])
            c_exp, c_out = make_divisible(exp * width_mult), make_divisible(out * width_mult)
            stages[-1].append(InvertedResidual(c, kernel, c_exp, c_out, se, act, stride))
            c = c_out
        self.channels.append(c)
        self.stages = nn.ModuleList(nn.Sequential(*s) for s in stages)

    def forward(self, x) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class ViewFusion(nn.Module):
    """Learned per-view, per-channel softmax weights: [B, 3, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(NUM_VIEWS, channels))

    def forward(self, per_view):
        w = self.logits.softmax(dim=0)[None, :, :, None, None]
        return (per_view * w).sum(dim=1)


class Attention(nn.Module):
    """Multi-head self-attention from matmuls and softmax (nn.MultiheadAttention does not
    convert to Core ML through jit.trace)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = torch.matmul(q * self.scale, k.transpose(-2, -1)).softmax(dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(out)


class TransformerBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViTFusion(nn.Module):
    """Joint attention over the bottleneck tokens of the three views, then view weights."""

    def __init__(self, c_in: int, c_out: int, m: StudentModelConfig):
        super().__init__()
        dim = m.transformer_dim
        self.grid = m.attention_grid
        self.proj_in = nn.Conv2d(c_in, dim, 1)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.view_embed = nn.Parameter(torch.randn(NUM_VIEWS, dim) * 0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, m.transformer_heads, m.transformer_mlp_ratio)
            for _ in range(m.transformer_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.fuse = ViewFusion(dim)
        self.proj_out = ConvBNAct(dim, c_out, 1)

    def pool_factor(self, side: int) -> int:
        if not self.grid or side <= self.grid:
            return 1
        if side % self.grid:
            raise ValueError(
                f"bottleneck side {side} is not a multiple of model.attention_grid={self.grid}; "
                f"use an input side that is a multiple of {ENCODER_STRIDE * self.grid}"
            )
        return side // self.grid

    def attend(self, x, batch: int):
        """x: [B*3, D, h, w] -> same shape after joint attention over all views' tokens."""
        bv, d, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2).reshape(batch, NUM_VIEWS, h * w, d)
        tokens = (tokens + self.view_embed[None, :, None, :]).reshape(batch, NUM_VIEWS * h * w, d)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens).reshape(bv, h * w, d)
        return tokens.transpose(1, 2).reshape(bv, d, h, w)

    def forward(self, feats, batch: int):
        x = self.proj_in(feats)
        x = x + self.pos(x)
        factor = self.pool_factor(x.shape[-1])
        if factor == 1:
            x = self.attend(x, batch)
        else:
            pooled = F.avg_pool2d(x, factor)
            delta = self.attend(pooled, batch) - pooled
            x = x + F.interpolate(delta, scale_factor=factor, mode="nearest")
        x = x.reshape(batch, NUM_VIEWS, *x.shape[1:])
        return self.proj_out(self.fuse(x))


class DynamicDepthwise3x3(nn.Module):
    """A per-sample, per-channel 3x3 kernel predicted from the global average and applied as
    a weighted sum of the nine shifted maps (no batch-folded grouped conv: exports cleanly)."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = make_divisible(channels / 2)
        self.predict = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.Hardswish(), nn.Conv2d(hidden, channels * 9, 1)
        )

    def forward(self, x):
        b, c, h, w = x.shape
        kernel = self.predict(x.mean(dim=(2, 3), keepdim=True)).reshape(b, c, 9, 1, 1)
        padded = F.pad(x, (1, 1, 1, 1))
        out = torch.zeros_like(x)
        for i in range(3):
            for j in range(3):
                out = out + padded[:, :, i : i + h, j : j + w] * kernel[:, :, 3 * i + j]
        return out


class PLKBlock(nn.Module):
    """ESC-style ConvAttn block: shared large depthwise kernel + dynamic 3x3 on the first
    `pdim` channels, 1x1 aggregation, then a depthwise conv FFN; both residual."""

    def __init__(self, dim: int, pdim: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.pdim = pdim
        self.norm = nn.BatchNorm2d(dim)
        self.dynamic = DynamicDepthwise3x3(pdim)
        self.aggregate = nn.Conv2d(dim, dim, 1)
        self.ffn = nn.Sequential(
            ConvBNAct(dim, hidden, 1),
            ConvBNAct(hidden, hidden, 3, groups=hidden),
            nn.Conv2d(hidden, dim, 1),
        )

    def forward(self, x, plk_weight):
        y = self.norm(x)
        part, rest = y[:, : self.pdim], y[:, self.pdim :]
        pad = plk_weight.shape[-1] // 2
        part = F.conv2d(part, plk_weight, padding=pad, groups=self.pdim) + self.dynamic(part)
        x = x + self.aggregate(torch.cat([part, rest], dim=1))
        return x + self.ffn(x)


class ConvAttnFusion(nn.Module):
    """O(N) fusion: cross-view 1x1 mixing + view weights, then PLK blocks that all read one
    shared large kernel tensor."""

    def __init__(self, c_in: int, c_out: int, m: StudentModelConfig):
        super().__init__()
        dim = m.transformer_dim
        pdim = max(1, int(dim * m.plk_channel_fraction))
        self.proj_in = nn.Conv2d(c_in, dim, 1)
        self.fuse = ViewFusion(dim)
        self.mix = nn.Conv2d(NUM_VIEWS * dim, dim, 1)
        k = m.plk_kernel_size
        self.plk_weight = nn.Parameter(torch.randn(pdim, 1, k, k) / k)
        self.blocks = nn.ModuleList(
            PLKBlock(dim, pdim, m.transformer_mlp_ratio) for _ in range(m.plk_blocks)
        )
        self.proj_out = ConvBNAct(dim, c_out, 1)

    def forward(self, feats, batch: int):
        x = self.proj_in(feats)
        x = x.reshape(batch, NUM_VIEWS, *x.shape[1:])
        x = self.fuse(x) + self.mix(x.flatten(1, 2))
        for block in self.blocks:
            x = block(x, self.plk_weight)
        return self.proj_out(x)


class DecoderBlock(nn.Sequential):
    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            ConvBNAct(c_in, c_out, 1),
            ConvBNAct(c_out, c_out, 3, groups=c_out),
            ConvBNAct(c_out, c_out, 1),
        )


class SuperResolution(nn.Module):
    """Learned xN upscaler: conv to C*N^2 channels, PixelShuffle(N), refine."""

    def __init__(self, channels: int, scale: int):
        super().__init__()
        self.expand = nn.Conv2d(channels, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.refine = ConvBNAct(channels, channels, 3)

    def forward(self, x):
        return self.refine(F.hardswish(self.shuffle(self.expand(x))))


def unit_normals(raw: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    # x * rsqrt(|x|^2) instead of F.normalize: converts to plain Core ML / ONNX ops.
    return raw * torch.rsqrt((raw * raw).sum(dim=1, keepdim=True) + eps)


class PBRHeads(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.heads = nn.ModuleDict(
            {name: nn.Conv2d(channels, c, 3, padding=1) for name, c in MAP_CHANNELS.items()}
        )
        with torch.no_grad():  # start with flat (+z) normals rather than random directions
            self.heads["normal"].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))

    def forward(self, x) -> dict[str, torch.Tensor]:
        out = {
            name: torch.sigmoid(self.heads[name](x)) for name in MAP_CHANNELS if name != "normal"
        }
        out["normal"] = unit_normals(self.heads["normal"](x))
        return out


class PBRStudent(nn.Module):
    """forward(views [B,3,3,H,W] ImageNet-normalised) -> {albedo, roughness, metallic, normal}
    at H*sr_scale (SR on) or H (SR off or bypassed with use_sr=False)."""

    def __init__(self, model_cfg: StudentModelConfig):
        super().__init__()
        if model_cfg.arch not in ARCHS:
            raise ValueError(f"model.arch={model_cfg.arch!r} is not one of {', '.join(ARCHS)}")
        self.cfg = copy.deepcopy(model_cfg)
        self.use_sr, self.sr_scale = model_cfg.use_sr, model_cfg.sr_scale
        self.encoder = MobileNetV3Encoder(model_cfg.width_mult)
        dec = [make_divisible(c * model_cfg.width_mult) for c in DECODER_CHANNELS]
        fusion_cls = ViTFusion if model_cfg.arch == "mobilenetv3_vit" else ConvAttnFusion
        self.fusion = fusion_cls(self.encoder.channels[-1], dec[0], model_cfg)
        # Skips from fine to coarse: the input views (stride 1), then encoder strides 2..16.
        skips = [3, *self.encoder.channels[:-1]][::-1]
        self.skip_fusions = nn.ModuleList(ViewFusion(c) for c in skips)
        self.decoder = nn.ModuleList(
            DecoderBlock(dec[i] + skips[i], dec[i + 1]) for i in range(len(skips))
        )
        self.sr = SuperResolution(dec[-1], model_cfg.sr_scale) if model_cfg.use_sr else None
        self.heads = PBRHeads(dec[-1])

    def output_side(self, side: int, use_sr: bool | None = None) -> int:
        sr = self.use_sr if use_sr is None else use_sr
        return side * self.sr_scale if sr and self.sr is not None else side

    def _check(self, views):
        if torch.jit.is_tracing():  # shapes are traced tensors here; the example was checked
            return
        if views.ndim != 5 or tuple(views.shape[1:3]) != (NUM_VIEWS, 3):
            raise ValueError(f"expected views [B, 3, 3, H, W], got {tuple(views.shape)}")
        if views.shape[-1] % ENCODER_STRIDE or views.shape[-2] % ENCODER_STRIDE:
            raise ValueError(
                f"input side {tuple(views.shape[-2:])} must be a multiple of {ENCODER_STRIDE}"
            )

    def forward(self, views, use_sr: bool | None = None) -> dict[str, torch.Tensor]:
        self._check(views)
        batch = views.shape[0]
        feats = self.encoder(views.flatten(0, 1))
        x = self.fusion(feats[-1], batch)
        per_view_skips = [views, *(f.reshape(batch, NUM_VIEWS, *f.shape[1:]) for f in feats[:-1])]
        for skip, fuse, block in zip(
            per_view_skips[::-1], self.skip_fusions, self.decoder, strict=True
        ):
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = block(torch.cat([x, fuse(skip)], dim=1))
        sr = self.use_sr if use_sr is None else use_sr
        if sr and self.sr is not None:
            x = self.sr(x)
        return self.heads(x)


# ----------------------------------------------------------------------------- utilities


def build_student(cfg: StudentConfig) -> PBRStudent:
    return PBRStudent(validate(cfg).model)


def parameter_counts(model: PBRStudent) -> dict[str, int]:
    """Trainable parameters per part and in total."""
    parts = {
        "encoder": model.encoder,
        "fusion": model.fusion,
        "decoder": nn.ModuleList([model.skip_fusions, model.decoder]),
        "sr_head": model.sr,
        "heads": model.heads,
    }
    counts = {
        name: sum(p.numel() for p in part.parameters()) if part is not None else 0
        for name, part in parts.items()
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def save_student(path, model: PBRStudent, cfg: StudentConfig, epoch: int, **extra) -> Path:
    """Write a student checkpoint (the training kit's layout, model_state_dict) atomically."""
    path = Path(path)
    return Checkpointer(path.parent, model_state_dict=model).save(
        path.name, Progress(epoch=epoch), cfg.to_dict(), extra
    )


def read_student_checkpoint(path) -> dict:
    state = read_checkpoint(path)
    if "model_state_dict" not in state:
        raise ValueError(
            f"{path}: not a student checkpoint (no model_state_dict); a teacher checkpoint "
            "holds generator_state_dict: pass best_student.pth instead"
        )
    return state


def load_student(path, device: str = "cpu") -> tuple[PBRStudent, StudentConfig]:
    """(model in eval mode on `device`, its StudentConfig) from a student checkpoint."""
    state = read_student_checkpoint(path)
    try:
        cfg = StudentConfig.from_dict(state["config"])
    except ValueError as err:
        raise ValueError(f"{path}: bad student config in checkpoint: {err}") from err
    model = PBRStudent(cfg.model)
    model.load_state_dict(state["model_state_dict"])
    return model.to(resolve(device).torch_device()).eval(), cfg
