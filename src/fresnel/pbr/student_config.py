"""Options and presets of the distilled NeuroPBR student (fresnel.pbr.student).

`StudentConfig` has four sections (`model`, `data`, `training`, `loss`). Presets:
"mobilenetv3_512" (iPhone: 512 -> 1024 with a trained SR x2 head, the guide's recommended
student), "convattn_student" (PLK bottleneck, same 512 -> 1024 shards), "mobilenetv3_2048"
(desktop: 2048 -> 2048, no SR, attention pooled to 16x16 per view) and "tiny_student" (CPU
demos and tests). configs/pbr/<preset>.py return the same presets; any other Python file
with a `get_config()` works too. Loading and overrides are fresnel.config's; this module adds
the student's validation and keeps `data.output_size` in step with the model's output side.
`CoreMLOptions` are the guide's converter flags (`coreml_convert`, params.yaml `pbr.coreml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fresnel import config as kit
from fresnel.config import ConfigError

ARCHS = ("mobilenetv3_vit", "convattn")
ENCODER_STRIDE = 32
# Overriding one of these without data.output_size re-derives output_size.
OUTPUT_SIZE_INPUTS = frozenset({"data.image_size", "model.use_sr", "model.sr_scale"})


@dataclass
class CoreMLOptions:
    """The guide's `coreml/converter.py` flags (fresnel.pbr.coreml.convert)."""

    fp16: bool = True  # --no-fp16 keeps FP32 (if FP16 shows artifacts)
    palettization: bool = False  # 8-bit k-means weight clusters
    test_resolution: int | None = None  # convert at this input side (bypasses SR unless use_sr)
    use_sr: bool = False  # keep SR at --test-resolution
    minimum_ios: int = 17

    @classmethod
    def from_dict(cls, values: dict) -> CoreMLOptions:
        return kit.apply_overrides(cls(), values)


@dataclass
class StudentModelConfig:
    arch: str = "mobilenetv3_vit"  # "mobilenetv3_vit" | "convattn"
    width_mult: float = 1.0  # scales encoder and decoder channels (rounded to multiples of 8)
    transformer_dim: int = 256  # fusion width (ViT token dim, or PLK block width)
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_ratio: float = 4.0
    attention_grid: int = 0  # max token grid side per view for the ViT; 0 = never pool
    plk_kernel_size: int = 17
    plk_blocks: int = 3
    plk_channel_fraction: float = 0.25  # share of the fusion channels the large kernel sees
    use_sr: bool = True
    sr_scale: int = 2


@dataclass
class StudentDataConfig:
    image_size: int = 512  # student input side
    output_size: int = 1024  # target side: image_size * sr_scale with SR, else image_size


@dataclass
class StudentTrainingConfig:
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    alpha: float = 0.7  # weight of the teacher term; 1 - alpha goes to the ground truth
    temperature: float = 1.0
    seed: int = 42
    grad_clip_norm: float = 1.0
    use_amp: bool = True
    val_ratio: float = 0.1


@dataclass
class StudentLossConfig:
    w_l1: float = 1.0
    w_ssim: float = 0.3
    w_normal: float = 0.5


@dataclass
class StudentConfig:
    model: StudentModelConfig = field(default_factory=StudentModelConfig)
    data: StudentDataConfig = field(default_factory=StudentDataConfig)
    training: StudentTrainingConfig = field(default_factory=StudentTrainingConfig)
    loss: StudentLossConfig = field(default_factory=StudentLossConfig)

    def to_dict(self) -> dict:
        return kit.to_dict(self)

    @classmethod
    def from_dict(cls, values: dict) -> StudentConfig:
        return validate(apply_overrides(cls(), values, sync_output_size=False))


def expected_output_size(cfg: StudentConfig) -> int:
    scale = cfg.model.sr_scale if cfg.model.use_sr else 1
    return cfg.data.image_size * scale


def validate(cfg: StudentConfig, source: str = "student config") -> StudentConfig:
    """Raise ConfigError naming `source` when the config cannot build a consistent student."""
    m, problems = cfg.model, []
    if m.arch not in ARCHS:
        problems.append(f"model.arch={m.arch!r} is not one of {', '.join(ARCHS)}")
    if m.transformer_dim % m.transformer_heads:
        problems.append(
            f"model.transformer_dim={m.transformer_dim} is not divisible by "
            f"model.transformer_heads={m.transformer_heads}"
        )
    if m.plk_kernel_size % 2 == 0:
        problems.append(f"model.plk_kernel_size={m.plk_kernel_size} must be odd")
    if m.use_sr and m.sr_scale < 2:
        problems.append(f"model.sr_scale={m.sr_scale} must be >= 2 when model.use_sr is true")
    if cfg.data.image_size % ENCODER_STRIDE:
        problems.append(f"data.image_size={cfg.data.image_size} is not a multiple of 32")
    if cfg.data.output_size != expected_output_size(cfg):
        problems.append(
            f"data.output_size={cfg.data.output_size} but the model produces "
            f"{expected_output_size(cfg)} (image_size x sr_scale when use_sr)"
        )
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    return cfg


def apply_overrides(cfg: StudentConfig, overrides: dict, sync_output_size: bool = True):
    """fresnel.config.apply_overrides; changing image_size, use_sr or sr_scale without
    output_size re-derives output_size (unless sync_output_size is False)."""
    kit.apply_overrides(cfg, overrides)
    touched = set(kit.flatten(overrides))
    if sync_output_size and touched & OUTPUT_SIZE_INPUTS and "data.output_size" not in touched:
        cfg.data.output_size = expected_output_size(cfg)
    return cfg


def _preset(arch, image_size, use_sr, epochs, batch_size, **model) -> StudentConfig:
    cfg = StudentConfig()
    cfg.model = StudentModelConfig(arch=arch, use_sr=use_sr, **model)
    cfg.data = StudentDataConfig(image_size=image_size, output_size=0)
    cfg.data.output_size = expected_output_size(cfg)
    cfg.training.epochs, cfg.training.batch_size = epochs, batch_size
    return validate(cfg)


def _tiny() -> StudentConfig:
    cfg = _preset(
        "mobilenetv3_vit", 32, True, 3, 2, width_mult=0.25, transformer_dim=32,
        transformer_depth=1, transformer_heads=2, transformer_mlp_ratio=2.0,
        plk_kernel_size=7,
    )  # fmt: skip
    cfg.training.use_amp = False
    return cfg


PRESETS = {
    # iPhone: 512 input, trained SR head to 1024 (the guide's recommended student).
    "mobilenetv3_512": lambda: _preset("mobilenetv3_vit", 512, True, 100, 8),
    # iPhone alternative: PLK bottleneck, same 512 -> 1024 shards (see fresnel.pbr.student).
    "convattn_student": lambda: _preset("convattn", 512, True, 60, 8),
    # Desktop: full 2048 resolution, no SR; attention pooled to a 16x16 grid per view.
    "mobilenetv3_2048": lambda: _preset("mobilenetv3_vit", 2048, False, 100, 2, attention_grid=16),
    # CPU demos and tests.
    "tiny_student": _tiny,
}


def get_student_config(name_or_path: str | Path = "mobilenetv3_512") -> StudentConfig:
    """A preset by name (also accepted as "<name>.py") or a Python config file path."""
    name, path = str(name_or_path), Path(name_or_path)
    if name.endswith(".py") and not path.is_file() and path.stem in PRESETS and path.name != name:
        raise ConfigError(
            f"{path}: student config file not found; the shipped file is "
            f"configs/pbr/{path.name}, or pass the preset name {path.stem}"
        )
    return validate(kit.get_config(name_or_path, PRESETS, StudentConfig), str(name_or_path))
