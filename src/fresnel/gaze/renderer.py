"""Neural renderers for GazeGaussian: rasterised feature maps -> RGB, optionally via a VAE.

Conventions:
- inputs are feature maps (B, C_in, H, W) and a conditioning vector (B, cond_dim) (the
  expression code); H and W must be multiples of the patch size (DiT) or of 2**levels (U-Net);
- use_vae=False: the renderer outputs RGB (B, 3, H, W); use_vae=True: it outputs a VAE latent
  (B, z_channels, H/8, W/8) and `to_rgb` decodes it with the VAE. The latent is the renderer's
  output, never its input: the patch embedding always takes the C_in-channel feature map;
- the VAE downsamples 8x (3 stride-2 stages) and has a diagonal Gaussian latent (mean, logvar);
  a frozen VAE is only ever built from trained weights (`frozen_vae` refuses otherwise).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

VAE_FACTOR = 8


def _groups(channels: int) -> int:
    return math.gcd(8, channels)


def _conv_block(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.SiLU(),
    )


class VAE(nn.Module):
    """Small convolutional VAE: 3 stride-2 stages (8x), Gaussian latent of z_channels."""

    def __init__(self, in_channels: int = 3, z_channels: int = 4, base_channels: int = 32):
        super().__init__()
        self.in_channels, self.z_channels, self.base_channels = (
            in_channels,
            z_channels,
            base_channels,
        )
        b = base_channels
        widths = (b, b, 2 * b, 4 * b)
        self.encoder = nn.Sequential(
            _conv_block(in_channels, widths[0]),
            *(_conv_block(widths[i], widths[i + 1], stride=2) for i in range(3)),
            nn.Conv2d(widths[3], 2 * z_channels, 3, padding=1),
        )
        up = [
            nn.Sequential(nn.Upsample(scale_factor=2), _conv_block(widths[i], widths[i - 1]))
            for i in range(3, 0, -1)
        ]
        self.decoder = nn.Sequential(
            _conv_block(z_channels, widths[3]),
            *up,
            nn.Conv2d(widths[0], in_channels, 3, padding=1),
        )

    def config(self) -> str:
        return (
            f"VAE(in_channels={self.in_channels}, z_channels={self.z_channels}, "
            f"base_channels={self.base_channels})"
        )

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) images -> mean, logvar, each (B, z, H/8, W/8)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: Tensor) -> Tensor:
        """(B, z, h, w) latents -> (B, C, 8h, 8w) images."""
        if z.shape[1] != self.z_channels:
            raise ValueError(
                f"VAE.decode expects {self.z_channels}-channel latents, got {tuple(z.shape)}"
            )
        return self.decoder(z)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Reconstruct x: samples the latent in training mode, uses the mean in eval mode."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp() if self.training else mean
        return self.decode(z), mean, logvar

    @staticmethod
    def kl(mean: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mean, exp(logvar)) || N(0, I)), summed over latent dims, mean over the batch."""
        per_elem = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
        return per_elem.flatten(1).sum(1).mean()


def load_vae(path: str | Path, **config: int) -> VAE:
    """A VAE(**config) holding the state dict saved at path (torch.save(vae.state_dict()))."""
    vae = VAE(**config)
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"{path}: VAE weights not found; train {vae.config()} and save its "
            "state_dict there, or render without the VAE (use_vae=False)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        vae.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError, EOFError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path}: not a state dict of {vae.config()} ({reason}); save "
            "vae.state_dict() of a VAE built with the same config"
        ) from err
    return vae


def frozen_vae(path: str | Path | None, **config: int) -> VAE:
    """The trained VAE at path, in eval mode with requires_grad False. A frozen VAE with random
    weights would decode nothing useful, so path=None is an error, not a default."""
    if path is None:
        raise ValueError(
            "a frozen VAE needs trained weights: pass the path of a saved VAE "
            "state_dict, or train the VAE (frozen=False), or use_vae=False"
        )
    vae = load_vae(path, **config)
    vae.eval()
    vae.requires_grad_(False)
    return vae


class _RendererBase(nn.Module):
    """Shared input checks, VAE bookkeeping and RGB decoding."""

    def __init__(self, in_channels: int, cond_dim: int, use_vae: bool, vae: VAE | None):
        super().__init__()
        self.in_channels, self.cond_dim, self.use_vae = in_channels, cond_dim, use_vae
        if vae is not None and not use_vae:
            raise ValueError("a VAE was given but use_vae=False; pass use_vae=True or no VAE")
        # Without a given VAE it is trained jointly (never a frozen random one).
        self.vae = (vae if vae is not None else VAE()) if use_vae else None
        self.out_channels = self.vae.z_channels if self.vae is not None else 3

    @property
    def vae_frozen(self) -> bool:
        return self.vae is not None and not any(p.requires_grad for p in self.vae.parameters())

    def _vae_line(self) -> str:
        if self.vae is None:
            return "  - VAE: Disabled"
        return f"  - VAE: Enabled (z_channels={self.vae.z_channels}, frozen={self.vae_frozen})"

    def _check(self, x: Tensor, cond: Tensor, multiple: int) -> None:
        name = type(self).__name__
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{name} expects {self.in_channels}-channel feature maps (B, {self.in_channels}, "
                f"H, W), got {tuple(x.shape)}; a VAE latent is the renderer's output, not its input"
            )
        if x.shape[-2] % multiple or x.shape[-1] % multiple:
            raise ValueError(
                f"{name}: H and W must be multiples of {multiple}, got {tuple(x.shape[-2:])}"
            )
        if cond.shape != (x.shape[0], self.cond_dim):
            raise ValueError(
                f"{name} expects conditioning (B, {self.cond_dim}) with "
                f"B={x.shape[0]}, got {tuple(cond.shape)}"
            )

    def to_rgb(self, x: Tensor, cond: Tensor, residual: bool = False) -> Tensor:
        """RGB (B, 3, H, W): the output itself, or the VAE decoding of the output latent.

        residual=True: the output refines the colour in the feature map's first 3 channels
        (added to it, or with the VAE to its encoding's mean) instead of painting from nothing.
        """
        out = self(x, cond)
        if residual:
            base = x[:, :3]
            out = out + (self.vae.encode(base)[0] if self.vae is not None else base)
        return self.vae.decode(out) if self.vae is not None else out


def _sincos_2d(h: int, w: int, dim: int, device: torch.device) -> Tensor:
    """(h*w, dim) fixed 2D sine-cosine position embeddings (half for rows, half for columns)."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, device=device) / quarter))
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    parts = []
    for coord in (ys.flatten(), xs.flatten()):
        angles = coord[:, None].float() * freqs[None]
        parts += [angles.sin(), angles.cos()]
    emb = torch.cat(parts, -1)
    return nn.functional.pad(emb, (0, dim - emb.shape[-1]))


def _modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class _DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero: shift/scale/gate from the conditioning, gates at 0."""

    def __init__(self, hidden: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        inner = int(hidden * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(hidden, inner), nn.GELU(approximate="tanh"), nn.Linear(inner, hidden)
        )
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def _attention(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        x = x + g1[:, None] * self._attention(_modulate(self.norm1(x), s1, sc1))
        return x + g2[:, None] * self.mlp(_modulate(self.norm2(x), s2, sc2))


class DiTRenderer(_RendererBase):
    """DiT neural renderer (a transformer decoder of feature maps; no diffusion sampling).

    Patches of the feature map are tokens; each token emits the RGB pixels of its patch, or
    with the VAE the z_channels values of its (patch_size / 8)^2 latent pixels.
    """

    def __init__(
        self,
        in_channels: int = 32,
        cond_dim: int = 64,
        hidden: int = 256,
        depth: int = 6,
        heads: int = 8,
        patch_size: int = 8,
        mlp_ratio: float = 4.0,
        use_vae: bool = False,
        vae: VAE | None = None,
    ):
        super().__init__(in_channels, cond_dim, use_vae, vae)
        if hidden % heads:
            raise ValueError(f"DiTRenderer: hidden={hidden} must be divisible by heads={heads}")
        if use_vae and patch_size % VAE_FACTOR:
            raise ValueError(
                f"DiTRenderer: with the VAE patch_size must be a multiple of "
                f"{VAE_FACTOR} (one token per latent pixel or more), got {patch_size}"
            )
        self.hidden, self.depth, self.heads, self.patch_size = hidden, depth, heads, patch_size
        self.out_patch = patch_size // VAE_FACTOR if use_vae else patch_size
        self.patch_embed = nn.Conv2d(in_channels, hidden, patch_size, stride=patch_size)
        self.cond_embed = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.blocks = nn.ModuleList(_DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.head = nn.Linear(hidden, self.out_channels * self.out_patch**2)
        for layer in (self.final_ada[1], self.head):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def describe(self) -> str:
        return "\n".join(
            [
                "[DiT Neural Renderer] Initializing with:",
                f"  - Depth: {self.depth}",
                f"  - Num Heads: {self.heads}",
                f"  - Patch Size: {self.patch_size}",
                self._vae_line(),
            ]
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B, C_in, H, W), (B, cond_dim) -> RGB (B, 3, H, W) or latent (B, z, H/8, W/8)."""
        self._check(x, cond, self.patch_size)
        tokens = self.patch_embed(x)
        b, _, gh, gw = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2) + _sincos_2d(gh, gw, self.hidden, x.device)
        c = self.cond_embed(cond)
        for block in self.blocks:
            tokens = block(tokens, c)
        shift, scale = self.final_ada(c).chunk(2, dim=-1)
        out = self.head(_modulate(self.final_norm(tokens), shift, scale))
        p, ch = self.out_patch, self.out_channels
        out = out.view(b, gh, gw, ch, p, p).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(b, ch, gh * p, gw * p)


class _FiLMBlock(nn.Module):
    """Two 3x3 convs; the conditioning sets a per-channel scale and shift (FiLM) between them."""

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.conv1 = _conv_block(c_in, c_out)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        self.conv2 = _conv_block(c_out, c_out)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        gamma, beta = self.film(cond)[..., None, None].chunk(2, dim=1)
        return self.conv2(self.conv1(x) * (1 + gamma) + beta)


class UNetRenderer(_RendererBase):
    """Baseline U-Net renderer with FiLM conditioning; same contract as DiTRenderer. With the VAE
    the full-resolution features are space-to-depth'ed 8x and projected to the latent."""

    def __init__(
        self,
        in_channels: int = 32,
        cond_dim: int = 64,
        base_channels: int = 32,
        levels: int = 3,
        use_vae: bool = False,
        vae: VAE | None = None,
    ):
        super().__init__(in_channels, cond_dim, use_vae, vae)
        self.base_channels, self.levels = base_channels, levels
        widths = [base_channels * 2**i for i in range(levels + 1)]
        self.stem = _FiLMBlock(in_channels, widths[0], cond_dim)
        self.down = nn.ModuleList(
            nn.Conv2d(widths[i], widths[i], 3, stride=2, padding=1) for i in range(levels)
        )
        self.enc = nn.ModuleList(
            _FiLMBlock(widths[i], widths[i + 1], cond_dim) for i in range(levels)
        )
        self.dec = nn.ModuleList(
            _FiLMBlock(widths[i + 1] + widths[i], widths[i], cond_dim) for i in range(levels)
        )
        if use_vae:
            self.head = nn.Sequential(
                nn.PixelUnshuffle(VAE_FACTOR),
                nn.Conv2d(widths[0] * VAE_FACTOR**2, self.out_channels, 1),
            )
        else:
            self.head = nn.Conv2d(widths[0], 3, 1)

    def describe(self) -> str:
        return "\n".join(
            [
                "[UNet Neural Renderer] Initializing with:",
                f"  - Levels: {self.levels}",
                f"  - Base Channels: {self.base_channels}",
                self._vae_line(),
            ]
        )

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """(B, C_in, H, W), (B, cond_dim) -> RGB (B, 3, H, W) or latent (B, z, H/8, W/8)."""
        multiple = max(2**self.levels, VAE_FACTOR if self.use_vae else 1)
        self._check(x, cond, multiple)
        h = self.stem(x, cond)
        skips = []
        for down, enc in zip(self.down, self.enc, strict=True):
            skips.append(h)
            h = enc(down(h), cond)
        for dec, skip in zip(reversed(self.dec), reversed(skips), strict=True):
            h = nn.functional.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = dec(torch.cat([h, skip], dim=1), cond)
        return self.head(h)


def make_renderer(kind: Literal["dit", "unet"], **kwargs) -> DiTRenderer | UNetRenderer:
    """Build a renderer by name; kwargs go to DiTRenderer or UNetRenderer."""
    if kind == "dit":
        return DiTRenderer(**kwargs)
    if kind == "unet":
        return UNetRenderer(**kwargs)
    raise ValueError(f"unknown renderer kind {kind!r}; expected 'dit' or 'unet'")
