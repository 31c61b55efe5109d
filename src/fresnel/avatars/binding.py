"""Gaussians rigged to the triangles of a mesh (GaussianAvatars, Qian et al. 2024, section 3.2).

Each Gaussian lives in the frame of one triangle: its position, scale and rotation are stored
relative to the face, and the face's rotation R, centroid c and size s carry them into world
space (world mean = R mu s + c, world scale = scale s, world rotation = R r). Moving the mesh
therefore moves every Gaussian with its face, rigidly within each triangle, and scaling the
mesh scales them. Densification (clone / split / prune) keeps each Gaussian's face, so the
binding survives training; pruning never empties a face, so every triangle can still grow
Gaussians later.

Quaternions are (w, x, y, z) as in `fresnel.render.projection`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fresnel.render.projection import quat_multiply, quat_to_rotmat, rotmat_to_quat

PARAM_NAMES = ("local_means", "log_scales", "local_quats", "opacity_logits", "sh")
SPLIT_SHRINK = 0.8  # 3DGS: children of a split get the parent's scale / (0.8 n)
INIT_OPACITY = 0.1  # 3DGS initial opacity


class FaceFrames(NamedTuple):
    """Per-triangle frames, over any leading dims of the vertices: rotations (..., F, 3, 3)
    whose columns are the frame axes, centers (..., F, 3), scales (..., F)."""

    rotations: Tensor
    centers: Tensor
    scales: Tensor


def face_frames(vertices: Tensor, faces: Tensor) -> FaceFrames:
    """The frame of each triangle (v0, v1, v2) of a (..., V, 3) mesh, GaussianAvatars' own
    (`compute_face_orientation` in its utils/graphics_utils.py), so that local parameters mean
    the same here and in every GaussianAvatars tool.

    Axes, as the columns: e = (v1 - v0)/|v1 - v0|, n = the unit normal (right-hand rule over
    v0, v1, v2), and e x n, in the triangle's plane: (e, n, e x n), right-handed (det +1); the
    local y axis is the normal. Center: the centroid. Scale: the mean of |v1 - v0| and the
    triangle's height over that edge; both grow linearly with a uniform mesh scale, which is
    what makes the Gaussians scale with the mesh.
    """
    tri = vertices[..., faces, :]  # (..., F, 3 corners, 3)
    v0, v1, v2 = tri.unbind(-2)
    edge, other = v1 - v0, v2 - v0
    e = F.normalize(edge, dim=-1)
    n = F.normalize(torch.linalg.cross(edge, other, dim=-1), dim=-1)
    in_plane = torch.linalg.cross(e, n, dim=-1)
    rotations = torch.stack((e, n, in_plane), dim=-1)
    height = (other * in_plane).sum(-1).abs()
    scales = 0.5 * (edge.norm(dim=-1) + height)
    return FaceFrames(rotations, tri.mean(-2), scales)


class BoundGaussians(nn.Module):
    """N Gaussians, each bound to one face of a mesh with `num_faces` triangles.

    Trainable (nn.Parameter, rows = Gaussians): local_means (N, 3), log_scales (N, 3) (log of
    the std-devs relative to the face scale), local_quats (N, 4) (unnormalised, rotation
    relative to the face frame), opacity_logits (N,), sh (N, K, C) with K = (sh_degree + 1)^2
    (`fresnel.render.sh` conventions). Buffer: face_ids (N,) long.

    The densify ops replace the Parameter objects (their row count changes); pass the Adam
    optimizer holding them and it is kept in sync: its param lists point at the new objects and
    the per-row state (exp_avg, exp_avg_sq, ...) follows the rows, zero for new ones.
    """

    def __init__(
        self,
        local_means: Tensor,
        log_scales: Tensor,
        local_quats: Tensor,
        opacity_logits: Tensor,
        sh: Tensor,
        face_ids: Tensor,
        num_faces: int,
    ):
        super().__init__()
        self.local_means = nn.Parameter(local_means)
        self.log_scales = nn.Parameter(log_scales)
        self.local_quats = nn.Parameter(local_quats)
        self.opacity_logits = nn.Parameter(opacity_logits)
        self.sh = nn.Parameter(sh)
        self.register_buffer("face_ids", face_ids.long())
        self.num_faces = int(num_faces)
        self.sh_degree = math.isqrt(sh.shape[1]) - 1

    @classmethod
    def on_mesh(
        cls,
        vertices: Tensor,
        faces: Tensor,
        per_face: int,
        generator: torch.Generator | None = None,
        sh_degree: int = 3,
        channels: int = 3,
        init_scale: float = 0.3,
    ) -> BoundGaussians:
        """`per_face` Gaussians on every face of a (V, 3) mesh at uniformly random barycentric
        points, identity local rotation, opacity 0.1 and grey colour (zero SH). Isotropic local
        std init_scale / sqrt(per_face) (in face-scale units): the more Gaussians share a face,
        the smaller each, so they start small and spread over the triangle rather than on top
        of each other."""
        num_faces = faces.shape[0]
        n = num_faces * per_face
        face_ids = torch.arange(num_faces, device=vertices.device).repeat_interleave(per_face)
        rand = torch.rand(n, 2, generator=generator, device=_gen_device(generator, vertices))
        u, v = rand.to(vertices).unbind(-1)
        flip = u + v > 1  # fold the unit square onto the triangle: uniform over its area
        u, v = torch.where(flip, 1 - u, u), torch.where(flip, 1 - v, v)
        tri = vertices.detach()[faces[face_ids]]
        points = (1 - u - v)[:, None] * tri[:, 0] + u[:, None] * tri[:, 1] + v[:, None] * tri[:, 2]
        rot, center, scale = (t[face_ids] for t in face_frames(vertices.detach(), faces))
        local = ((points - center).unsqueeze(-2) @ rot).squeeze(-2) / scale[:, None]
        like = vertices.detach()
        quats = like.new_zeros(n, 4)
        quats[:, 0] = 1
        return cls(
            local_means=local,
            log_scales=like.new_full((n, 3), math.log(init_scale / math.sqrt(per_face))),
            local_quats=quats,
            opacity_logits=like.new_full((n,), math.log(INIT_OPACITY / (1 - INIT_OPACITY))),
            sh=like.new_zeros(n, (sh_degree + 1) ** 2, channels),
            face_ids=face_ids,
            num_faces=num_faces,
        )

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor], num_faces: int) -> BoundGaussians:
        """Rebuild from `state_dict()` (any N, as densification leaves it): a checkpoint's
        shapes differ from a fresh model's, so load_state_dict into one would fail."""
        tensors = {k: state[k].clone() for k in (*PARAM_NAMES, "face_ids")}
        return cls(**tensors, num_faces=num_faces)

    def __len__(self) -> int:
        return self.face_ids.shape[0]

    @property
    def opacities(self) -> Tensor:
        return torch.sigmoid(self.opacity_logits)

    def optimizer_groups(self, lrs: dict[str, float]) -> list[dict]:
        """One Adam param group per named parameter (the 3DGS layout): [{"name", "params", "lr"}]."""
        return [{"name": k, "params": [getattr(self, k)], "lr": lrs[k]} for k in PARAM_NAMES]

    def per_face_counts(self) -> Tensor:
        """(num_faces,) long: how many Gaussians each face holds."""
        return torch.bincount(self.face_ids, minlength=self.num_faces)

    def world(self, vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """World-space (means, scales, unit quats) for a (..., V, 3) mesh: (..., N, 3),
        (..., N, 3), (..., N, 4). Differentiable in the local parameters and the vertices."""
        if faces.shape[0] != self.num_faces:
            raise ValueError(f"bound to {self.num_faces} faces, got a mesh with {faces.shape[0]}")
        rot, center, scale = face_frames(vertices, faces)
        face_quats = rotmat_to_quat(rot)[..., self.face_ids, :]
        ids = self.face_ids
        rot, center, s = rot[..., ids, :, :], center[..., ids, :], scale[..., ids, None]
        means = (rot @ self.local_means.unsqueeze(-1)).squeeze(-1) * s + center
        scales = torch.exp(self.log_scales) * s
        quats = quat_multiply(face_quats, F.normalize(self.local_quats, dim=-1))
        return means, scales, F.normalize(quats, dim=-1)

    @torch.no_grad()
    def clone(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Append a copy of every masked Gaussian (same face, same parameters; zero optimizer
        state). New rows go at the end. Returns how many were added."""
        mask = self._check_mask(mask)
        extra = {k: getattr(self, k)[mask] for k in PARAM_NAMES}
        self._rebuild(torch.ones_like(mask), extra, self.face_ids[mask], optimizer)
        return int(mask.sum())

    @torch.no_grad()
    def split(
        self,
        mask: Tensor,
        n: int = 2,
        generator: torch.Generator | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> int:
        """Replace every masked Gaussian by n children on its face, their means drawn from the
        parent's own Gaussian (sampled in local coordinates, which map to the world Gaussian
        exactly) and their scales divided by 0.8 n, as in 3DGS; other parameters copied.
        Children go at the end, parents are removed. Returns the number of children."""
        mask = self._check_mask(mask)
        idx = mask.nonzero().squeeze(-1).repeat(n)
        std = torch.exp(self.log_scales[idx])
        device = _gen_device(generator, std)
        noise = torch.randn(idx.shape[0], 3, generator=generator, device=device).to(std)
        offsets = quat_to_rotmat(self.local_quats[idx]) @ (noise * std).unsqueeze(-1)
        extra = {k: getattr(self, k)[idx] for k in PARAM_NAMES}
        extra["local_means"] = extra["local_means"] + offsets.squeeze(-1)
        extra["log_scales"] = extra["log_scales"] - math.log(SPLIT_SHRINK * n)
        self._rebuild(~mask, extra, self.face_ids[idx], optimizer)
        return idx.shape[0]

    @torch.no_grad()
    def prune(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None) -> int:
        """Remove the masked Gaussians, except that a face whose Gaussians are all masked keeps
        its most opaque one (lowest index on ties): an empty face could never be densified
        again. Returns how many masked Gaussians were kept for that reason."""
        mask = self._check_mask(mask)
        survivors = torch.bincount(self.face_ids[~mask], minlength=self.num_faces)
        order = torch.argsort(-self.opacity_logits, stable=True)
        order = order[torch.argsort(self.face_ids[order], stable=True)]
        first = torch.ones_like(order, dtype=torch.bool)
        first[1:] = self.face_ids[order[1:]] != self.face_ids[order[:-1]]
        best = order[first]  # the most opaque Gaussian of each non-empty face
        spared = best[survivors[self.face_ids[best]] == 0]
        mask = mask.clone()
        mask[spared] = False
        empty = {k: getattr(self, k)[:0] for k in PARAM_NAMES}
        self._rebuild(~mask, empty, self.face_ids[:0], optimizer)
        return spared.shape[0]

    def _check_mask(self, mask: Tensor) -> Tensor:
        if mask.dtype != torch.bool or tuple(mask.shape) != (len(self),):
            got = f"{mask.dtype} {tuple(mask.shape)}"
            raise ValueError(f"mask must be bool of shape ({len(self)},), got {got}")
        return mask.to(self.face_ids.device)

    def _rebuild(self, keep: Tensor, extra: dict[str, Tensor], extra_faces: Tensor, optimizer):
        """Rows keep of every parameter followed by the extra rows; the optimizer's per-row
        state follows the same way, with zero rows for the extra ones."""
        for name in PARAM_NAMES:
            old = getattr(self, name)
            new = nn.Parameter(torch.cat((old[keep], extra[name])), requires_grad=old.requires_grad)
            setattr(self, name, new)
            if optimizer is not None:
                _swap_in_optimizer(optimizer, old, new, keep, extra[name].shape[0])
        self.face_ids = torch.cat((self.face_ids[keep], extra_faces))


def _swap_in_optimizer(optimizer, old: Tensor, new: Tensor, keep: Tensor, added: int) -> None:
    for group in optimizer.param_groups:
        for i, param in enumerate(group["params"]):
            if param is old:
                group["params"][i] = new
    state = optimizer.state.pop(old, None)
    if state is None:
        return
    for key, value in state.items():
        if torch.is_tensor(value) and value.shape == old.shape:  # per-row state, not `step`
            zeros = value.new_zeros(added, *value.shape[1:])
            state[key] = torch.cat((value[keep], zeros))
    optimizer.state[new] = state


def _gen_device(generator: torch.Generator | None, like: Tensor) -> torch.device:
    """Sample on the generator's device (a CPU generator stays reproducible for CUDA models)."""
    return generator.device if generator is not None else like.device
