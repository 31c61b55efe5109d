"""The driving head mesh: one interface, per-timestep parameters, and the built-in head.

Every head the avatars bind Gaussians to is a `DrivingHead`: a fixed triangle list
(`faces`, `(F, 3)` long), a region label per face (`face_regions`, `(F,)` long, indices
into `REGIONS`), `num_vertices`, and `vertices(params) -> (T, V, 3)` for a batch of `T`
timesteps, differentiable with respect to every float field of the `HeadParams`.

`HeadParams` uses FLAME's names and the NeRSemble / GaussianAvatars `.npz` layout:

| key | shape | meaning |
|---|---|---|
| `shape` | `(S,)` shared, or `(T, S)` | identity coefficients |
| `expr` | `(T, E)` | expression coefficients |
| `rotation` | `(T, 3)` | global rotation, axis-angle (radians) |
| `neck_pose` | `(T, 3)` | neck joint, axis-angle |
| `jaw_pose` | `(T, 3)` | jaw joint, axis-angle; `+x` opens the mouth |
| `eyes_pose` | `(T, 6)` | left eye then right eye, axis-angle each |
| `translation` | `(T, 3)` | added last, in the mesh's units |

A dataset directory holds `canonical_flame_param.npz` and one `flame_param/{t:05d}.npz` per
timestep (`save_param_dir` / `load_param_dir`); extra keys in such files (FLAME's
`static_offset`, `dynamic_offset`) are ignored on load.

`SyntheticHead` is the built-in head (no licensed files): an ellipsoid from a subdivided
icosahedron with procedural regions, a jaw hinge, eye rotation, expression and shape
blendshapes. `fresnel.avatars.flame.FlameHead` is FLAME behind the same interface.

Coordinates follow FLAME: metres, `+y` up, the face looks along `+z`, the subject's left
is `+x`.
"""

from __future__ import annotations

import io
import math
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fresnel.io import write_bytes
from fresnel.render.primitives import icosphere

# Face region labels: `face_regions[f]` indexes this tuple. "skin" is everything that is
# not one of the three regions the region-adaptive loss weighs (eyes, nose, mouth).
REGIONS = ("skin", "eyes", "nose", "mouth")
REGION_INDEX = {name: i for i, name in enumerate(REGIONS)}

# HeadParams fields in file order, and the width of each per-timestep pose field.
PARAM_KEYS = ("shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
POSE_WIDTHS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
# What the paper fine-tunes per timestep (identity shape stays fixed unless asked for).
TRAINABLE_DEFAULT = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")

CANONICAL_FILE = "canonical_flame_param.npz"
PARAM_DIR = "flame_param"


# --------------------------------------------------------------------------- rotations


def axis_angle_to_matrix(rotvec: Tensor) -> Tensor:
    """Rodrigues: axis-angle `(..., 3)` -> rotation matrix `(..., 3, 3)`.

    Exact identity at zero and finite gradients there (series for small angles), so
    zero-initialised poses can be optimised.
    """
    x, y, z = rotvec.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*rotvec.shape[:-1], 3, 3)
    theta2 = (rotvec * rotvec).sum(-1)
    small = theta2 < 1e-6
    safe2 = torch.where(small, torch.ones_like(theta2), theta2)
    safe = safe2.sqrt()
    a = torch.where(small, 1 - theta2 / 6 + theta2 * theta2 / 120, torch.sin(safe) / safe)
    b = torch.where(small, 0.5 - theta2 / 24 + theta2 * theta2 / 720, (1 - torch.cos(safe)) / safe2)
    eye = torch.eye(3, dtype=rotvec.dtype, device=rotvec.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def rotate_about(points: Tensor, rotation: Tensor, centre: Tensor) -> Tensor:
    """Rotate `(T, V, 3)` points by `(T, 3, 3)` matrices about `(T, 3)` (or `(3,)`) centres.

    Computed as a displacement, `p + (R - I)(p - c)`, so an identity rotation leaves the
    points bit-for-bit unchanged (the rest pose is exact, fixed vertices stay fixed).
    """
    centre = centre.expand(points.shape[0], 3)[:, None, :]
    eye = torch.eye(3, dtype=rotation.dtype, device=rotation.device)
    return points + torch.einsum("tij,tvj->tvi", rotation - eye, points - centre)


# --------------------------------------------------------------------------- parameters


@dataclass(eq=False)
class HeadParams:
    """Per-timestep head parameters with FLAME's names (module docstring: shapes, units)."""

    shape: Tensor
    expr: Tensor
    rotation: Tensor
    neck_pose: Tensor
    jaw_pose: Tensor
    eyes_pose: Tensor
    translation: Tensor

    def __post_init__(self) -> None:
        t = self.expr.shape[0]
        if self.expr.dim() != 2:
            raise ValueError(f"HeadParams.expr must be (T, E), got {tuple(self.expr.shape)}")
        if self.shape.dim() not in (1, 2) or (self.shape.dim() == 2 and self.shape.shape[0] != t):
            raise ValueError(
                f"HeadParams.shape must be (S,) or ({t}, S), got {tuple(self.shape.shape)}"
            )
        for key, width in POSE_WIDTHS.items():
            value = getattr(self, key)
            if tuple(value.shape) != (t, width):
                raise ValueError(
                    f"HeadParams.{key} must be ({t}, {width}), got {tuple(value.shape)}"
                )

    # ---- construction
    @classmethod
    def zeros(
        cls,
        num_timesteps: int,
        num_shape: int,
        num_expr: int,
        *,
        shared_shape: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> HeadParams:
        """All-zero parameters (the rest pose) for `num_timesteps` timesteps."""
        t = num_timesteps

        def z(*size: int) -> Tensor:
            return torch.zeros(*size, device=device, dtype=dtype)

        widths = {k: z(t, w) for k, w in POSE_WIDTHS.items()}
        shape = z(num_shape) if shared_shape else z(t, num_shape)
        return cls(shape=shape, expr=z(t, num_expr), **widths)

    @classmethod
    def from_dict(cls, values: dict, *, dtype: torch.dtype = torch.float32) -> HeadParams:
        """From a mapping of the seven keys to arrays or tensors (other keys ignored)."""
        missing = [k for k in PARAM_KEYS if k not in values]
        if missing:
            raise KeyError(f"head parameters lack {missing} (need {list(PARAM_KEYS)})")
        return cls(**{k: torch.as_tensor(np.asarray(values[k]), dtype=dtype) for k in PARAM_KEYS})

    def as_dict(self) -> dict[str, Tensor]:
        return {k: getattr(self, k) for k in PARAM_KEYS}

    # ---- queries
    @property
    def num_timesteps(self) -> int:
        return self.expr.shape[0]

    def shape_per_timestep(self) -> Tensor:
        """`shape` as `(T, S)` (a shared `(S,)` vector broadcast over timesteps)."""
        if self.shape.dim() == 1:
            return self.shape.expand(self.num_timesteps, -1)
        return self.shape

    # ---- transforms
    def map(self, fn: Callable[[Tensor], Tensor]) -> HeadParams:
        return HeadParams(**{k: fn(v) for k, v in self.as_dict().items()})

    def to(self, device=None, dtype: torch.dtype | None = None) -> HeadParams:
        return self.map(lambda v: v.to(device=device, dtype=dtype))

    def detach(self) -> HeadParams:
        return self.map(lambda v: v.detach())

    def clone(self) -> HeadParams:
        return self.map(lambda v: v.clone())

    def select(self, index: int | slice | Sequence[int] | Tensor) -> HeadParams:
        """The timesteps `index` (int, slice, list or index tensor); a shared shape is kept."""
        if isinstance(index, int):
            index = [index]
        if not isinstance(index, slice):
            index = torch.as_tensor(index, dtype=torch.long, device=self.expr.device)
        out = {}
        for key, value in self.as_dict().items():
            out[key] = value if (key == "shape" and value.dim() == 1) else value[index]
        return HeadParams(**out)

    @staticmethod
    def cat(items: Sequence[HeadParams]) -> HeadParams:
        """Concatenate along time; identical shared shapes stay one shared `(S,)` vector."""
        if not items:
            raise ValueError("HeadParams.cat needs at least one item")
        shared = all(p.shape.dim() == 1 for p in items) and all(
            torch.equal(p.shape, items[0].shape) for p in items
        )
        out = {k: torch.cat([getattr(p, k) for p in items]) for k in PARAM_KEYS[1:]}
        shape = items[0].shape if shared else torch.cat([p.shape_per_timestep() for p in items])
        return HeadParams(shape=shape, **out)

    # ---- optimisation
    def trainable(self, names: Iterable[str] = TRAINABLE_DEFAULT) -> HeadParams:
        """A copy whose fields in `names` are fresh `nn.Parameter`s (the rest detached).

        The paper fine-tunes translation, joint poses and expression per timestep; pass
        `names=PARAM_KEYS` to also fine-tune the identity shape.
        """
        names = set(names)
        unknown = names - set(PARAM_KEYS)
        if unknown:
            raise KeyError(
                f"unknown head parameter(s) {sorted(unknown)}; known: {list(PARAM_KEYS)}"
            )
        return HeadParams(
            **{
                k: nn.Parameter(v.detach().clone()) if k in names else v.detach()
                for k, v in self.as_dict().items()
            }
        )

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """The fields that require gradients, by name (for optimiser parameter groups)."""
        for key, value in self.as_dict().items():
            if value.requires_grad:
                yield key, value

    def parameters(self) -> list[Tensor]:
        return [v for _, v in self.named_parameters()]

    # ---- files
    def to_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().astype(np.float32) for k, v in self.as_dict().items()}

    def save_npz(self, path: str | Path) -> None:
        """Write the seven keys to `path` (float32, deterministic bytes, atomic)."""
        write_bytes(path, npz_bytes(self.to_numpy()))

    @classmethod
    def load_npz(cls, path: str | Path, *, dtype: torch.dtype = torch.float32) -> HeadParams:
        with np.load(path, allow_pickle=False) as data:
            values = {k: data[k] for k in data.files}
        try:
            return cls.from_dict(values, dtype=dtype)
        except (KeyError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed `.npz` (what `np.load` reads) with fixed timestamps: identical
    arrays give identical bytes, so cached pipeline stages see no spurious change."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for key, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue())
    return buffer.getvalue()


def timestep_file(t: int) -> str:
    """The per-timestep file of timestep `t`, relative to the dataset root."""
    return f"{PARAM_DIR}/{t:05d}.npz"


def save_param_dir(
    root: str | Path, params: HeadParams, canonical: HeadParams | None = None
) -> list[str]:
    """Write `root/canonical_flame_param.npz` and `root/flame_param/{t:05d}.npz`.

    `canonical` (one timestep) defaults to the rest pose with `params`' shape. Returns the
    per-timestep paths relative to `root` (what `transforms_*.json` frames refer to).
    """
    root = Path(root)
    if canonical is None:
        shape = params.shape if params.shape.dim() == 1 else params.shape[0]
        canonical = HeadParams.zeros(1, shape.shape[-1], params.expr.shape[1])
        canonical.shape = shape.detach().cpu().float()
    canonical.save_npz(root / CANONICAL_FILE)
    names = []
    for t in range(params.num_timesteps):
        names.append(timestep_file(t))
        params.select(t).save_npz(root / names[-1])
    return names


def load_param_dir(
    root: str | Path, files: Sequence[str] | None = None, *, dtype: torch.dtype = torch.float32
) -> tuple[HeadParams, HeadParams]:
    """Read `(per_timestep, canonical)` from a dataset root.

    `files` are the per-timestep files relative to `root` in timestep order (default: every
    `flame_param/*.npz`, sorted by name).
    """
    root = Path(root)
    if files is None:
        files = sorted(str(p.relative_to(root)) for p in (root / PARAM_DIR).glob("*.npz"))
    if not files:
        raise FileNotFoundError(f"no per-timestep head parameters under {root / PARAM_DIR}")
    per_step = HeadParams.cat([HeadParams.load_npz(root / f, dtype=dtype) for f in files])
    return per_step, HeadParams.load_npz(root / CANONICAL_FILE, dtype=dtype)


# --------------------------------------------------------------------------- interface


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


# --------------------------------------------------------------------------- synthetic head


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
