"""VAE, DiT and U-Net neural renderers: shapes, validation, training signal, weights, logs."""

import pytest
import torch

from fresnel.gaze.renderer import (
    VAE,
    DiTRenderer,
    UNetRenderer,
    frozen_vae,
    load_vae,
    make_renderer,
)

TINY_DIT = {"in_channels": 8, "cond_dim": 6, "hidden": 32, "depth": 2, "heads": 4}
TINY_UNET = {"in_channels": 8, "cond_dim": 6, "base_channels": 8, "levels": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)


def _smooth_images(n: int, size: int, channels: int = 3) -> torch.Tensor:
    coarse = torch.rand(n, channels, 4, 4)
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def _saved_vae(tmp_path, **config) -> str:
    path = tmp_path / "vae.pt"
    torch.save(VAE(**config).state_dict(), path)
    return str(path)


def test_vae_shapes_and_kl():
    vae = VAE(base_channels=8).eval()
    x = torch.rand(2, 3, 32, 16)
    mean, logvar = vae.encode(x)
    assert mean.shape == logvar.shape == (2, 4, 4, 2)
    recon, m2, _ = vae(x)
    assert recon.shape == x.shape and torch.equal(m2, mean)
    zero = torch.zeros(2, 4, 4, 2)
    assert VAE.kl(zero, zero).item() == 0.0
    # KL per element 0.5 * mean^2 with logvar 0: 32 elements of mean 1 -> 16 per sample.
    assert VAE.kl(torch.ones(2, 4, 4, 2), zero).item() == pytest.approx(16.0)


def test_vae_reconstruction_loss_falls():
    vae = VAE(base_channels=8)
    images = _smooth_images(4, 16)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)

    def recon_loss() -> float:
        vae.eval()
        with torch.no_grad():
            return torch.nn.functional.mse_loss(vae(images)[0], images).item()

    before = recon_loss()
    vae.train()
    for _ in range(25):
        recon, mean, logvar = vae(images)
        loss = torch.nn.functional.mse_loss(recon, images) + 1e-4 * VAE.kl(mean, logvar)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert recon_loss() < 0.5 * before


def test_load_vae_round_trip(tmp_path):
    path = _saved_vae(tmp_path, base_channels=8)
    original = VAE(base_channels=8)
    original.load_state_dict(torch.load(path, weights_only=True))
    loaded = load_vae(path, base_channels=8)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(original.eval()(x)[0], loaded.eval()(x)[0])


def test_load_vae_errors_are_one_line(tmp_path):
    with pytest.raises(ValueError, match="VAE weights not found") as missing:
        load_vae(tmp_path / "absent.pt")
    path = _saved_vae(tmp_path, base_channels=8)
    with pytest.raises(ValueError, match="not a state dict of VAE") as mismatch:
        load_vae(path, base_channels=8, z_channels=8)
    for err in (missing, mismatch):
        assert "\n" not in str(err.value)


def test_frozen_vae_needs_weights(tmp_path):
    with pytest.raises(ValueError, match="frozen VAE needs trained weights"):
        frozen_vae(None)
    vae = frozen_vae(_saved_vae(tmp_path, base_channels=8), base_channels=8)
    assert not vae.training and not any(p.requires_grad for p in vae.parameters())


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_shapes_with_and_without_vae(kind):
    config = TINY_DIT if kind == "dit" else TINY_UNET
    x, cond = torch.randn(2, 8, 16, 32), torch.randn(2, 6)
    rgb = make_renderer(kind, **config)(x, cond)
    assert rgb.shape == (2, 3, 16, 32)
    with_vae = make_renderer(kind, **config, use_vae=True, vae=VAE(base_channels=8))
    assert with_vae(x, cond).shape == (2, 4, 2, 4)
    assert with_vae.to_rgb(x, cond).shape == (2, 3, 16, 32)


def test_dit_default_config_with_frozen_vae_runs_backward(tmp_path):
    vae = frozen_vae(_saved_vae(tmp_path))
    renderer = DiTRenderer(use_vae=True, vae=vae)
    x, cond = torch.randn(1, 32, 16, 16), torch.randn(1, 64)
    latent = renderer(x, cond)
    assert latent.shape == (1, 4, 2, 2)
    renderer.to_rgb(x, cond).square().mean().backward()
    assert renderer.patch_embed.weight.grad is not None
    assert all(p.grad is None for p in vae.parameters())


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_latent_into_patch_embedding_raises(kind):
    """The fork fed the 4-channel VAE latent into a 32-channel patch embedding."""
    renderer = make_renderer(kind, use_vae=True, vae=VAE(base_channels=8))
    latent = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="expects 32-channel feature maps"):
        renderer(latent, torch.randn(1, 64))


def test_other_validation_errors():
    with pytest.raises(ValueError, match="multiples of 8"):
        DiTRenderer(**TINY_DIT)(torch.randn(1, 8, 12, 16), torch.randn(1, 6))
    with pytest.raises(ValueError, match="conditioning"):
        DiTRenderer(**TINY_DIT)(torch.randn(1, 8, 16, 16), torch.randn(1, 5))
    with pytest.raises(ValueError, match="patch_size must be a multiple of 8"):
        DiTRenderer(**TINY_DIT, patch_size=4, use_vae=True)
    with pytest.raises(ValueError, match="unknown renderer kind"):
        make_renderer("gan")


@pytest.mark.parametrize("kind", ["dit", "unet"])
def test_renderer_overfits_one_batch(kind):
    config = TINY_DIT if kind == "dit" else TINY_UNET
    renderer = make_renderer(kind, **config)
    x, cond = torch.randn(2, 8, 16, 16), torch.randn(2, 6)
    target = _smooth_images(2, 16)
    opt = torch.optim.Adam(renderer.parameters(), lr=3e-3)
    losses = []
    for _ in range(150):
        loss = torch.nn.functional.mse_loss(renderer(x, cond), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 5, (losses[0], losses[-1])


def test_describe_lines(tmp_path):
    vae = frozen_vae(_saved_vae(tmp_path, base_channels=8), base_channels=8)
    dit = DiTRenderer(hidden=32, use_vae=True, vae=vae)
    assert dit.describe() == (
        "[DiT Neural Renderer] Initializing with:\n"
        "  - Depth: 6\n"
        "  - Num Heads: 8\n"
        "  - Patch Size: 8\n"
        "  - VAE: Enabled (z_channels=4, frozen=True)"
    )
    trainable = DiTRenderer(hidden=32, use_vae=True, vae=VAE(base_channels=8))
    assert trainable.describe().endswith("  - VAE: Enabled (z_channels=4, frozen=False)")
    assert DiTRenderer(hidden=32).describe().endswith("\n  - VAE: Disabled")
    unet = UNetRenderer(**TINY_UNET)
    assert unet.describe() == (
        "[UNet Neural Renderer] Initializing with:\n"
        "  - Levels: 2\n"
        "  - Base Channels: 8\n"
        "  - VAE: Disabled"
    )
