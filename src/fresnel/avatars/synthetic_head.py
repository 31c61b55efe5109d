"""The built-in driving head (no licensed files): an ellipsoid from a subdivided icosahedron
with procedural regions, a jaw hinge, eye rotation, expression and shape blendshapes."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from fresnel.avatars.head import REGION_INDEX, DrivingHead, rotate_about
from fresnel.avatars.head_params import HeadParams
from fresnel.render.primitives import icosphere
from fresnel.render.projection import axis_angle_to_matrix


def _direction(yaw: float, pitch: float) -> np.ndarray:
    """Unit vector at `yaw` (towards +x) and `pitch` (towards +y) from the face axis +z."""
    return np.array(
        [math.cos(pitch) * math.sin(yaw), math.sin(pitch), math.cos(pitch) * math.cos(yaw)]
    )


def _angle(dirs: np.ndarray, centre: np.ndarray) -> np.ndarray:
    return np.arccos(np.clip(dirs @ centre, -1.0, 1.0))


def _smooth01(t: np.ndarray) -> np.ndarray:
    """0 for t <= 0, 1 for t >= 1, C1 smoothstep between."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3 - 2 * t)


# Vertex parts of the synthetic head (finer than REGIONS: the two eyes rotate separately).
_SKIN, _LEFT_EYE, _RIGHT_EYE, _NOSE, _MOUTH = range(5)
_PART_REGION = np.array([REGION_INDEX[r] for r in ("skin", "eyes", "eyes", "nose", "mouth")])


class SyntheticHead(DrivingHead):
    """A procedural parametric head, built in (no licensed files), deterministic.

    Geometry: the unit icosphere of `level` (3: 642 vertices, 1280 faces) scaled to an
    ellipsoid with semi-axes `axes` (metres: half width, half height, half depth); the
    nose is a smooth radial bump, so every vertex off the nose lies exactly on the
    ellipsoid at rest. Regions are patches of directions on the front of the head: two
    eyes (yaw +-0.45 rad, pitch 0.14, radius 0.2 rad; the left eye is at +x), the nose
    (pitch -0.02, radius 0.22) and the mouth (an ellipse of half-widths 0.45 yaw by 0.16
    pitch around pitch -0.42). A face takes the region of its centroid's direction.

    Parameters, applied in this order per timestep:
    - `shape` (3): width, height, depth; scales the rest mesh (and its joints) by
      `1 + shape` along x, y, z (linear blendshapes);
    - `expr` (4, `EXPRESSIONS`): smile, brow raise, mouth open, cheek puff; linear
      procedural displacement fields of about 1 cm per unit;
    - `jaw_pose`: vertices below the mouth line on the front rotate about the jaw hinge
      (behind the mouth, at mid height) with a smooth weight (`jaw_weights`: 0 above the
      line and at the back, 1 well below it); `+x` opens the mouth;
    - `eyes_pose`: each eye patch rotates rigidly about its eyeball centre (`eye_centres`,
      an eyeball radius behind the surface);
    - `neck_pose`: everything rotates about the neck joint (below the head);
    - `rotation` about the origin, then `translation`.
    """

    EXPRESSIONS = ("smile", "brow_raise", "mouth_open", "cheek_puff")
    SHAPES = ("width", "height", "depth")
    num_shape = 3
    num_expr = 4

    def __init__(
        self,
        level: int = 3,
        axes: tuple[float, float, float] = (0.075, 0.1, 0.09),
        nose_height: float = 0.25,
        eyeball_radius: float = 0.015,
    ) -> None:
        super().__init__()
        dirs, faces = icosphere(level)
        axes_np = np.asarray(axes, dtype=np.float64)
        self.axes = tuple(float(a) for a in axes)

        # Regions, on directions (independent of the ellipsoid's proportions).
        parts = self._parts(dirs)
        cdirs = dirs[faces].mean(1)
        cdirs /= np.linalg.norm(cdirs, axis=1, keepdims=True)
        face_parts = self._parts(cdirs)

        nose_angle = _angle(dirs, _direction(0.0, -0.02))
        bump = np.where(nose_angle < 0.22, np.cos(0.5 * math.pi * nose_angle / 0.22) ** 2, 0.0)
        rest = dirs * axes_np * (1 + nose_height * bump)[:, None]

        # Joints (rest frame); shape scales them like the vertices.
        eye_dirs = [_direction(0.45, 0.14), _direction(-0.45, 0.14)]
        eye_centres = []
        for d in eye_dirs:
            surface = d * axes_np
            normal = surface / axes_np**2
            eye_centres.append(surface - eyeball_radius * normal / np.linalg.norm(normal))
        hinge = np.array([0.0, -0.01 * axes_np[1] / 0.1, -0.2 * axes_np[2]])
        neck = np.array([0.0, -0.9 * axes_np[1], -0.2 * axes_np[2]])

        # Jaw weights: below the mouth line (pitch -0.42) and on the front half.
        jaw = _smooth01((math.sin(-0.42) - dirs[:, 1]) / 0.15) * _smooth01(dirs[:, 2] / 0.35)

        f32 = torch.float32
        self.register_buffer("faces", torch.as_tensor(faces, dtype=torch.long))
        self.register_buffer("face_regions", torch.as_tensor(_PART_REGION[face_parts]))
        self.register_buffer("vertex_parts", torch.as_tensor(parts, dtype=torch.long))
        self.register_buffer("vertex_regions", torch.as_tensor(_PART_REGION[parts]))
        self.register_buffer("rest", torch.as_tensor(rest, dtype=f32))
        self.register_buffer(
            "expr_dirs", torch.as_tensor(self._expressions(dirs, rest, axes_np), dtype=f32)
        )
        self.register_buffer("jaw_weights", torch.as_tensor(jaw, dtype=f32))
        self.register_buffer(
            "eye_masks",
            torch.as_tensor(np.stack([parts == _LEFT_EYE, parts == _RIGHT_EYE]), dtype=f32),
        )
        self.register_buffer("eye_centres", torch.as_tensor(np.stack(eye_centres), dtype=f32))
        self.register_buffer("hinge", torch.as_tensor(hinge, dtype=f32))
        self.register_buffer("neck", torch.as_tensor(neck, dtype=f32))

    @property
    def num_vertices(self) -> int:
        return self.rest.shape[0]

    @staticmethod
    def _parts(dirs: np.ndarray) -> np.ndarray:
        parts = np.full(len(dirs), _SKIN, dtype=np.int64)
        yaw = np.arctan2(dirs[:, 0], dirs[:, 2])
        pitch = np.arcsin(np.clip(dirs[:, 1], -1, 1))
        mouth = ((yaw / 0.45) ** 2 + ((pitch + 0.42) / 0.16) ** 2 < 1) & (dirs[:, 2] > 0)
        parts[mouth] = _MOUTH
        parts[_angle(dirs, _direction(0.0, -0.02)) < 0.22] = _NOSE
        parts[_angle(dirs, _direction(0.45, 0.14)) < 0.2] = _LEFT_EYE
        parts[_angle(dirs, _direction(-0.45, 0.14)) < 0.2] = _RIGHT_EYE
        return parts

    @staticmethod
    def _expressions(dirs: np.ndarray, rest: np.ndarray, axes: np.ndarray) -> np.ndarray:
        """`(4, V, 3)` displacement fields (metres per unit coefficient)."""

        def blob(yaw: float, pitch: float, sigma: float) -> np.ndarray:
            g = np.exp(-0.5 * (_angle(dirs, _direction(yaw, pitch)) / sigma) ** 2)
            return np.where(g > 1e-3, g, 0.0)[:, None]  # local support

        normals = rest / axes**2
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        up, back = np.array([0.0, 1.0, 0.0]), np.array([0.0, 0.0, -1.0])
        smile = sum(
            blob(side * 0.38, -0.42, 0.13) * (0.4 * side * np.array([1.0, 0, 0]) + up + 0.4 * back)
            for side in (1, -1)
        )
        brow = sum(blob(side * 0.45, 0.42, 0.18) * up for side in (1, -1))
        mouth_open = blob(0.0, -0.55, 0.12) * -up + 0.3 * blob(0.0, -0.3, 0.08) * up
        puff = sum(blob(side * 0.75, -0.3, 0.22) for side in (1, -1)) * normals
        return 0.01 * np.stack([smile, brow, mouth_open, puff])

    def vertices(self, params: HeadParams) -> Tensor:
        t = params.num_timesteps
        scale = 1 + params.shape_per_timestep()  # (T, 3)
        v = self.rest * scale[:, None, :] + torch.einsum("te,evc->tvc", params.expr, self.expr_dirs)

        jaw = rotate_about(v, axis_angle_to_matrix(params.jaw_pose), self.hinge * scale)
        v = v + self.jaw_weights[None, :, None] * (jaw - v)

        eye_rot = axis_angle_to_matrix(params.eyes_pose.reshape(t, 2, 3))
        for e in range(2):
            rotated = rotate_about(v, eye_rot[:, e], self.eye_centres[e] * scale)
            v = v + self.eye_masks[e][None, :, None] * (rotated - v)

        v = rotate_about(v, axis_angle_to_matrix(params.neck_pose), self.neck * scale)
        v = rotate_about(v, axis_angle_to_matrix(params.rotation), torch.zeros_like(self.neck))
        return v + params.translation[:, None, :]
