"""Training options of the NeuroPBR teacher (multi-view fusion GAN), with the guide's field names.

`TrainConfig` groups six sections (`model`, `data`, `training`, `loss`, `optimizer`,
`transform`). Presets: "default" (ResNet50, ViT depth 4, GAN from epoch 5), "quick_test"
(ResNet18, ViT depth 2, 20 epochs), "lightweight" (ResNet50, no GAN) and "tiny" (a small UNet
at 32 px that trains on a CPU in seconds: demos and tests). A Python file exposing
`get_config()` works as well (configs/pbr/*.py). Checkpoints store `to_dict()`, a plain dict,
so they load with `torch.load(weights_only=True)`. Kept free of torch so a CLI imports it fast.

Decisions where the guide is silent:
- `encoder_stride` (1 or 2) is the resolution of the finest feature the decoder sees: 1 adds a
  full-resolution skip and decodes up to the input size; 2 stops at half size and a learned
  PixelShuffle x2 restores it (cheaper at 2048^2).
- `encoder_pretrained_path` optionally names a local torchvision ResNet state-dict file;
  nothing is ever downloaded (weights=None otherwise).
- `transformer_pos_grid` is the side of the learned positional-embedding grid of the
  bottleneck tokens; it is resampled bilinearly when the actual token grid differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fresnel import config as kit
from fresnel.config import ConfigError
from fresnel.images import IMAGENET_MEAN, IMAGENET_STD

RESNET_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
ENCODER_TYPES = ("resnet", "unet")
SCHEDULERS = ("cosine", "step", "plateau", "none")
GAN_LOSS_TYPES = ("hinge", "bce")
DISCRIMINATOR_NORMS = ("spectral", "instance", "none")
DEVICES = ("auto", "cpu", "cuda", "rocm", "mps")


@dataclass
class ModelConfig:
    encoder_type: str = "resnet"  # 'resnet' | 'unet'
    encoder_backbone: str = "resnet50"  # resnet18/34/50/101/152 (encoder_type 'resnet')
    encoder_pretrained_path: str | None = None  # local torchvision state dict, optional
    encoder_stride: int = 1  # 1 keeps full resolution, 2 decodes at half size + PixelShuffle
    encoder_channels: list[int] = field(default_factory=lambda: [64, 128, 256, 512, 1024, 2048])
    transformer_dim: int = 2048
    transformer_num_heads: int = 32
    transformer_depth: int = 4
    transformer_mlp_ratio: float = 4
    transformer_pos_grid: int = 64  # bottleneck token grid of a 2048 px input at stride 32
    use_gan: bool = True
    discriminator_type: str = "configurable"
    discriminator_n_layers: int = 6
    discriminator_ndf: int = 64
    discriminator_use_sigmoid: bool = False
    discriminator_norm: str = "spectral"  # 'spectral' | 'instance' | 'none'
    discriminator_conditional: bool = False  # also show D the mean input view
    freeze_backbone: bool = False
    freeze_bn: bool = False
    use_sr: bool = False
    sr_scale: int = 2


@dataclass
class DataConfig:
    image_size: int = 2048
    val_ratio: float = 0.1
    render_curriculum: int = 0  # 0 clean only, 1 clean+dirty as on disk, 2 dirty only
    use_dirty_renders: bool = False  # legacy flag: True means render_curriculum 2
    num_workers: int = 0


@dataclass
class TrainingConfig:
    epochs: int = 100
    batch_size: int = 2
    device: str = "auto"  # CUDA -> MPS -> CPU; an explicit name must be available
    use_amp: bool = True
    grad_clip_norm: float | None = 1.0
    gan_start_epoch: int = 5
    d_steps_per_g_step: int = 1
    checkpoint_dir: str = "./checkpoints"
    save_every_n_epochs: int = 5
    save_best_only: bool = False
    use_tensorboard: bool = True
    log_every_n_steps: int = 10
    log_images_every_n_epochs: int = 5
    use_wandb: bool = False  # Weights & Biases (needs `pip install wandb`; offline mode)
    wandb_project: str = "neuropbr"
    seed: int = 42


@dataclass
class LossConfig:
    w_l1: float = 1.0
    w_ssim: float = 0.3
    w_normal: float = 0.5
    w_gan: float = 0.05
    w_albedo: float = 1.0
    w_roughness: float = 1.0
    w_metallic: float = 1.0
    w_normal_map: float = 1.0
    gan_loss_type: str = "hinge"  # 'hinge' | 'bce'


@dataclass
class OptimizerConfig:
    g_lr: float = 2e-4
    d_lr: float = 2e-4
    g_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    g_weight_decay: float = 1e-4
    d_weight_decay: float = 0.0
    scheduler: str = "cosine"  # 'cosine' | 'step' | 'plateau' | 'none'
    scheduler_min_lr: float = 1e-6
    scheduler_warmup_epochs: int = 5
    step_size: int = 30  # StepLR
    gamma: float = 0.1  # StepLR
    patience: int = 10  # ReduceLROnPlateau
    factor: float = 0.5  # ReduceLROnPlateau


@dataclass
class TransformConfig:
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    transform: TransformConfig = field(default_factory=TransformConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (lists, numbers, strings): safe for weights_only checkpoints."""
        return kit.to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        cfg = cls()
        apply_overrides(cfg, values)
        return cfg

    @property
    def curriculum(self) -> int:
        """The render curriculum in effect (the legacy use_dirty_renders flag means 2)."""
        return 2 if self.data.use_dirty_renders else self.data.render_curriculum

    @property
    def output_size(self) -> int:
        """Side of the predicted (and target) maps."""
        scale = self.model.sr_scale if self.model.use_sr else 1
        return self.data.image_size * scale

    def validate(self) -> TrainConfig:
        _validate_model(self.model)
        _validate_rest(self)
        return self


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r}: choose one of {', '.join(map(str, allowed))}")


def _validate_model(m: ModelConfig) -> None:
    _choice("model.encoder_type", m.encoder_type, ENCODER_TYPES)
    if m.encoder_type == "resnet":
        _choice("model.encoder_backbone", m.encoder_backbone, RESNET_BACKBONES)
    elif len(m.encoder_channels) < 2:
        raise ConfigError("model.encoder_channels needs at least two levels for the UNet encoder")
    _choice("model.encoder_stride", m.encoder_stride, (1, 2))
    if m.transformer_dim % m.transformer_num_heads:
        raise ConfigError(
            f"model.transformer_dim={m.transformer_dim} is not divisible by "
            f"model.transformer_num_heads={m.transformer_num_heads}"
        )
    if m.transformer_depth < 0 or m.transformer_pos_grid < 1:
        raise ConfigError("model.transformer_depth must be >= 0 and transformer_pos_grid >= 1")
    _choice("model.discriminator_type", m.discriminator_type, ("configurable",))
    _choice("model.discriminator_norm", m.discriminator_norm, DISCRIMINATOR_NORMS)
    if m.discriminator_n_layers < 1:
        raise ConfigError("model.discriminator_n_layers must be >= 1")
    if m.use_sr:
        _choice("model.sr_scale", m.sr_scale, (2, 4))


def _validate_rest(cfg: TrainConfig) -> None:
    _choice("data.render_curriculum", cfg.data.render_curriculum, (0, 1, 2))
    if not 0.0 <= cfg.data.val_ratio < 1.0:
        raise ConfigError(f"data.val_ratio={cfg.data.val_ratio}: must be in [0, 1)")
    _choice("training.device", cfg.training.device, DEVICES)
    _choice("optimizer.scheduler", cfg.optimizer.scheduler, SCHEDULERS)
    _choice("loss.gan_loss_type", cfg.loss.gan_loss_type, GAN_LOSS_TYPES)
    if cfg.model.discriminator_use_sigmoid and cfg.loss.gan_loss_type == "hinge":
        raise ConfigError(
            "model.discriminator_use_sigmoid=True needs loss.gan_loss_type='bce' "
            "(the hinge loss works on raw scores)"
        )
    if cfg.training.batch_size < 1 or cfg.training.epochs < 1:
        raise ConfigError("training.batch_size and training.epochs must be >= 1")
    if cfg.training.d_steps_per_g_step < 1:
        raise ConfigError("training.d_steps_per_g_step must be >= 1")
    if len(cfg.transform.mean) != 3 or len(cfg.transform.std) != 3:
        raise ConfigError("transform.mean and transform.std need three values (RGB)")


def apply_overrides(cfg: TrainConfig, overrides: dict) -> TrainConfig:
    """fresnel.config.apply_overrides (nested dicts or dotted keys), then validated."""
    return kit.apply_overrides(cfg, overrides).validate()


def default_config() -> TrainConfig:
    """Production: ResNet50 encoder, ViT depth 4, GAN from epoch 5, 2048 px."""
    return TrainConfig()


def quick_test_config() -> TrainConfig:
    """Debug / smoke runs: ResNet18, ViT depth 2, 20 epochs."""
    cfg = TrainConfig()
    cfg.model.encoder_backbone = "resnet18"
    cfg.model.transformer_dim = 512  # ResNet18's bottleneck width
    cfg.model.transformer_num_heads = 16
    cfg.model.transformer_depth = 2
    cfg.training.epochs = 20
    cfg.training.save_every_n_epochs = 1
    cfg.optimizer.scheduler_warmup_epochs = 2
    return cfg


def lightweight_config() -> TrainConfig:
    """Fast baseline: ResNet50, no GAN, heavier reconstruction terms."""
    cfg = TrainConfig()
    cfg.model.use_gan = False
    cfg.loss.w_gan = 0.0
    cfg.loss.w_ssim = 0.5
    cfg.loss.w_normal = 0.7
    return cfg


def tiny_config() -> TrainConfig:
    """CPU demo / tests: a four-level UNet encoder at 32 px, a two-block ViT, 30 epochs."""
    cfg = TrainConfig()
    m = cfg.model
    m.encoder_type = "unet"
    m.encoder_channels = [24, 32, 64, 96]
    m.transformer_dim = 64
    m.transformer_num_heads = 4
    m.transformer_depth = 2
    m.transformer_mlp_ratio = 2
    m.transformer_pos_grid = 4  # 32 px / 8
    m.discriminator_n_layers = 2
    m.discriminator_ndf = 16
    cfg.data.image_size = 32
    t = cfg.training
    t.epochs, t.batch_size, t.device, t.use_amp = 30, 2, "cpu", False
    t.gan_start_epoch = 10
    t.save_every_n_epochs = 10
    t.log_every_n_steps = 1
    t.log_images_every_n_epochs = 10
    cfg.optimizer.g_lr = 3e-3
    cfg.optimizer.d_lr = 2e-3
    cfg.optimizer.g_betas = [0.9, 0.999]
    cfg.optimizer.g_weight_decay = 0.0
    cfg.optimizer.scheduler_warmup_epochs = 2
    cfg.optimizer.scheduler_min_lr = 1e-4
    return cfg


PRESETS = {
    "default": default_config,
    "quick_test": quick_test_config,
    "lightweight": lightweight_config,
    "tiny": tiny_config,
}


# The guide's config files `from train_config import TrainConfig` (or get_default_config).
GUIDE_MODULES = {"train_config": __name__}
get_default_config = default_config


def get_config(name_or_path: str | Path = "default") -> TrainConfig:
    """A preset by name, or the `get_config()` of a Python config file (validated)."""
    return kit.get_config(name_or_path, PRESETS, TrainConfig, GUIDE_MODULES).validate()
