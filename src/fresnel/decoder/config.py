"""The decoder's training options: every flag of the guide's training tables (Training CLI
Options, HFTS, Fresnel-Inspired Training Flags), plus loss weights and the held-out split.
Kept free of torch so that the CLI can build its flags quickly."""

from __future__ import annotations

from dataclasses import dataclass

from fresnel.config import apply_overrides


@dataclass
class TrainConfig:
    """Every flag of the guide's training CLI (Training, HFTS and Fresnel-inspired tables)."""

    experiment: int = 2
    gaussians_per_patch: int = 4
    epochs: int = 100
    batch_size: int = 4
    lr: float = 1e-4
    image_size: int = 256
    max_images: int | None = None
    save_interval: int = 10
    use_vlm_guidance: bool = False
    vlm_weight: float = 0.5
    fast_mode: bool = False
    train_resolution: int | None = None
    progressive_schedule: bool = False
    stochastic_k: int | None = None
    use_fresnel_zones: bool = False
    num_fresnel_zones: int = 8
    boundary_weight: float = 0.1
    use_edge_aware: bool = False
    edge_scale_factor: float = 0.5
    edge_opacity_boost: float = 0.2
    use_phase_blending: bool = False
    phase_amplitude: float = 0.25
    l1_weight: float = 1.0
    ssim_weight: float = 0.2
    lpips_weight: float = 0.0
    lpips_backbone: str | None = None
    grad_clip: float = 1.0
    use_amp: bool = True  # autocast (+ GradScaler for fp16) on GPU targets; off on the CPU
    val_fraction: float = 0.25
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> TrainConfig:
        """The defaults with `values` applied; an unknown key is a ConfigError naming it."""
        return apply_overrides(cls(), values)

    def model_flags(self) -> dict:
        return {
            "use_edge_aware": self.use_edge_aware,
            "edge_scale_factor": self.edge_scale_factor,
            "edge_opacity_boost": self.edge_opacity_boost,
            "use_phase_blending": self.use_phase_blending,
            "phase_amplitude": self.phase_amplitude,
            "use_fresnel_zones": self.use_fresnel_zones,
            "num_fresnel_zones": self.num_fresnel_zones,
        }
