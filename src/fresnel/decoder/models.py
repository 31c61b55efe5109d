"""The three decoder experiments: DINOv2 patch features + relative depth -> 3D Gaussians.

Every model maps ``features`` (B, 37, 37, 384) and ``depth`` (B, H, W) (float32, any H, W;
256 x 256 in the pipeline) to one packed tensor (B, 37*37*K, 14) in camera space (layout and
conventions in ``fresnel.decoder.gaussians``). K = ``gaussians_per_patch`` is a square
(1, 4, 9, 16): each patch is split into k_side x k_side sub-cells and Gaussian
``patch * K + sub`` starts on the camera ray through its sub-cell's centre.

Shared output parameterisation (experiments 2 and 3; experiment 1 refines an analytic init):

* position: z = z_prior + MAX_DEPTH_OFFSET * tanh(r_z), where z_prior is the depth prior
  (``gaussians.depth_to_z`` of the depth sampled at sub-cell resolution); the ray slope moves
  laterally by at most half a patch, (x/z, y/z) = ray + LATERAL_BOUND * tanh(r_xy);
* scale = footprint * exp(LOG_SCALE_RANGE * tanh(r_s / LOG_SCALE_RANGE)), footprint =
  SCALE_FOOTPRINT * (world width of a sub-cell at z), so scales start at about half a
  sub-cell and stay within e^+-3 of it;
* rotation = normalise(r_q), the output bias of qw is 1 so rotations start near identity;
* opacity = sigmoid(r_o), colour = sigmoid(r_c): start at 0.5 (mid-grey, half opaque).

Fresnel flags (``DecoderFlags``, all off by default) are applied in ``forward`` in a fixed
order, so they are part of the exported ONNX graph: zones (z snapped to the zone centre plus
a residual bounded to half a zone) -> edge-aware (scales, opacities) -> phase blending
(opacities). A model's parameters do not depend on its flags.

All forwards are free of data-dependent Python control flow and export with
``torch.onnx.export(..., dynamo=False)`` (``export_onnx``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fresnel.decoder import fresnel_zones as fz
from fresnel.decoder.gaussians import (
    FEATURE_DIM,
    GRID,
    NUM_PATCHES,
    PACKED_DIM,
    Z_FAR,
    Z_NEAR,
    depth_to_z,
    normalise_depth,
    pack,
    pad_replicate,
    patch_depth,
    patch_rays,
    per_gaussian,
    ray_slope_per_patch,
    resize_depth,
    select_per_patch,
    subcell_rays,
    subcell_z,
    to_patch_major,
)
from fresnel.render.projection import quat_multiply

__all__ = [
    "EXPERIMENTS",
    "DecoderFlags",
    "DirectPatchDecoder",
    "FeatureGuidedDecoder",
    "GaussianDecoder",
    "SAAGRefinementDecoder",
    "build_decoder",
    "export_onnx",
    "saag_init",
    "select_per_patch",
]

VALID_K = (1, 4, 9, 16)
LATERAL_BOUND = 0.5 * ray_slope_per_patch()  # max lateral move: half a patch
MAX_DEPTH_OFFSET = 0.2  # world units, a fifth of [Z_NEAR, Z_FAR]
LOG_SCALE_RANGE = 3.0
SCALE_FOOTPRINT = 0.5  # std-dev as a fraction of the sub-cell width
HEAD_INIT_GAIN = 0.05  # shrinks the output layer so outputs start near their biases

# SAAG analytic init and residual bounds
SAAG_THIN_RATIO = 0.2  # normal-axis std-dev relative to the tangential one
SAAG_MAX_STRETCH = 4.0  # cap of the surface-area / frontal-area ratio (depth edges)
SAAG_OPACITY_LOGIT = 0.0  # analytic opacity sigmoid(0) = 0.5
SAAG_DEPTH_RESIDUAL = 0.1
SAAG_ROTATION_RESIDUAL = 0.5  # bound on the vector part of the unnormalised delta quaternion


@dataclass(frozen=True)
class DecoderFlags:
    """The guide's Fresnel-inspired model flags (``--boundary_weight`` is the loss's:
    ``fresnel_zones.boundary_loss_weights``)."""

    use_edge_aware: bool = False
    edge_scale_factor: float = 0.5
    edge_opacity_boost: float = 0.2
    use_phase_blending: bool = False
    phase_amplitude: float = 0.25
    use_fresnel_zones: bool = False
    num_fresnel_zones: int = 8

    def __post_init__(self):
        for name in ("edge_scale_factor", "edge_opacity_boost", "phase_amplitude"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if int(self.num_fresnel_zones) != self.num_fresnel_zones or self.num_fresnel_zones < 1:
            raise ValueError(
                f"num_fresnel_zones must be a positive integer: {self.num_fresnel_zones}"
            )


def k_side_of(gaussians_per_patch: int) -> int:
    """sqrt(K), with a clear error unless K is one of 1, 4, 9, 16."""
    if gaussians_per_patch not in VALID_K:
        raise ValueError(
            f"gaussians_per_patch must be a square in {VALID_K} (k_side x k_side sub-cells "
            f"per patch), got {gaussians_per_patch}"
        )
    return math.isqrt(gaussians_per_patch)


def _bounded_log(raw: Tensor) -> Tensor:
    return LOG_SCALE_RANGE * torch.tanh(raw / LOG_SCALE_RANGE)


def _normalise(v: Tensor, eps: float = 1e-12) -> Tensor:
    return v / torch.sqrt((v * v).sum(-1, keepdim=True) + eps)


class Dense(nn.Module):
    """Linear -> LayerNorm -> GELU, the hidden layer of every head.

    The LayerNorm keeps hidden activations bounded whatever the weights do: without it one
    Adam step at lr 0.02 shifted exp. 2's pre-activations by ~6 and saturated every output
    sigmoid (all opacities 0, no gradient left, measured).
    """

    def __init__(self, inputs: int, outputs: int):
        super().__init__()
        self.linear = nn.Linear(inputs, outputs)
        self.norm = nn.LayerNorm(outputs)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.norm(self.linear(x)))


class GaussianDecoder(nn.Module):
    """Shared parts: K, flags, the patch-major rays and the flag post-processing."""

    experiment: int = 0

    def __init__(self, gaussians_per_patch: int = 4, flags: DecoderFlags | None = None):
        super().__init__()
        self.k_side = k_side_of(gaussians_per_patch)
        self.gaussians_per_patch = gaussians_per_patch
        self.flags = flags or DecoderFlags()
        self.subcell_slope = ray_slope_per_patch() / self.k_side
        self.register_buffer("rays", patch_rays(GRID, self.k_side), persistent=False)
        # phi of the phase modulation; present whatever the flags, so checkpoints are shared
        self.phase_offset = nn.Parameter(torch.zeros(()))
        self._model_kwargs: dict = {}

    @property
    def num_gaussians(self) -> int:
        return NUM_PATCHES * self.gaussians_per_patch

    def config(self) -> dict:
        """Everything ``build_decoder(**config)`` needs to rebuild this model."""
        return {
            "experiment": self.experiment,
            "gaussians_per_patch": self.gaussians_per_patch,
            **asdict(self.flags),
            **self._model_kwargs,
        }

    def _position_z(self, z_prior: Tensor, raw_z: Tensor, max_offset: float) -> Tensor:
        if self.flags.use_fresnel_zones:
            zones = self.flags.num_fresnel_zones
            half_zone = 0.5 * (Z_FAR - Z_NEAR) / zones
            return fz.quantise_depth(z_prior, zones) + half_zone * torch.tanh(raw_z)
        return z_prior + max_offset * torch.tanh(raw_z)

    def _apply_flags(
        self, means: Tensor, scales: Tensor, opacities: Tensor, depth: Tensor
    ) -> tuple[Tensor, Tensor]:
        f = self.flags
        if f.use_edge_aware:
            edge = per_gaussian(fz.depth_edges(patch_depth(depth)), self.gaussians_per_patch)
            scales, opacities = fz.apply_edge_aware(
                scales, opacities, edge, f.edge_scale_factor, f.edge_opacity_boost
            )
        if f.use_phase_blending:
            wavelength = fz.phase_wavelength(f.num_fresnel_zones)
            opacities = fz.phase_modulation(
                opacities, means[..., 2], f.phase_amplitude, wavelength, self.phase_offset
            )
        return scales, opacities

    def _init_head(self, head: nn.Linear, channels: int, quat_w: int | None) -> None:
        with torch.no_grad():
            head.weight.mul_(HEAD_INIT_GAIN)
            head.bias.zero_()
            if quat_w is not None:
                head.bias.view(self.gaussians_per_patch, channels)[:, quat_w] = 1.0

    def _decode(self, raw: Tensor, depth: Tensor) -> Tensor:
        """Raw per-Gaussian outputs (B, N, 14) -> packed Gaussians (see module docstring)."""
        z = self._position_z(subcell_z(depth, self.k_side), raw[..., 2], MAX_DEPTH_OFFSET)
        slope = self.rays[:, :2] + LATERAL_BOUND * torch.tanh(raw[..., 0:2])
        means = torch.cat([slope * z.unsqueeze(-1), z.unsqueeze(-1)], dim=-1)
        footprint = SCALE_FOOTPRINT * self.subcell_slope * z
        scales = footprint.unsqueeze(-1) * torch.exp(_bounded_log(raw[..., 3:6]))
        quats = _normalise(raw[..., 6:10])
        opacities = torch.sigmoid(raw[..., 10])
        colors = torch.sigmoid(raw[..., 11:14])
        scales, opacities = self._apply_flags(means, scales, opacities, depth)
        return pack(means, scales, quats, opacities, colors)


class DirectPatchDecoder(GaussianDecoder):
    """Experiment 2: K Gaussians per patch straight from that patch's features and depth.

    LayerNorm(features) ++ normalised patch depth -> Dense -> [+ 3x3 conv over the 37 x 37
    grid (local neighbourhood context), residual] -> Dense -> Linear(K*14).
    The MLP weights are shared over patches; the depth prior places each Gaussian on its
    sub-cell ray and the network only predicts bounded offsets and appearance. Local and
    purely learned: no analytic geometry (unlike exp. 1), no global context (unlike exp. 3).
    """

    experiment = 2

    def __init__(
        self,
        gaussians_per_patch: int = 4,
        hidden: int = 192,
        context_conv: bool = True,
        flags: DecoderFlags | None = None,
    ):
        super().__init__(gaussians_per_patch, flags)
        self._model_kwargs = {"hidden": hidden, "context_conv": context_conv}
        self.norm = nn.LayerNorm(FEATURE_DIM)
        self.inp = Dense(FEATURE_DIM + 1, hidden)
        self.context = nn.Conv2d(hidden, hidden, 3, padding=1) if context_conv else None
        self.context_norm = nn.LayerNorm(hidden) if context_conv else None
        self.mid = Dense(hidden, hidden)
        self.head = nn.Linear(hidden, gaussians_per_patch * PACKED_DIM)
        self._init_head(self.head, PACKED_DIM, quat_w=6)

    def forward(self, features: Tensor, depth: Tensor) -> Tensor:
        d = normalise_depth(patch_depth(depth)).unsqueeze(-1)
        h = self.inp(torch.cat([self.norm(features), d], dim=-1))  # (B, 37, 37, hidden)
        if self.context is not None:
            c = self.context(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
            h = h + F.gelu(self.context_norm(c))
        h = self.mid(h)
        raw = self.head(h).float().reshape(features.shape[0], -1, PACKED_DIM)
        return self._decode(raw, depth)


# ----------------------------------------------------------------------------- experiment 1


def saag_init(depth: Tensor, k_side: int, grid_rays: Tensor | None = None) -> dict[str, Tensor]:
    """Surface-aligned adaptive Gaussians from depth alone (patch-major, camera space).

    Sub-cell depth -> z (``depth_to_z``) -> points on the sub-cell rays. The surface normal
    is the cross product of the central differences of those points (replicate-padded),
    oriented away from the camera (n_z >= 0, so the quaternion below is never singular); the
    rotation takes the local z (thin) axis onto it: q = normalise(1 + n_z, -n_y, n_x, 0).
    Tangential std-dev = SCALE_FOOTPRINT * frontal sub-cell width * sqrt(area ratio), where
    the area ratio (surface area of the sub-cell over its fronto-parallel area, clamped to
    [1, SAAG_MAX_STRETCH]) widens Gaussians on slanted surfaces; normal std-dev =
    SAAG_THIN_RATIO * tangential. Opacity sigmoid(SAAG_OPACITY_LOGIT), colour mid-grey.
    Also returns ``z`` (B, N) and the patch-mean ``normals`` (B, 37*37, 3). ``grid_rays``:
    ``subcell_rays(37 * k_side)`` already on the right device (computed when None).
    """
    side = GRID * k_side
    z = depth_to_z(resize_depth(depth, side))  # (B, S, S)
    if grid_rays is None:
        grid_rays = subcell_rays(side).to(depth)
    points = grid_rays * z.unsqueeze(-1)  # (B, S, S, 3)
    padded = pad_replicate(points.permute(0, 3, 1, 2))
    frontal = (ray_slope_per_patch() / k_side) * z  # sub-cell width at z
    du = (padded[:, :, 1:-1, 2:] - padded[:, :, 1:-1, :-2]) / (2 * frontal.unsqueeze(1))
    dv = (padded[:, :, 2:, 1:-1] - padded[:, :, :-2, 1:-1]) / (2 * frontal.unsqueeze(1))
    cross = torch.linalg.cross(du, dv, dim=1).permute(0, 2, 3, 1)  # (B, S, S, 3)
    area = torch.sqrt((cross * cross).sum(-1) + 1e-12)
    normal = cross / area.unsqueeze(-1)
    normal = torch.where(normal[..., 2:3] < 0, -normal, normal)
    nx, ny, nz = normal.unbind(-1)
    quats = _normalise(torch.stack([1.0 + nz, -ny, nx, torch.zeros_like(nz)], dim=-1))
    tangential = SCALE_FOOTPRINT * frontal * torch.sqrt(area.clamp(1.0, SAAG_MAX_STRETCH))
    scales = torch.stack([tangential, tangential, SAAG_THIN_RATIO * tangential], dim=-1)
    means = to_patch_major(points, k_side)
    normals = to_patch_major(normal, k_side).reshape(depth.shape[0], NUM_PATCHES, -1, 3)
    return {
        "means": means,
        "scales": to_patch_major(scales, k_side),
        "quats": to_patch_major(quats, k_side),
        "opacities": torch.sigmoid(torch.full_like(means[..., 2], SAAG_OPACITY_LOGIT)),
        "colors": torch.full_like(means, 0.5),
        "z": to_patch_major(z, k_side),
        "normals": normals.mean(2),
    }


class SAAGRefinementDecoder(GaussianDecoder):
    """Experiment 1: surface-aligned adaptive Gaussians (``saag_init``) + learned residuals.

    Geometry comes analytically from depth (positions on the sub-cell rays, thin axis along
    the depth normal, footprint-sized scales); a small per-patch MLP on LayerNorm(features),
    normalised depth and the patch normal predicts bounded residuals per Gaussian: lateral
    ray shift (<= half a sub-cell), depth (<= SAAG_DEPTH_RESIDUAL), log-scale (+-3), rotation
    delta q = q_init * normalise(1, v) with |v_i| <= 0.5, opacity and colour logits. The
    output layer is zero-initialised, so at init (flags off) the model returns exactly
    ``saag_init``. Unlike exp. 2/3 the network never has to discover geometry, only to
    correct it.
    """

    experiment = 1
    RESIDUALS = 13  # dx, dy, dz, 3 log-scales, 3 rotation, opacity, 3 colours

    def __init__(
        self, gaussians_per_patch: int = 4, hidden: int = 128, flags: DecoderFlags | None = None
    ):
        super().__init__(gaussians_per_patch, flags)
        self._model_kwargs = {"hidden": hidden}
        self.register_buffer("grid_rays", subcell_rays(GRID * self.k_side), persistent=False)
        self.norm = nn.LayerNorm(FEATURE_DIM)
        self.mlp = nn.Sequential(Dense(FEATURE_DIM + 4, hidden), Dense(hidden, hidden))
        self.head = nn.Linear(hidden, gaussians_per_patch * self.RESIDUALS)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, features: Tensor, depth: Tensor) -> Tensor:
        init = saag_init(depth, self.k_side, self.grid_rays)
        batch = features.shape[0]
        d = normalise_depth(patch_depth(depth)).reshape(batch, NUM_PATCHES, 1)
        x = torch.cat([self.norm(features).reshape(batch, NUM_PATCHES, -1), d, init["normals"]], -1)
        r = self.head(self.mlp(x)).float().reshape(batch, -1, self.RESIDUALS)

        z = self._position_z(init["z"], r[..., 2], SAAG_DEPTH_RESIDUAL)
        slope = self.rays[:, :2] + (0.5 * self.subcell_slope) * torch.tanh(r[..., 0:2])
        means = torch.cat([slope * z.unsqueeze(-1), z.unsqueeze(-1)], dim=-1)
        scales = init["scales"] * torch.exp(_bounded_log(r[..., 3:6]))
        v = SAAG_ROTATION_RESIDUAL * torch.tanh(r[..., 6:9])
        delta = torch.cat([torch.ones_like(v[..., :1]), v], dim=-1)
        delta = delta / torch.sqrt(1.0 + (v * v).sum(-1, keepdim=True))
        quats = quat_multiply(init["quats"], delta)
        opacities = torch.sigmoid(SAAG_OPACITY_LOGIT + r[..., 9])
        colors = torch.sigmoid(r[..., 10:13])
        scales, opacities = self._apply_flags(means, scales, opacities, depth)
        return pack(means, scales, quats, opacities, colors)


# ----------------------------------------------------------------------------- experiment 3


def sincos_2d(grid: int, dim: int) -> Tensor:
    """(grid*grid, dim) fixed 2D sine-cosine position embedding (rows, then columns)."""
    quarter = dim // 4
    freqs = 1.0 / (100.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    pos = torch.arange(grid, dtype=torch.float64)[:, None] * freqs[None]  # (grid, quarter)
    enc = torch.cat([pos.sin(), pos.cos()], dim=-1)  # (grid, dim/2)
    rows = enc[:, None, :].expand(grid, grid, -1)
    cols = enc[None, :, :].expand(grid, grid, -1)
    return torch.cat([rows, cols], dim=-1).reshape(grid * grid, -1).float()


class EncoderBlock(nn.Module):
    """Pre-LayerNorm transformer encoder layer (multi-head self-attention + GELU MLP)."""

    def __init__(self, dim: int, heads: int, ff: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff), nn.GELU(), nn.Linear(ff, dim))

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(batch, tokens, 3, self.heads, dim // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, dh) each
        # softmax(q k^T / sqrt(dh)) v; the dynamo=False exporter writes it as MatMul/Softmax
        attended = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, tokens, dim))
        return x + self.ff(self.norm2(x))


class FeatureGuidedDecoder(GaussianDecoder):
    """Experiment 3: global context first, then per-patch heads as in exp. 2.

    LayerNorm(features) -> Linear(384 -> dim) + fixed 2D sin-cos position embedding, depth
    injected by FiLM (tokens * (1 + gamma) + beta, gamma/beta from the patch's normalised
    depth and depth-edge strength; zero-initialised, so it starts as identity), then
    ``layers`` pre-LN transformer encoder layers (full self-attention over all 37 x 37
    tokens: every Gaussian sees the whole image, e.g. symmetric face parts), LayerNorm,
    and a per-patch MLP head (token ++ depth -> K*14) decoded like exp. 2.
    """

    experiment = 3

    def __init__(
        self,
        gaussians_per_patch: int = 4,
        dim: int = 128,
        heads: int = 4,
        layers: int = 2,
        ff: int = 256,
        flags: DecoderFlags | None = None,
    ):
        super().__init__(gaussians_per_patch, flags)
        if dim % heads or dim % 4:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}) and by 4")
        self._model_kwargs = {"dim": dim, "heads": heads, "layers": layers, "ff": ff}
        self.norm = nn.LayerNorm(FEATURE_DIM)
        self.embed = nn.Linear(FEATURE_DIM, dim)
        self.register_buffer("position", sincos_2d(GRID, dim), persistent=False)
        self.film = nn.Sequential(nn.Linear(2, dim), nn.GELU(), nn.Linear(dim, 2 * dim))
        nn.init.zeros_(self.film[-1].weight)
        nn.init.zeros_(self.film[-1].bias)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff) for _ in range(layers))
        self.out_norm = nn.LayerNorm(dim)
        self.mid = Dense(dim + 1, dim)
        self.head = nn.Linear(dim, gaussians_per_patch * PACKED_DIM)
        self._init_head(self.head, PACKED_DIM, quat_w=6)

    def forward(self, features: Tensor, depth: Tensor) -> Tensor:
        batch = features.shape[0]
        dp = patch_depth(depth)
        d = normalise_depth(dp).reshape(batch, NUM_PATCHES, 1)
        edge = fz.depth_edges(dp).reshape(batch, NUM_PATCHES, 1)
        tokens = self.embed(self.norm(features).reshape(batch, NUM_PATCHES, -1)) + self.position
        gamma, beta = self.film(torch.cat([d, edge], dim=-1)).chunk(2, dim=-1)
        x = tokens * (1.0 + gamma) + beta
        for block in self.blocks:
            x = block(x)
        h = self.mid(torch.cat([self.out_norm(x), d], dim=-1))
        raw = self.head(h).float().reshape(batch, -1, PACKED_DIM)
        return self._decode(raw, depth)


# ----------------------------------------------------------------------------- factory

EXPERIMENTS: dict[int, type[GaussianDecoder]] = {
    1: SAAGRefinementDecoder,
    2: DirectPatchDecoder,
    3: FeatureGuidedDecoder,
}
FLAG_NAMES = frozenset(f.name for f in fields(DecoderFlags))


def build_decoder(experiment: int, gaussians_per_patch: int = 4, **flags) -> GaussianDecoder:
    """The decoder of ``experiment`` (1 = SAAG refinement, 2 = direct, 3 = feature-guided).

    ``flags`` are ``DecoderFlags`` fields (the guide's Fresnel flags) and, optionally, model
    sizes (``hidden``; ``context_conv``; ``dim``, ``heads``, ``layers``, ``ff``).
    ``build_decoder(**model.config())`` rebuilds a model.
    """
    if experiment not in EXPERIMENTS:
        raise ValueError(f"experiment must be one of {sorted(EXPERIMENTS)}, got {experiment}")
    flag_kwargs = {k: v for k, v in flags.items() if k in FLAG_NAMES}
    model_kwargs = {k: v for k, v in flags.items() if k not in FLAG_NAMES}
    cls = EXPERIMENTS[experiment]
    try:
        return cls(gaussians_per_patch, flags=DecoderFlags(**flag_kwargs), **model_kwargs)
    except TypeError as err:
        raise TypeError(f"unknown option for experiment {experiment}: {err}") from err


def export_onnx(model: GaussianDecoder, path: str | Path, opset: int = 17) -> Path:
    """Export to one ONNX file: inputs features (B,37,37,384), depth (B,256,256), output
    gaussians (B,N,14); the batch axis is dynamic."""
    path = Path(path)
    param = next(model.parameters())
    example = (
        torch.zeros(1, GRID, GRID, FEATURE_DIM, device=param.device),
        torch.rand(1, 256, 256, device=param.device),
    )
    was_training = model.training
    model.eval()
    try:
        torch.onnx.export(
            model,
            example,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["features", "depth"],
            output_names=["gaussians"],
            dynamic_axes={
                "features": {0: "batch"},
                "depth": {0: "batch"},
                "gaussians": {0: "batch"},
            },
        )
    finally:
        model.train(was_training)
    return path
