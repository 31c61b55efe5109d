"""GazeGaussian: face and eye Gaussian streams on a MeshHead, feature splatting, neural rendering.

Per sample: the face Gaussians (initialised on the MeshHead's canonical mesh) move by an
expression- and identity-conditioned offset and take conditioned features; the eye Gaussians
(on the two eyeball spheres) rotate rigidly about their centres to the target gaze
(`fresnel.gaze.eyes.rotate_eye_gaussians`); both are splatted as C-channel feature maps by
`fresnel.render.TileBasedRenderer` with the sample's camera; the neural renderer (DiT or U-Net,
optionally through the VAE) decodes the features, conditioned on the sum of the learned gaze,
head-pose and expression embeddings, whose orthogonality the training loss can regularise.

Frames: canonical head frame as in `fresnel.gaze.data` (the face looks toward -z, so an
eyeball's rest optical axis is (0, 0, -1) = pitch/yaw (0, 0)); a camera-frame gaze g becomes
R_w2c^T g in the head frame before the eyes turn.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from fresnel.gaze.embeddings import ConditionEmbeddings
from fresnel.gaze.eyes import pitchyaw_to_vector, rotate_eye_gaussians, vector_to_pitchyaw
from fresnel.gaze.options import RendererOptions
from fresnel.gaze.renderer import VAE, make_renderer
from fresnel.render import Camera, TileBasedRenderer
from fresnel.render.primitives import icosphere

REST_GAZE = (0.0, 0.0)  # pitch/yaw of (0, 0, -1): the eyeballs' rest axis in the head frame


@dataclass
class GazeGaussianConfig(RendererOptions):
    """Model sizes: the renderer switches plus the Gaussian streams' and codes' sizes."""

    hidden: int = 64
    pe_frequencies: int = 4
    eye_level: int = 2  # icosphere level of each eyeball's Gaussians (2: 162)
    iden_dims: int = 9
    expr_dims: int = 3
    max_offset: float = 0.01  # metres: bound of the face stream's deformation
    # The renderer refines the splatted colour (features 0-2) rather than painting from nothing:
    # without it 6 CPU epochs of the DiT gave PSNR 15.6 dB and 8x8 block artefacts.
    residual: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def positional_encoding(x: Tensor, frequencies: int) -> Tensor:
    """(..., 3) -> (..., 3 + 6 F): x, sin and cos of 2^k pi x (x in tens of centimetres)."""
    scaled = x[..., None] * (2.0 ** torch.arange(frequencies, device=x.device)) * math.pi * 10
    return torch.cat([x, scaled.sin().flatten(-2), scaled.cos().flatten(-2)], -1)


def _mlp(d_in: int, hidden: int, d_out: int, zero_last: bool = False) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(d_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                        nn.Linear(hidden, d_out))  # fmt: skip
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def _mean_neighbour_distance(points: Tensor) -> Tensor:
    d = torch.cdist(points, points)
    d.fill_diagonal_(float("inf"))
    return d.min(1).values.median()


class GaussianStream(nn.Module):
    """A set of Gaussians with learned base attributes and a conditioned MLP on top of them:
    (positional encoding of the rest position, code) -> feature delta (and position offset)."""

    def __init__(self, points: Tensor, code_dims: int, cfg: GazeGaussianConfig, deform: bool,
                 colors: Tensor | None = None):  # fmt: skip
        """colors (N, 3): the first three feature channels to start from (else grey); the
        other channels start at 0, so the first render has no speckle."""
        super().__init__()
        self.register_buffer("rest", points.float())
        spacing = float(_mean_neighbour_distance(points.float()))
        n, c = len(points), cfg.feature_channels
        self.offset = nn.Parameter(torch.zeros(n, 3))
        self.log_scales = nn.Parameter(torch.full((n, 3), math.log(0.7 * spacing)))
        self.quats = nn.Parameter(torch.tensor([1.0, 0, 0, 0]).repeat(n, 1))
        self.opacity_logits = nn.Parameter(torch.full((n,), 2.0))
        features = torch.zeros(n, c)
        features[:, :3] = 0.5 if colors is None else colors.float()
        self.features = nn.Parameter(features)
        self.pe_frequencies, self.max_offset = cfg.pe_frequencies, cfg.max_offset
        d_in = 3 + 6 * cfg.pe_frequencies + code_dims
        self.feature_mlp = _mlp(d_in, cfg.hidden, c, zero_last=True)
        self.deform_mlp = _mlp(d_in, cfg.hidden, 3, zero_last=True) if deform else None

    def forward(self, code: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """code (D,) -> means (N, 3), scales, quats, opacities, features (N, C)."""
        pe = positional_encoding(self.rest, self.pe_frequencies)
        x = torch.cat([pe, code.expand(len(pe), -1)], -1)
        means = self.rest + self.offset
        if self.deform_mlp is not None:
            means = means + self.max_offset * torch.tanh(self.deform_mlp(x))
        features = self.features + self.feature_mlp(x)
        return (means, self.log_scales.exp(), self.quats, torch.sigmoid(self.opacity_logits),
                features)  # fmt: skip


class GazeGaussian(nn.Module):
    """The full model; `forward` renders a batch at the given gaze, head pose (via w2c) and codes."""

    def __init__(self, cfg: GazeGaussianConfig, face_points: Tensor, eye_centers: Tensor,
                 eye_radius: float, vae: VAE | None = None,
                 face_colors: Tensor | None = None):  # fmt: skip
        super().__init__()
        self.cfg = cfg
        self.register_buffer("eye_centers", eye_centers.float())
        self.eye_radius = float(eye_radius)
        keep = torch.cdist(face_points.float(), self.eye_centers).min(1).values > 1.05 * eye_radius
        colors = None if face_colors is None else face_colors[keep]
        self.face = GaussianStream(face_points[keep], cfg.iden_dims + cfg.expr_dims, cfg, True,
                                   colors)  # fmt: skip
        dirs, _ = icosphere(cfg.eye_level)
        dirs = torch.as_tensor(dirs, dtype=torch.float32)
        # One stream per eye, rest positions on its sphere; only the identity conditions them.
        self.eyes = nn.ModuleList(
            GaussianStream(c + self.eye_radius * dirs, cfg.iden_dims, cfg, False)
            for c in self.eye_centers
        )
        self.embeddings = ConditionEmbeddings(cfg.expr_dims, cfg.embedding_width, cfg.hidden,
                                              head_pose_dim=2)  # fmt: skip
        self.renderer = _make_renderer(cfg, vae)
        self.rasterizer = TileBasedRenderer()

    def describe(self) -> str:
        return self.renderer.describe()

    def eye_gaussians(self, eye: int, iden: Tensor, gaze_head: Tensor):
        """The eye's Gaussians turned rigidly from the rest axis to the head-frame gaze (2,)."""
        means, scales, quats, opacities, features = self.eyes[eye](iden)
        rest = gaze_head.new_tensor(REST_GAZE)
        means, quats = rotate_eye_gaussians(means, quats, self.eye_centers[eye], rest, gaze_head)
        return means, scales, quats, opacities, features

    def splat(self, sample: dict, k: int, camera: Camera) -> Tensor:
        """(C, H, W) feature map of batch item k."""
        w2c = sample["w2c"][k]
        code = torch.cat([sample["iden_code"][k], sample["expr_code"][k]])
        g_head = w2c[:3, :3].T @ pitchyaw_to_vector(sample["gaze"][k])
        gaze_head = vector_to_pitchyaw(g_head)
        parts = [self.face(code)]
        parts += [self.eye_gaussians(e, sample["iden_code"][k], gaze_head) for e in (0, 1)]
        means, scales, quats, opacities, features = (torch.cat(t) for t in zip(*parts, strict=True))
        out = self.rasterizer(means, scales, quats, opacities, features, camera, viewmat=w2c)
        return out.image

    def conditions(self, sample: dict) -> tuple[Tensor, Tensor, Tensor]:
        return self.embeddings(sample["gaze"], sample["head_pose"], sample["expr_code"])

    def forward(self, sample: dict) -> dict:
        """Batch dict (see fresnel.gaze.data) -> rgb (B, 3, H, W) and the embeddings."""
        b, _, h, w = sample["image"].shape
        features = torch.stack([self.splat(sample, k, _camera(sample["K"][k], w, h))
                                for k in range(b)])  # fmt: skip
        embeddings = self.conditions(sample)
        rgb = self.renderer.to_rgb(features, sum(embeddings), residual=self.cfg.residual)
        return {"rgb": rgb, "features": features, "embeddings": embeddings}


def _camera(K: Tensor, width: int, height: int) -> Camera:
    k = K.detach().double().tolist()
    return Camera(k[0][0], k[1][1], k[0][2], k[1][2], width, height)


def _make_renderer(cfg: GazeGaussianConfig, vae: VAE | None):
    common = dict(in_channels=cfg.feature_channels, cond_dim=cfg.embedding_width,
                  use_vae=cfg.use_vae, vae=vae)  # fmt: skip
    if cfg.neural_renderer_type == "dit":
        return make_renderer("dit", depth=cfg.dit_depth, heads=cfg.dit_num_heads,
                             patch_size=cfg.dit_patch_size, hidden=cfg.dit_hidden, **common)  # fmt: skip
    return make_renderer(cfg.neural_renderer_type, base_channels=cfg.unet_base_channels, **common)
