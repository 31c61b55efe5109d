"""The driving head mesh: the interface the avatars bind Gaussians to.

Every head is a `DrivingHead`: a fixed triangle list (`faces`, `(F, 3)` long), a region label
per face (`face_regions`, `(F,)` long, indices into `REGIONS`), `num_vertices`, and
`vertices(params) -> (T, V, 3)` for a batch of `T` timesteps of `HeadParams`
(fresnel.avatars.head_params), differentiable with respect to every float field.
`fresnel.avatars.synthetic_head.SyntheticHead` is the built-in head (no licensed files) and
`fresnel.avatars.flame.FlameHead` is FLAME behind the same interface.

Coordinates follow FLAME: metres, `+y` up, the face looks along `+z`, the subject's left
is `+x`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor, nn

from fresnel.avatars.head_params import HeadParams

# Face region labels: `face_regions[f]` indexes this tuple. "skin" is everything that is
# not one of the three regions the region-adaptive loss weighs (eyes, nose, mouth).
REGIONS = ("skin", "eyes", "nose", "mouth")
REGION_INDEX = {name: i for i, name in enumerate(REGIONS)}


def rotate_about(points: Tensor, rotation: Tensor, centre: Tensor) -> Tensor:
    """Rotate `(T, V, 3)` points by `(T, 3, 3)` matrices about `(T, 3)` (or `(3,)`) centres.

    Computed as a displacement, `p + (R - I)(p - c)`, so an identity rotation leaves the
    points bit-for-bit unchanged (the rest pose is exact, fixed vertices stay fixed).
    """
    centre = centre.expand(points.shape[0], 3)[:, None, :]
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    return points + torch.einsum("tij,tvj->tvi", rotation - eye, points - centre)


class DrivingHead(nn.Module, ABC):
    """A head mesh driven by `HeadParams`; what Gaussians are bound to.

    Subclasses register the buffers `faces` (`(F, 3)` long, counter-clockwise seen from
    outside) and `face_regions` (`(F,)` long, indices into `REGIONS`), set `num_shape` and
    `num_expr`, and implement `vertices`.
    """

    REGIONS = REGIONS
    faces: Tensor
    face_regions: Tensor
    num_shape: int
    num_expr: int

    @property
    @abstractmethod
    def num_vertices(self) -> int: ...

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @abstractmethod
    def vertices(self, params: HeadParams) -> Tensor:
        """`(T, V, 3)` posed vertices, differentiable w.r.t. every float field of `params`."""

    def forward(self, params: HeadParams) -> Tensor:
        return self.vertices(params)

    def zero_params(self, num_timesteps: int = 1, **kwargs) -> HeadParams:
        """The rest pose for `num_timesteps` timesteps, on this head's device and dtype."""
        kwargs.setdefault("device", self.faces.device)
        floats = [b for b in self.buffers() if b.is_floating_point()]
        if floats:
            kwargs.setdefault("dtype", floats[0].dtype)
        return HeadParams.zeros(num_timesteps, self.num_shape, self.num_expr, **kwargs)

    def rest_vertices(self) -> Tensor:
        """`(V, 3)` vertices at zero parameters."""
        return self.vertices(self.zero_params(1))[0]

    def region_mask(self, name: str) -> Tensor:
        """`(F,)` bool: the faces labelled `name` (one of `REGIONS`)."""
        return self.face_regions == REGION_INDEX[name]
