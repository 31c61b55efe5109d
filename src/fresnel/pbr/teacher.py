"""The NeuroPBR teacher: a multi-view fusion generator from three renders to four PBR maps.

Each view goes through one shared encoder (a torchvision ResNet trunk or a plain UNet encoder)
that returns multi-scale features. The bottleneck tokens of all three views are fused jointly
by a pre-norm Vision Transformer (learned positional + per-view embeddings, attention written
with plain linear layers and `scaled_dot_product_attention`, no nn.MultiheadAttention, so it
exports), then pooled over the views with attention weights: a per-token score plus a learned
per-view bias, softmax over the views. Skip features are pooled over the views the same way.
A UNet decoder and four heads (sigmoid albedo/roughness/metallic, unit normal) follow, with an
optional PixelShuffle super-resolution head.

Views are exchangeable up to their learned per-view parameters: permuting the input views
together with `view_embed` and every `view_bias` gives the same output (tested).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from fresnel.device import Target, resolve
from fresnel.pbr.config import ModelConfig, TrainConfig
from fresnel.pbr.maps import MAP_CHANNELS, NUM_VIEWS
from fresnel.training import read_checkpoint

STEM_CHANNELS = 32  # full-resolution skip added in front of a ResNet when encoder_stride == 1


def _groups(channels: int) -> int:
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    """Two 3x3 conv + GroupNorm + ReLU (batch-size independent, same in train and eval)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.GroupNorm(_groups(cout), cout),
            nn.ReLU(inplace=True),
        )


class UNetEncoder(nn.Module):
    """Plain UNet encoder: one ConvBlock per level, each level after the first halves the size."""

    def __init__(self, channels: list[int], stride: int):
        super().__init__()
        levels = [ConvBlock(3, channels[0], stride=stride)]
        levels += [ConvBlock(a, b, stride=2) for a, b in itertools.pairwise(channels)]
        self.levels = nn.ModuleList(levels)
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for level in self.levels:
            x = level(x)
            feats.append(x)
        return feats


def load_resnet(backbone: str, pretrained_path: str | os.PathLike | None) -> nn.Module:
    """A torchvision ResNet (weights=None); optionally load a local torchvision state dict."""
    import torchvision

    net = getattr(torchvision.models, backbone)(weights=None)
    if pretrained_path:
        path = Path(pretrained_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: pretrained {backbone} weights not found; set "
                "model.encoder_pretrained_path to a local torchvision state-dict file, or to "
                "None for random initialisation (nothing is downloaded)"
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise ValueError(f"{path}: not a torchvision {backbone} state dict ({exc})") from None
    return net


class ResNetEncoder(nn.Module):
    """torchvision ResNet trunk: features at 1/2 (conv1), 1/4, 1/8, 1/16, 1/32 (layer1-4),
    plus a small full-resolution stem when encoder_stride == 1."""

    def __init__(self, backbone: str, pretrained_path: str | None, stride: int):
        super().__init__()
        net = load_resnet(backbone, pretrained_path)
        self.backbone = nn.ModuleDict(
            {
                "stem": nn.Sequential(net.conv1, net.bn1, net.relu),
                "layer1": nn.Sequential(net.maxpool, net.layer1),
                "layer2": net.layer2,
                "layer3": net.layer3,
                "layer4": net.layer4,
            }
        )
        widths = [64] + [_last_width(getattr(net, f"layer{i}")) for i in range(1, 5)]
        self.full_res = ConvBlock(3, STEM_CHANNELS) if stride == 1 else None
        self.out_channels = ([STEM_CHANNELS] if stride == 1 else []) + widths

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.full_res(x)] if self.full_res is not None else []
        for stage in self.backbone.values():
            x = stage(x)
            feats.append(x)
        return feats


def _last_width(layer: nn.Sequential) -> int:
    block = layer[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """Pre-norm ViT block: x + Attn(LN(x)); x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def pool_views(values: torch.Tensor, scores: torch.Tensor, view_bias: torch.Tensor):
    """Attention pooling over the view axis (dim 1): softmax(score + per-view bias)-weighted
    sum. `scores` has `values`' shape with a singleton channel axis; view_bias is [V]."""
    shape = [1, -1] + [1] * (scores.dim() - 2)
    weights = torch.softmax(scores + view_bias.view(shape), dim=1)
    return (weights * values).sum(dim=1), weights


class ViewPool(nn.Module):
    """Fuse one skip level [B, V, C, H, W] -> [B, C, H, W] with per-pixel view weights."""

    def __init__(self, channels: int, n_views: int = NUM_VIEWS):
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)
        self.view_bias = nn.Parameter(torch.zeros(n_views))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = feats.shape
        scores = self.score(feats.reshape(b * v, c, h, w)).reshape(b, v, 1, h, w)
        return pool_views(feats, scores, self.view_bias)[0]


class CrossViewTransformer(nn.Module):
    """Joint attention over the bottleneck tokens of all views, then attention pooling."""

    def __init__(self, channels: int, m: ModelConfig, n_views: int = NUM_VIEWS):
        super().__init__()
        dim = m.transformer_dim
        self.proj_in = nn.Linear(channels, dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, dim, m.transformer_pos_grid, m.transformer_pos_grid)
        )
        self.view_embed = nn.Parameter(torch.zeros(n_views, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.view_embed, std=0.02)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim, m.transformer_num_heads, m.transformer_mlp_ratio)
            for _ in range(m.transformer_depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.score = nn.Linear(dim, 1)
        self.view_bias = nn.Parameter(torch.zeros(n_views))
        self.proj_out = nn.Linear(dim, channels)

    def positional(self, h: int, w: int) -> torch.Tensor:
        pos = self.pos_embed
        if pos.shape[-2:] != (h, w):
            pos = F.interpolate(pos, size=(h, w), mode="bilinear", align_corners=False)
        return pos.flatten(2).transpose(1, 2)  # [1, h*w, dim]

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        b, v, c, h, w = feats.shape
        tokens = feats.flatten(3).transpose(2, 3)  # [B, V, hw, C]
        x = self.proj_in(tokens) + self.positional(h, w).unsqueeze(1)
        x = (x + self.view_embed[None, :, None, :]).reshape(b, v * h * w, -1)
        for block in self.blocks:
            x = block(x)
        x = self.norm(x).reshape(b, v, h * w, -1)
        fused, weights = pool_views(x, self.score(x), self.view_bias)
        residual = (weights * tokens).sum(dim=1)  # same view weights on the raw features
        out = self.proj_out(fused) + residual
        return out.transpose(1, 2).reshape(b, c, h, w)


class UNetDecoder(nn.Module):
    """Upsample from the bottleneck, concatenating each fused skip; ends at the finest level."""

    def __init__(self, channels: list[int]):
        super().__init__()
        self.stages = nn.ModuleList(
            ConvBlock(channels[i + 1] + channels[i], channels[i])
            for i in reversed(range(len(channels) - 1))
        )

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        x = skips[-1]
        for stage, skip in zip(self.stages, reversed(skips[:-1]), strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return x


class PixelShuffleUp(nn.Sequential):
    """Learned x`scale` upsampling: conv to C*s^2 channels, PixelShuffle, conv."""

    def __init__(self, channels: int, scale: int):
        super().__init__(
            nn.Conv2d(channels, channels * scale * scale, 3, padding=1),
            nn.PixelShuffle(scale),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
        )


def _head(channels: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels, out, 1),
    )


def model_config(cfg: ModelConfig | TrainConfig | dict) -> ModelConfig:
    """Accept the model section, a whole TrainConfig, or either as a plain dict."""
    if isinstance(cfg, ModelConfig):
        return cfg
    if isinstance(cfg, TrainConfig):
        return cfg.model
    if isinstance(cfg, dict):
        return TrainConfig.from_dict(cfg if "model" in cfg else {"model": cfg}).model
    raise TypeError(f"expected ModelConfig, TrainConfig or dict, got {type(cfg).__name__}")


class MultiViewPBRGenerator(nn.Module):
    """Three normalised views [B, 3, 3, H, W] -> dict of albedo, roughness, metallic, normal."""

    def __init__(self, cfg: ModelConfig | TrainConfig | dict, load_pretrained: bool = True):
        super().__init__()
        m = model_config(cfg)
        self.cfg = m
        if m.encoder_type == "resnet":
            weights = m.encoder_pretrained_path if load_pretrained else None
            self.encoder = ResNetEncoder(m.encoder_backbone, weights, m.encoder_stride)
        else:
            self.encoder = UNetEncoder(m.encoder_channels, m.encoder_stride)
        chans = self.encoder.out_channels
        self.skip_pools = nn.ModuleList(ViewPool(c) for c in chans[:-1])
        self.fusion = CrossViewTransformer(chans[-1], m)
        self.decoder = UNetDecoder(chans)
        self.half_res_up = PixelShuffleUp(chans[0], 2) if m.encoder_stride == 2 else None
        self.sr = PixelShuffleUp(chans[0], m.sr_scale) if m.use_sr else None
        self.heads = nn.ModuleDict({k: _head(chans[0], c) for k, c in MAP_CHANNELS.items()})
        with torch.no_grad():  # start normals near +z (flat) rather than at a random direction
            self.heads["normal"][-1].bias.copy_(torch.tensor([0.0, 0.0, 1.0]))
        self._apply_freezing()

    def _backbone(self) -> nn.Module | None:
        return getattr(self.encoder, "backbone", None)

    def _apply_freezing(self) -> None:
        backbone = self._backbone()
        if backbone is None:
            return
        if self.cfg.freeze_backbone:
            backbone.requires_grad_(False)
        if self.cfg.freeze_bn:
            for bn in self._backbone_bns():
                bn.requires_grad_(False)

    def _backbone_bns(self):
        backbone = self._backbone()
        return (
            []
            if backbone is None
            else [
                mod
                for mod in backbone.modules()
                if isinstance(mod, nn.modules.batchnorm._BatchNorm)
            ]
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and (self.cfg.freeze_bn or self.cfg.freeze_backbone):
            for bn in self._backbone_bns():  # frozen statistics too, not only frozen affine
                bn.eval()
        return self

    def encode_views(self, views: torch.Tensor) -> list[torch.Tensor]:
        """Per-view features, each [B, V, C, h, w], finest level first."""
        b, v = views.shape[:2]
        feats = self.encoder(views.reshape(b * v, *views.shape[2:]))
        return [f.reshape(b, v, *f.shape[1:]) for f in feats]

    def forward(self, views: torch.Tensor) -> dict[str, torch.Tensor]:
        if views.dim() != 5 or views.shape[1] != NUM_VIEWS or views.shape[2] != 3:
            raise ValueError(f"expected views [B, 3, 3, H, W], got {list(views.shape)}")
        feats = self.encode_views(views)
        skips = [pool(f) for pool, f in zip(self.skip_pools, feats[:-1], strict=True)]
        x = self.decoder([*skips, self.fusion(feats[-1])])
        if self.half_res_up is not None:
            x = self.half_res_up(x)
        if self.sr is not None:
            x = self.sr(x)
        return self.activate({name: head(x) for name, head in self.heads.items()})

    @staticmethod
    def activate(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {k: torch.sigmoid(raw[k]) for k in ("albedo", "roughness", "metallic")}
        out["normal"] = F.normalize(raw["normal"].float(), dim=1, eps=1e-6).to(raw["normal"].dtype)
        return out


def load_generator(path: str | os.PathLike, device: str | Target = "cpu"):
    """Teacher checkpoint (or the guide's exported {'config','model_state_dict'}) ->
    (model.eval(), TrainConfig) on `device` (a target name, "auto", or a Target)."""
    target = device if isinstance(device, Target) else resolve(device)
    ckpt = read_checkpoint(path, target.torch_device())
    state = ckpt.get("generator_state_dict", ckpt.get("model_state_dict"))
    if state is None:
        raise ValueError(f"{path}: holds neither 'generator_state_dict' nor 'model_state_dict'")
    cfg = TrainConfig.from_dict(ckpt["config"])
    model = MultiViewPBRGenerator(cfg.model, load_pretrained=False)  # weights come from ckpt
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not match its config ({exc})") from None
    return model.to(target.torch_device()).eval(), cfg
