"""Per-timestep head parameters (`HeadParams`) and their files: FLAME's names and the
NeRSemble / GaussianAvatars `.npz` layout.

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
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from fresnel.io import write_bytes

# HeadParams fields in file order, and the width of each per-timestep pose field.
PARAM_KEYS = ("shape", "expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")
POSE_WIDTHS = {"rotation": 3, "neck_pose": 3, "jaw_pose": 3, "eyes_pose": 6, "translation": 3}
# What the paper fine-tunes per timestep (identity shape stays fixed unless asked for).
TRAINABLE_DEFAULT = ("expr", "rotation", "neck_pose", "jaw_pose", "eyes_pose", "translation")

CANONICAL_FILE = "canonical_flame_param.npz"
PARAM_DIR = "flame_param"


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

    def save_npz(self, path: str | Path, num_vertices: int | None = None) -> None:
        """Write the seven keys to `path` (float32, deterministic bytes, atomic). With the
        mesh's `num_vertices`, also GaussianAvatars' `static_offset` (1, V, 3) and
        `dynamic_offset` (T, V, 3), which its `select_mesh_by_timestep` reads: zeros, the
        offsets this package's heads are posed with."""
        arrays = self.to_numpy()
        if num_vertices is not None:
            steps = self.expr.shape[0]
            arrays["static_offset"] = np.zeros((1, num_vertices, 3), np.float32)
            arrays["dynamic_offset"] = np.zeros((steps, num_vertices, 3), np.float32)
        write_bytes(path, npz_bytes(arrays))

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
