"""FLAME (Li et al. 2017) behind the `DrivingHead` interface, from the user's licensed files.

FLAME cannot ship with this project: register and download it at
https://flame.is.tue.mpg.de, then give the path of the model (`generic_model.pkl` of FLAME
2020 or `flame2023.pkl`) in params (`avatars.train.flame_model_path`; the flag
`--flame_model_path`).

The official `.pkl` is a Python 2 pickle of a dict of arrays. It is read by
`read_model_pickle`, a restricted unpickler: `find_class` answers only from a fixed table,
so a file that names any other global is refused (with the file and the global in the
message) before anything in it runs. What a FLAME file needs, and what the table holds:

- numpy arrays and scalars: `numpy.core.multiarray._reconstruct` / `scalar`, `numpy.ndarray`,
  `numpy.dtype` (and their `numpy._core` spellings from numpy 2; `numeric._frombuffer` for
  files re-saved with pickle protocol 5);
- `scipy.sparse` csc / csr matrices (`J_regressor`, under their old and new module paths):
  read into a stub and densified with numpy, scipy is never imported;
- chumpy wrappers (`chumpy.ch.Ch`, whose array is its `x` attribute, and
  `chumpy.reordering.Select`, a gather of another wrapper): read into stubs that yield the
  array, chumpy is never imported;
- `builtins.set` / `frozenset` (inside chumpy's pickled state), `copyreg._reconstructor`
  with `builtins.object` (objects in protocol 0/1 files; it builds only the stubs above),
  all also under their Python 2 names `__builtin__` / `copy_reg`; `_codecs.encode` (bytes
  in protocol 0-2 files written by Python 3; latin-1 only).

Model keys used: `v_template (V, 3)`, `f (F, 3)`, `shapedirs (V, 3, 300 + 100)` (300
identity then 100 expression directions), `posedirs (V, 3, 36)`, `J_regressor (5, V)`,
`kintree_table (2, 5)`, `weights (V, 5)`. Linear blend skinning over FLAME's five joints
(global, neck, jaw, left eye, right eye) with pose-corrective blendshapes, then
`translation`: the parameter convention of FLAME and of the GaussianAvatars data.

Regions: FLAME has no region labels of its own. When the user gives FLAME's masks file
(`FLAME_masks.pkl`, a dict of vertex-index arrays, read by the same restricted unpickler),
faces whose three vertices lie in the `eye_region` / `left_eyeball` / `right_eyeball`,
`nose`, or `lips` masks are "eyes", "nose", "mouth" (in that precedence); without it every
face is "skin".
"""

from __future__ import annotations

import codecs
import copyreg
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from fresnel.avatars.head import REGION_INDEX, DrivingHead
from fresnel.avatars.head_params import HeadParams
from fresnel.render.projection import axis_angle_to_matrix

REGISTRATION_URL = "https://flame.is.tue.mpg.de"
MODEL_KEY = "avatars.train.flame_model_path or --flame_model_path"
MASKS_KEY = "avatars.train.flame_masks_path or --flame_masks_path"
NUM_JOINTS = 5  # global, neck, jaw, left eye, right eye
# FLAME_masks.pkl mask names -> region, in precedence order.
MASK_REGIONS = (
    ("eyes", ("eye_region", "left_eyeball", "right_eyeball")),
    ("nose", ("nose",)),
    ("mouth", ("lips",)),
)


# --------------------------------------------------------------------------- restricted pickle


class _Stub:
    """Holds the pickled state of an object whose class is not imported."""

    def __setstate__(self, state) -> None:
        self.__dict__["state"] = state


class _ChStub(_Stub):
    """`chumpy.ch.Ch`: the state is its `__dict__`; the array is `x`."""


class _SelectStub(_Stub):
    """`chumpy.reordering.Select`: `a.ravel()[idxs].reshape(preferred_shape)`."""


class _SparseStub(_Stub):
    """A scipy csc / csr matrix: state `{data, indices, indptr, _shape (or shape), ...}`."""

    format = "csc"


class _CsrStub(_SparseStub):
    format = "csr"


_STUBS = (_ChStub, _SelectStub, _SparseStub, _CsrStub)


def _numpy_global(module: str, name: str):
    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    return getattr(getattr(core, module), name)


def _reconstructor(cls, base, state):
    """`copyreg._reconstructor`, only for the stubs (protocol 0/1 object pickles)."""
    if cls not in _STUBS or base is not object or state is not None:
        raise pickle.UnpicklingError(f"refusing copyreg._reconstructor({cls!r}, {base!r})")
    return copyreg._reconstructor(cls, base, state)


_LATIN1 = {"latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1"}


def _latin1_encode(text, encoding="latin1"):
    if str(encoding).lower().replace("_", "-") not in _LATIN1:
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _allowed() -> dict[tuple[str, str], object]:
    table: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "object"): object,  # the `base` argument of _reconstructor
        ("copyreg", "_reconstructor"): _reconstructor,
        # Python 2 spellings (this find_class sees names before pickle's fix_imports)
        ("__builtin__", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("__builtin__", "object"): object,
        ("copy_reg", "_reconstructor"): _reconstructor,
        ("_codecs", "encode"): _latin1_encode,
        ("chumpy.ch", "Ch"): _ChStub,
        ("chumpy", "Ch"): _ChStub,
        ("chumpy.reordering", "Select"): _SelectStub,
    }
    for prefix in ("numpy.core", "numpy._core"):
        table[(f"{prefix}.multiarray", "_reconstruct")] = _numpy_global(
            "multiarray", "_reconstruct"
        )
        table[(f"{prefix}.multiarray", "scalar")] = _numpy_global("multiarray", "scalar")
        table[(f"{prefix}.numeric", "_frombuffer")] = _numpy_global("numeric", "_frombuffer")
    for module in ("scipy.sparse", "scipy.sparse.csc", "scipy.sparse._csc"):
        table[(module, "csc_matrix")] = _SparseStub
    for module in ("scipy.sparse", "scipy.sparse.csr", "scipy.sparse._csr"):
        table[(module, "csr_matrix")] = _CsrStub
    return table


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only the globals a FLAME model or masks file needs (module docstring)."""

    ALLOWED = _allowed()

    def __init__(self, file, source: str) -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str):
        found = self.ALLOWED.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"{self.source}: refusing to load global {module}.{name}: a FLAME file holds "
                "only numpy arrays (and scipy sparse / chumpy wrappers of them); this pickle "
                "asks for something else and was not loaded"
            )
        return found


def _resolve(value, source: str):
    """Replace stubs by numpy arrays, recursively through dicts, lists and tuples."""
    if isinstance(value, dict):
        return {k: _resolve(v, source) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, source) for v in value)
    if not isinstance(value, _Stub):
        return value
    state = value.__dict__.get("state")
    if isinstance(state, tuple) and len(state) == 2 and isinstance(state[1], dict):
        state = state[1]  # (instance dict, slots dict) form
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"{source}: unexpected state for {type(value).__name__}")
    try:
        if isinstance(value, _ChStub):
            return np.asarray(_resolve(state["x"], source))
        if isinstance(value, _SelectStub):
            base = np.asarray(_resolve(state["a"], source)).ravel()
            out = base[np.asarray(state["idxs"])]
            shape = state.get("preferred_shape")
            return out.reshape(tuple(shape)) if shape is not None else out
        shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
        data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
    except (KeyError, TypeError) as err:
        raise pickle.UnpicklingError(
            f"{source}: {type(value).__name__} without the expected field {err}"
        ) from None
    major = shape[1] if value.format == "csc" else shape[0]
    dense = np.zeros(shape, dtype=data.dtype)
    for i in range(major):
        lo, hi = indptr[i], indptr[i + 1]
        if value.format == "csc":
            dense[indices[lo:hi], i] += data[lo:hi]
        else:
            dense[i, indices[lo:hi]] += data[lo:hi]
    return dense


def read_model_pickle(path: str | Path) -> dict:
    """Load a FLAME model or masks `.pkl` with `RestrictedUnpickler`; stubs become arrays."""
    with open(path, "rb") as handle:
        data = RestrictedUnpickler(handle, str(path)).load()
    if not isinstance(data, dict):
        raise pickle.UnpicklingError(f"{path}: expected a dict, got {type(data).__name__}")
    return _resolve(data, str(path))


def _require(path: str | Path | None, what: str, key: str) -> Path:
    if path is None or not Path(path).is_file():
        raise FileNotFoundError(
            f"FLAME {what} not found: {path} (params key `{key}`); "
            f"register and download FLAME at {REGISTRATION_URL}"
        )
    return Path(path)


# --------------------------------------------------------------------------- the head


class FlameHead(DrivingHead):
    """FLAME from the official `.pkl` (`model_path`), optional masks for regions.

    `num_shape` <= 300 and `num_expr` <= 100 select the leading identity and expression
    directions (GaussianAvatars uses 300 / 100); `expr_start` is where the expression
    directions start in `shapedirs` (300 in FLAME 2020 and 2023). `model_key` /
    `masks_key` are the params keys named in the error when a file is missing.
    """

    def __init__(
        self,
        model_path: str | Path | None,
        *,
        masks_path: str | Path | None = None,
        num_shape: int = 300,
        num_expr: int = 100,
        expr_start: int = 300,
        model_key: str = MODEL_KEY,
        masks_key: str = MASKS_KEY,
    ) -> None:
        super().__init__()
        path = _require(model_path, "model file", model_key)
        model = read_model_pickle(path)
        need = (
            "v_template",
            "f",
            "shapedirs",
            "posedirs",
            "J_regressor",
            "kintree_table",
            "weights",
        )
        missing = [k for k in need if k not in model]
        if missing:
            raise ValueError(f"{path}: not a FLAME model, keys {missing} are missing")

        def arr(key: str, dtype=np.float32) -> np.ndarray:
            return np.asarray(model[key]).astype(dtype)

        v_template = arr("v_template")
        shapedirs = arr("shapedirs")
        num_vertices = v_template.shape[0]
        if num_shape > expr_start or expr_start + num_expr > shapedirs.shape[2]:
            raise ValueError(
                f"{path}: shapedirs has {shapedirs.shape[2]} directions; cannot take "
                f"{num_shape} shape + {num_expr} expression (expression from {expr_start})"
            )
        parents = arr("kintree_table", np.int64)[0].copy()
        parents[0] = -1  # the root's parent is stored as 2**32 - 1
        if len(parents) != NUM_JOINTS or any(parents[i] >= i for i in range(1, len(parents))):
            raise ValueError(f"{path}: expected {NUM_JOINTS} joints in parent order, got {parents}")
        posedirs = arr("posedirs").reshape(num_vertices * 3, -1).T  # (36, V*3)

        self.num_shape, self.num_expr = num_shape, num_expr
        self.parents = [int(p) for p in parents]
        f32 = torch.float32
        self.register_buffer("faces", torch.as_tensor(arr("f", np.int64)))
        self.register_buffer("v_template", torch.as_tensor(v_template))
        self.register_buffer("shapedirs", torch.as_tensor(shapedirs[:, :, :num_shape].copy()))
        self.register_buffer(
            "exprdirs", torch.as_tensor(shapedirs[:, :, expr_start : expr_start + num_expr].copy())
        )
        self.register_buffer("posedirs", torch.as_tensor(np.ascontiguousarray(posedirs)))
        self.register_buffer("J_regressor", torch.as_tensor(arr("J_regressor"), dtype=f32))
        self.register_buffer("lbs_weights", torch.as_tensor(arr("weights")))
        self.register_buffer("face_regions", self._regions(masks_path, masks_key))

    def _regions(self, masks_path, masks_key: str) -> Tensor:
        regions = torch.zeros(self.faces.shape[0], dtype=torch.long)
        if masks_path is None:
            return regions
        masks = read_model_pickle(_require(masks_path, "masks file", masks_key))
        for name, keys in reversed(MASK_REGIONS):  # later writes win: eyes > nose > mouth
            inside = torch.zeros(self.num_vertices, dtype=torch.bool)
            for key in keys:
                if key in masks:
                    inside[torch.as_tensor(np.asarray(masks[key], dtype=np.int64))] = True
            regions[inside[self.faces].all(1)] = REGION_INDEX[name]
        return regions

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def vertices(self, params: HeadParams) -> Tensor:
        t = params.num_timesteps
        v = (
            self.v_template
            + torch.einsum("vck,tk->tvc", self.shapedirs, params.shape_per_timestep())
            + torch.einsum("vck,tk->tvc", self.exprdirs, params.expr)
        )
        joints = torch.einsum("jv,tvc->tjc", self.J_regressor, v)  # (T, 5, 3)
        pose = torch.stack(
            [
                params.rotation,
                params.neck_pose,
                params.jaw_pose,
                params.eyes_pose[:, :3],
                params.eyes_pose[:, 3:],
            ],
            1,
        )
        rot = axis_angle_to_matrix(pose)  # (T, 5, 3, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        corrective = (rot[:, 1:] - eye).reshape(t, -1) @ self.posedirs
        v = v + corrective.reshape(t, -1, 3)

        # Forward kinematics: world rotation and translation of each joint.
        world_r: list[Tensor] = []
        world_t: list[Tensor] = []
        for j, parent in enumerate(self.parents):
            if parent < 0:
                world_r.append(rot[:, j])
                world_t.append(joints[:, j])
            else:
                offset = (joints[:, j] - joints[:, parent])[..., None]
                world_r.append(world_r[parent] @ rot[:, j])
                world_t.append((world_r[parent] @ offset)[..., 0] + world_t[parent])
        r = torch.stack(world_r, 1)  # (T, 5, 3, 3)
        # Skinning transforms relative to the rest pose: x -> R x + (t - R J).
        shift = torch.stack(world_t, 1) - torch.einsum("tjab,tjb->tja", r, joints)
        blend_r = torch.einsum("vj,tjab->tvab", self.lbs_weights, r)
        blend_t = torch.einsum("vj,tja->tva", self.lbs_weights, shift)
        posed = torch.einsum("tvab,tvb->tva", blend_r, v) + blend_t
        return posed + params.translation[:, None, :]
