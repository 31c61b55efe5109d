"""The training options of GaussianAvatars, named as its guide's flags (`--use_amp`,
`--region_weight_eyes`, ...), and the guide's five additions: which switch turns each on and
which flags it reads. One dataclass serves the CLI (`fresnel avatars_train`), the DAG
(params.yaml `avatars.train` plus the additions a run turns on) and the checkpoints.

Defaults are the paper's (600k iterations, 3DGS learning rates and densification) and the
guide's (its Balanced preset's weights, percentiles and schedule)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from fresnel.config import ConfigError, apply_overrides

# addition -> (its switch, the flags it reads). Section 9.1 of the guide adds them in this order.
ADDITIONS = {
    "region_adaptive_loss": (
        "use_region_adaptive_loss",
        ("region_weight_eyes", "region_weight_mouth", "region_weight_nose"),
    ),
    "smart_densification": (
        "use_smart_densification",
        ("densify_percentile_clone", "densify_percentile_split"),
    ),
    "progressive_resolution": (
        "use_progressive_resolution",
        ("resolution_schedule", "resolution_milestones"),
    ),
    "color_calibration": ("use_color_calibration", ("color_net_hidden_dim", "lambda_color_reg")),
    "contrastive_reg": ("use_contrastive_reg", ("lambda_contrastive", "contrastive_cache_size")),
    "amp": ("use_amp", ()),
}
SWITCHES = {switch for switch, _ in ADDITIONS.values()}

_POSITIVE, _NON_NEGATIVE, _AT_LEAST_ONE = (0, None, True), (0, None, False), (1, None, False)
# flag -> (lowest, highest or None, whether the lowest itself is excluded): checked before any
# training step (`AvatarOptions.check`) and stated in --help
RANGES = {
    **dict.fromkeys(("iterations", "interval", "gaussians_per_face", "sh_degree_interval",
                     "densification_interval", "opacity_reset_interval", "color_net_hidden_dim",
                     "contrastive_cache_size"), _AT_LEAST_ONE),
    **dict.fromkeys(("seed", "densify_from_iter", "densify_until_iter", "max_screen_size",
                     "flame_expr_lr", "flame_pose_lr", "flame_trans_lr", "lambda_xyz",
                     "lambda_scale", "lambda_color_reg", "lambda_contrastive"), _NON_NEGATIVE),
    **dict.fromkeys(("position_lr_init", "position_lr_final", "feature_lr", "opacity_lr",
                     "scaling_lr", "rotation_lr", "threshold_xyz", "threshold_scale",
                     "densify_grad_threshold", "region_weight_eyes", "region_weight_mouth",
                     "region_weight_nose"), _POSITIVE),
    "sh_degree": (0, 3, False), "lambda_dssim": (0, 1, False), "percent_dense": (0, 1, True),
    "min_opacity": (0, 1, False),
    "densify_percentile_clone": (0, 100, False), "densify_percentile_split": (0, 100, False),
}  # fmt: skip


def range_text(flag: str) -> str:
    low, high, open_low = RANGES[flag]
    if high is not None:
        return f"in {'(' if open_low else ''}{low}..{high}"
    return f"> {low}" if open_low else f">= {low}"


ADDITION_FLAGS = {flag for _, flags in ADDITIONS.values() for flag in flags}


@dataclass
class AvatarOptions:
    # run
    iterations: int = 600_000
    interval: int = 60_000  # evaluate, save the point cloud and a checkpoint every N iterations
    seed: int = 0
    eval: bool = False  # hold out the val / test splits (the guide always passes --eval)
    bind_to_mesh: bool = True
    white_background: bool = False
    gaussians_per_face: int = 1
    sh_degree: int = 3
    sh_degree_interval: int = 1000  # 3DGS raises the active SH degree every 1000 iterations
    lpips_weights: str = ""  # torchvision AlexNet weights for LPIPS; empty = "unavailable"
    flame_model_path: str = ""  # FLAME's licensed .pkl (datasets not from our synthetic stage)
    flame_masks_path: str = ""  # FLAME_masks.pkl: the eye / nose / mouth regions
    # learning rates (3DGS / GaussianAvatars)
    position_lr_init: float = 0.005
    position_lr_final: float = 0.00005
    feature_lr: float = 0.0025
    opacity_lr: float = 0.05
    scaling_lr: float = 0.017
    rotation_lr: float = 0.001
    flame_expr_lr: float = 1e-3
    flame_pose_lr: float = 1e-5
    flame_trans_lr: float = 1e-6
    # losses
    lambda_dssim: float = 0.2
    lambda_xyz: float = 1e-2
    threshold_xyz: float = 1.0
    lambda_scale: float = 1.0
    threshold_scale: float = 0.6
    # densification
    percent_dense: float = 0.01
    densification_interval: int = 2000
    opacity_reset_interval: int = 60_000
    densify_from_iter: int = 10_000
    densify_until_iter: int = 600_000
    densify_grad_threshold: float = 0.0002
    min_opacity: float = 0.005
    max_screen_size: int = 20
    # the guide's additions
    use_region_adaptive_loss: bool = False
    region_weight_eyes: float = 2.0
    region_weight_mouth: float = 2.0
    region_weight_nose: float = 1.5
    use_smart_densification: bool = False
    densify_percentile_clone: float = 75.0
    densify_percentile_split: float = 90.0
    use_progressive_resolution: bool = False
    resolution_schedule: str = "0.5,0.75,1.0"
    resolution_milestones: str = "100000,300000"
    use_color_calibration: bool = False
    color_net_hidden_dim: int = 16
    lambda_color_reg: float = 1e-4
    use_contrastive_reg: bool = False
    lambda_contrastive: float = 0.01
    contrastive_cache_size: int = 2
    use_amp: bool = False

    @classmethod
    def from_dict(cls, values: dict, source: str = "options") -> AvatarOptions:
        try:
            return apply_overrides(cls(), values).check()
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def check(self) -> AvatarOptions:
        """ConfigError naming the first flag out of its range (`RANGES`) or a resolution
        schedule that cannot be followed; the options themselves otherwise."""
        from fresnel.avatars.schedule import ResolutionSchedule

        for flag, (low, high, open_low) in RANGES.items():
            value = getattr(self, flag)
            inside = math.isfinite(value) and (value > low if open_low else value >= low)
            if not inside or (high is not None and value > high):
                raise ConfigError(f"--{flag} {value}: must be {range_text(flag)}")
        if self.use_progressive_resolution:
            try:
                ResolutionSchedule.parse(self.resolution_schedule, self.resolution_milestones)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        return self

    def as_dict(self) -> dict:
        return asdict(self)

    def enabled(self) -> list[str]:
        """The additions this run turns on, in the guide's order."""
        return [name for name, (switch, _) in ADDITIONS.items() if getattr(self, switch)]


def run_options(avatars: dict, run: str) -> dict:
    """The options of one named run of params.yaml's `avatars` section: `train` plus, for each
    addition the run lists, its switch and its flags from `additions`. Sensitivity runs
    (`region_weight_<w>`, `densify_clone_<p>`: the guide's section 9.2) are the
    `sensitivity_base` run with one value changed."""
    base_run, change = _base_run(avatars, run)
    options = dict(avatars["train"])
    for addition in avatars["runs"][base_run]:
        switch, _ = ADDITIONS[addition]
        options[switch] = True
        options.update(avatars["additions"].get(addition, {}))
    return {**options, **change}


def preset_options(avatars: dict, preset: str) -> dict:
    """What `avatars_train --preset NAME` starts from: the switches of the additions the named
    run turns on, every other flag at its default (the guide's values and its 600,000-iteration
    schedule). params.yaml's `train` and `additions` values, the CPU-sized demo budget, are the
    DAG's override (`run_options`), not the preset's."""
    base_run, change = _base_run(avatars, preset)
    return {**{ADDITIONS[a][0]: True for a in avatars["runs"][base_run]}, **change}


def run_param_paths(avatars: dict, run: str) -> list[str]:
    """The params.yaml keys a run reads: editing any other one leaves the run up to date."""
    base_run, change = _base_run(avatars, run)
    paths = ["avatars.train", f"avatars.runs.{base_run}"]
    paths += [f"avatars.additions.{a}" for a in avatars["runs"][base_run]
              if avatars["additions"].get(a)]  # fmt: skip
    return paths + (["avatars.sensitivity_base"] if change else [])


SWEEPS = {  # run-name prefix (the guide's output folders) -> the flags its value sets
    "region_weight_": ("region_weight_eyes", "region_weight_mouth"),
    "densify_clone_": ("densify_percentile_clone",),
}


def _base_run(avatars: dict, run: str) -> tuple[str, dict]:
    """(the run of `avatars.runs` that `run` is or derives from, the flags it changes)."""
    for prefix, flags in SWEEPS.items():
        if run.startswith(prefix):
            try:
                value = float(run.removeprefix(prefix))
            except ValueError:
                raise KeyError(f"run {run!r}: {prefix}<number> expected") from None
            return avatars["sensitivity_base"], dict.fromkeys(flags, value)
    if run not in avatars["runs"]:
        raise KeyError(
            f"params.yaml avatars.runs has no run {run!r}; known: {sorted(avatars['runs'])}"
        )
    return run, {}
