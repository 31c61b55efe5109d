"""The options of GazeGaussian's commands (the guide's flags and the fork's
`gazegaussian_options.py` switches): step 1 (`train_meshhead`), the gaze estimator and step 2
(`train_gazegaussian`). Each default lives here once; the CLI, the DAG (params.yaml `gaze`) and
the checkpoints load them through `fresnel.config.apply_overrides`. Kept free of torch so the
CLI parser stays light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from fresnel.config import ConfigError, apply_overrides


def _load(cls, values: dict, command: str):
    try:
        return apply_overrides(cls(), values)
    except ConfigError as exc:
        raise ConfigError(f"{command}: {exc}; see fresnel {command} --help") from None


@dataclass
class MeshHeadOptions:
    """Step 1, `train_meshhead`: the canonical MeshHead on the training subjects."""

    img_dir: str = "./data/ETH-XGaze"
    name: str = "meshhead"
    batch_size: int = 1
    num_epochs: int = 10
    num_workers: int = 8
    early_stopping: bool = False
    patience: int = 5
    lr: float = 3e-3
    seed: int = 0
    max_frames: int | None = None  # frames per subject
    work_dir: str = "work_dirs"
    run_dir: str | None = None  # fixed run folder instead of work_dir/<name>_<timestamp>

    @classmethod
    def from_dict(cls, values: dict) -> MeshHeadOptions:
        return _load(cls, values, "train_meshhead")


@dataclass
class EstimatorOptions:
    """The gaze / head-pose estimator (the angular loss's and the evaluation's judge)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> EstimatorOptions:
        return _load(cls, values, "train_gaze_estimator")


@dataclass
class RendererOptions:
    """The switches that shape the model, with the guide's defaults (DiT, depth 6, 8 heads,
    patch 8, VAE on): flags of the CLI and fields of the model's config alike."""

    neural_renderer_type: str = "dit"
    use_vae: bool = True
    dit_depth: int = 6
    dit_num_heads: int = 8
    dit_patch_size: int = 8
    dit_hidden: int = 256
    unet_base_channels: int = 32
    feature_channels: int = 32
    embedding_width: int = 64


@dataclass
class GazeGaussianOptions(RendererOptions):
    """The guide's flags and `gazegaussian_options.py` switches, with their defaults."""

    img_dir: str = "./data/ETH-XGaze"
    name: str = "gazegaussian_dit"
    batch_size: int = 1
    num_epochs: int = 30
    num_workers: int = 2
    lr: float = 1e-4
    clip_grad: bool = False
    clip_norm: float = 1.0
    load_meshhead_checkpoint: str | None = None
    work_dir: str = "work_dirs"
    run_dir: str | None = None  # fixed folder instead of work_dir/<name>_<timestamp> (the DAG)
    seed: int = 0
    save_every: int = 10
    val_fraction: float = 0.1
    max_frames: int | None = None
    max_face_gaussians: int = 4000
    use_orthogonality_loss: bool = True  # with the renderer's type and the VAE: the three
    vae_weights: str | None = None
    vae_epochs: int = 20
    gaze_estimator: str | None = None
    estimator_epochs: int = 20
    vgg_weights: str | None = None
    # loss weights (the fork's importances where it has them)
    l1_importance: float = 1.0
    ssim_importance: float = 0.2
    vgg_importance: float = 0.1
    eye_loss_importance: float = 1.0
    # The splatted features' first 3 channels are also fitted to the image (as Gaussian Head
    # Avatar does): the Gaussians get a direct colour signal besides the renderer's.
    raw_rgb_importance: float = 1.0
    gaze_loss_importance: float = 0.1
    orthogonality_importance: float = 0.1
    angular_loss_begin: int = 0  # epoch from which the angular loss counts

    def as_dict(self) -> dict:
        return asdict(self)

    def renderer_options(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(RendererOptions)}

    @classmethod
    def from_dict(cls, values: dict) -> GazeGaussianOptions:
        return _load(cls, values, "train_gazegaussian")
