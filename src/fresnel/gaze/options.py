"""The options of `fresnel train_gazegaussian` (the guide's flags and the fork's
`gazegaussian_options.py` switches); kept free of torch so the CLI parser stays light."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


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
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown train_gazegaussian option(s) {', '.join(unknown)}; "
                             "see fresnel train_gazegaussian --help")  # fmt: skip
        return cls(**values)
