"""PatchGAN discriminator of the NeuroPBR teacher, its GAN losses and its receptive field.

Layout (pix2pix convention): `n_layers` stride-2 4x4 convs (ndf, 2ndf, ... capped at 8ndf),
one stride-1 4x4 conv, one stride-1 4x4 conv to a single score channel. The receptive field
of one score is `receptive_field(n_layers)`: 70 px for 3 layers, 142 for 4 (the guide's
"~142x142"), 574 for 6; a test checks it against the gradient footprint of one score.

The input is the 8 packed map channels (albedo, roughness, metallic, normal), optionally
followed by the mean of the three normalised input views (`discriminator_conditional`).
Normalisation defaults to spectral norm: it keeps each score a function of its receptive
field only (batch or instance norm would mix statistics over the whole image and batch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from fresnel.pbr.config import TrainConfig
from fresnel.pbr.maps import TARGET_CHANNELS, join_maps, resize_chw

KERNEL = 4


def layer_specs(n_layers: int) -> list[tuple[int, int]]:
    """(kernel, stride) of every conv, input to output."""
    return [(KERNEL, 2)] * n_layers + [(KERNEL, 1), (KERNEL, 1)]


def receptive_field(n_layers: int) -> int:
    """Side in input pixels that one output score sees."""
    size = 1
    for kernel, stride in reversed(layer_specs(n_layers)):
        size = (size - 1) * stride + kernel
    return size


class PatchDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int = TARGET_CHANNELS,
        ndf: int = 64,
        n_layers: int = 3,
        use_sigmoid: bool = False,
        norm: str = "spectral",
    ):
        super().__init__()
        widths = [in_channels] + [ndf * min(2**i, 8) for i in range(n_layers + 1)] + [1]
        layers: list[nn.Module] = []
        for i, (kernel, stride) in enumerate(layer_specs(n_layers)):
            cin, cout = widths[i], widths[i + 1]
            conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=1)
            layers.append(spectral_norm(conv) if norm == "spectral" else conv)
            is_last = i == n_layers + 1
            if is_last:
                break
            if norm == "instance" and i > 0:
                layers.append(nn.InstanceNorm2d(cout, affine=True))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
        if use_sigmoid:
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        self.n_layers = n_layers
        self.use_sigmoid = use_sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def build_discriminator(cfg: TrainConfig) -> PatchDiscriminator:
    m = cfg.model
    channels = TARGET_CHANNELS + (3 if m.discriminator_conditional else 0)
    return PatchDiscriminator(
        channels,
        m.discriminator_ndf,
        m.discriminator_n_layers,
        m.discriminator_use_sigmoid,
        m.discriminator_norm,
    )


def discriminator_input(maps: dict[str, torch.Tensor], views: torch.Tensor | None = None):
    """Pack maps to [B, 8, H, W]; with `views` [B, 3, 3, h, w] append their mean (resized)."""
    packed = join_maps(maps)
    if views is None:
        return packed
    mean_view = resize_chw(views.mean(dim=1), tuple(packed.shape[-2:])).to(packed.dtype)
    return torch.cat([packed, mean_view], dim=1)


def _bce(scores: torch.Tensor, target: float, probabilities: bool) -> torch.Tensor:
    labels = torch.full_like(scores, target)
    if probabilities:
        return F.binary_cross_entropy(scores.clamp(1e-6, 1 - 1e-6), labels)
    return F.binary_cross_entropy_with_logits(scores, labels)


def d_loss(real: torch.Tensor, fake: torch.Tensor, loss_type: str, use_sigmoid: bool = False):
    """Discriminator loss on its scores for real and generated maps (float32, AMP off)."""
    real, fake = real.float(), fake.float()
    with torch.autocast(device_type=real.device.type, enabled=False):
        if loss_type == "hinge":
            return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
        return _bce(real, 1.0, use_sigmoid) + _bce(fake, 0.0, use_sigmoid)


def g_loss(fake: torch.Tensor, loss_type: str, use_sigmoid: bool = False) -> torch.Tensor:
    """Generator's adversarial loss on the discriminator's scores for its maps."""
    fake = fake.float()
    with torch.autocast(device_type=fake.device.type, enabled=False):
        if loss_type == "hinge":
            return -fake.mean()
        return _bce(fake, 1.0, use_sigmoid)


def measured_receptive_field(disc: nn.Module, in_channels: int, size: int) -> tuple[int, int]:
    """Height and width of the input region whose pixels change the centre output score
    (non-zero gradient), for a random input of side `size`."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_channels, size, size, generator=generator, requires_grad=True)
    was_training = disc.training
    disc.eval()
    out = disc(x)
    disc.train(was_training)
    h, w = out.shape[-2:]
    out[0, 0, h // 2, w // 2].backward()
    touched = x.grad[0].abs().sum(0) > 0
    rows = touched.any(1).nonzero()
    cols = touched.any(0).nonzero()
    if rows[0] == 0 or cols[0] == 0 or rows[-1] == size - 1 or cols[-1] == size - 1:
        raise ValueError(f"input side {size} is too small: the receptive field reaches the border")
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
