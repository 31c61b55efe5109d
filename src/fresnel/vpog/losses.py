"""VPOG's training losses: patch classification, buddy-relative flow, and a Monte Carlo pose loss.

Conventions (as in `fresnel.vpog.flow` and `fresnel.vpog.model`)
- Per (template s, query patch) labels [B, S, Hp, Wp]: -1 background, 0..N-1 the buddy template
  patch, N unseen, with N = Hp * Wp (the template grid has the query's Hp x Wp). Model outputs
  flatten the patch grid row-major: index = row * Wp + col.
- The anchor pixel of patch (row, col) is pixel (row * ps + ps // 2, col * ps + ps // 2); pixel
  centres sit at +0.5, so its uv = (col * ps + ps // 2 + 0.5, row * ps + ps // 2 + 0.5). The
  centre of template patch j is uv = ((j % Wp + 0.5) * ps, (j // Wp + 0.5) * ps).
- flows [B, S, Hp, Wp, 2]: (du, dv) from the query anchor to its projection in the template, in
  patch units (pixels / ps); the buddy residual is that projection relative to the buddy
  centre, also in patch units, in [-0.5, 0.5) when the projection lies in the buddy patch.
- Losses that can have nothing to average over return a zero that is still attached to the
  graph (so `backward()` works on every batch).
- Pose: OpenCV pinhole cameras, X_cam = R X_obj + t, uv = pi(K X_cam) = (K X)[:2] / (K X)[2].
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from fresnel.render.projection import axis_angle_to_matrix

BACKGROUND = -1


@dataclass
class LossWeights:
    classification: float = 1.0
    flow: float = 1.0
    pose: float = 0.1


def classification_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of logits [B, S, N, N+1] against labels [B, S, Hp, Wp] over every
    labelled (non-background) entry; a zero with grad when nothing is labelled."""
    labels = labels.flatten(2).reshape(-1)
    total = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels, ignore_index=BACKGROUND, reduction="sum"
    )
    return total / (labels != BACKGROUND).sum().clamp_min(1)


def buddy_residual(flows: Tensor, labels: Tensor, patch_size: int) -> Tensor:
    """[B, S, Hp, Wp, 2] target of `VPOGModel.flow`: the anchor's template position relative
    to its buddy patch's centre, flows - (buddy centre uv - anchor uv) / ps. NaN where the label
    is not a buddy (background or unseen)."""
    Hp, Wp = labels.shape[-2:]
    is_buddy = (labels >= 0) & (labels < Hp * Wp)
    buddy = torch.where(is_buddy, labels, 0)
    centre = torch.stack((buddy % Wp, buddy // Wp), -1).to(flows.dtype) + 0.5  # patch units
    rows = torch.arange(Hp, device=labels.device)[:, None].expand(Hp, Wp)
    cols = torch.arange(Wp, device=labels.device)[None, :].expand(Hp, Wp)
    offset = (patch_size // 2 + 0.5) / patch_size  # anchor uv relative to its patch corner
    anchor = torch.stack((cols, rows), -1).to(flows.dtype) + offset
    residual = flows - (centre - anchor)
    return torch.where(is_buddy[..., None], residual, torch.nan)


def flow_loss(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    kind: Literal["l1", "huber"] = "l1",
    huber_delta: float = 0.1,
) -> Tensor:
    """Mean over valid entries and both coordinates of |pred - target| (kind "l1") or the Huber
    loss with threshold `huber_delta` (patch units). pred [B, S, N, 2], target [B, S, Hp, Wp, 2],
    valid [B, S, Hp, Wp]; whatever the target holds at invalid entries (NaN included) is
    ignored. A zero with grad when nothing is valid."""
    valid = valid.flatten(2)[..., None]  # [B, S, N, 1]
    target = torch.where(valid, target.flatten(2, 3), pred.detach())
    if kind == "l1":
        per_entry = (pred - target).abs()
    elif kind == "huber":
        per_entry = F.huber_loss(pred, target, reduction="none", delta=huber_delta)
    else:
        raise ValueError(f"flow loss kind {kind!r}: use 'l1' or 'huber'")
    total = torch.where(valid, per_entry, 0.0).sum()
    return total / (valid.sum() * pred.shape[-1]).clamp_min(1)


# -- Monte Carlo pose loss ----------------------------------------------------------------------
def reprojection_cost(
    x2d: Tensor, x3d: Tensor, w2d: Tensor, K: Tensor, R: Tensor, t: Tensor
) -> Tensor:
    """[B, P] f = 0.5 * sum_i || w_i * (pi(K (R X_i + t)) - x_i) ||^2 for P poses per item:
    x2d [B, M, 2], x3d [B, M, 3], w2d [B, M, 2], K [B, 3, 3], R [B, P, 3, 3], t [B, P, 3]."""
    camera = torch.einsum("bpij,bmj->bpmi", R, x3d) + t[:, :, None]  # [B, P, M, 3]
    pixels = torch.einsum("bij,bpmj->bpmi", K, camera)
    # a point at or behind the camera would divide by ~0; such poses get a huge, finite cost
    uv = pixels[..., :2] / pixels[..., 2:].clamp_min(1e-6)
    residual = w2d[:, None] * (uv - x2d[:, None])
    return 0.5 * residual.square().sum(dim=(-1, -2))


def _log_haar_jacobian(omega: Tensor) -> Tensor:
    """log of dHaar / d(omega) = 2 (1 - cos|omega|) / |omega|^2 = sinc^2(|omega| / 2), with the
    Haar measure scaled to match the Lebesgue measure of axis-angle vectors at the identity."""
    half = omega.norm(dim=-1) / 2
    return 2 * torch.log(torch.sinc(half / math.pi))  # torch.sinc(x) = sin(pi x) / (pi x)


def _gaussian_log_pdf(x: Tensor, std: Tensor) -> Tensor:
    """log N(x; 0, std^2 I) summed over the last dimension (size 3); std broadcasts."""
    return (-0.5 * (x / std).square() - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(-1)


def monte_carlo_pose_loss(
    x2d: Tensor,
    x3d: Tensor,
    w2d: Tensor,
    K: Tensor,
    R_gt: Tensor,
    t_gt: Tensor,
    num_samples: int = 128,
    rotation_std: float = 0.1,
    translation_std: float = 0.05,
    generator: torch.Generator | None = None,
) -> Tensor:
    """[B] EPro-PnP's KL pose loss, estimated with a fixed Gaussian proposal instead of AMIS.

    With the weighted reprojection cost f(R, t) = 0.5 sum_i ||w_i * (pi(K (R X_i + t)) - x_i)||^2
    (x2d [B, M, 2] pixels, x3d [B, M, 3] object points, w2d [B, M, 2] weights, K [B, 3, 3]) the
    predicted pose density is exp(-f) / Z, and the loss is its KL divergence from the ground
    truth up to a constant: f(R_gt, t_gt) + log Z, Z = integral of exp(-f(y)) dy over SO(3) x R^3.
    Z is estimated by importance sampling with `num_samples` poses y_k from a proposal q around
    the ground truth: R_k = exp([omega]_x) R_gt with omega ~ N(0, rotation_std^2 I) (radians,
    camera frame), t_k = t_gt + delta with delta ~ N(0, (translation_std |t_gt|)^2 I), so
    log Z ~ logsumexp_k(-f(y_k) - log q(y_k)) - log num_samples. Densities are w.r.t. the Haar
    measure normalised as in `_log_haar_jacobian` times Lebesgue measure on translations;
    axis-angle draws beyond pi (negligible at small rotation_std) are not folded back.
    Samples do not depend on the inputs, so gradients reach x2d, x3d and w2d through f only.
    `generator` (any device) makes the draws reproducible; the ground truth gets no gradient.
    """
    B, dtype, device = x3d.shape[0], x3d.dtype, x3d.device
    R_gt, t_gt = R_gt.detach().to(dtype), t_gt.detach().to(dtype)
    noise_device = generator.device if generator is not None else device
    noise = torch.randn(B, num_samples, 6, generator=generator, device=noise_device)
    noise = noise.to(device=device, dtype=dtype)
    rot_std = torch.tensor(rotation_std, dtype=dtype, device=device)
    trans_std = (translation_std * t_gt.norm(dim=-1)).clamp_min(1e-8)[:, None, None]  # [B, 1, 1]
    omega, delta = noise[..., :3] * rot_std, noise[..., 3:] * trans_std
    R = axis_angle_to_matrix(omega) @ R_gt[:, None]
    t = t_gt[:, None] + delta
    log_q = (
        _gaussian_log_pdf(omega, rot_std)
        - _log_haar_jacobian(omega)
        + _gaussian_log_pdf(delta, trans_std)
    )
    cost_gt = reprojection_cost(x2d, x3d, w2d, K.to(dtype), R_gt[:, None], t_gt[:, None])[:, 0]
    cost = reprojection_cost(x2d, x3d, w2d, K.to(dtype), R, t)
    log_z = torch.logsumexp(-cost - log_q, dim=1) - math.log(num_samples)
    return cost_gt + log_z
