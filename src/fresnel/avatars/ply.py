"""GaussianAvatars point clouds: `point_cloud/iteration_N/point_cloud.ply`, upstream's format.

As GaussianAvatars' `GaussianModel.save_ply` writes it (ShenhanQian/GaussianAvatars,
scene/gaussian_model.py): one binary little-endian `element vertex`, every property a float,
in the order x y z, nx ny nz (zeros), f_dc_*, f_rest_* (per channel, all higher-order
coefficients), opacity (logit), scale_0..2 (log), rot_0..3 (w first, unnormalised),
binding_0 (each Gaussian's face id, as a float). The values are the *local* (face-frame)
parameters of `BoundGaussians`, in GaussianAvatars' face frame (`binding.face_frames`), so
upstream's `load_ply` (its `local_viewer.py --point_path`) places them as this package does.
The file does not hold the mesh's face count: `load_ply` takes it from the caller.

Files this package wrote before it adopted upstream's layout (an int `binding` column, a
`comment num_faces F` line, a face frame with the normal as local z) still load: their local
parameters are carried into the current frame, so they render as they were trained.

The header is parsed here (numpy structured dtype + frombuffer) rather than with plyfile, to
keep the dependency list short.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import torch

from fresnel.avatars.binding import BoundGaussians
from fresnel.io import atomic_path
from fresnel.render.projection import quat_multiply

END_HEADER = b"end_header\n"
FORMAT_LINE = "format binary_little_endian 1.0"
# PLY scalar type names (both spellings) -> little-endian numpy codes.
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip
MAX_HEADER_BYTES = 1 << 16


class PlyError(ValueError):
    """A file that is not a GaussianAvatars PLY (the message names it and what is wrong)."""


# The legacy frame (e, n x e, n) is GaussianAvatars' (e, n, e x n) turned by +90 degrees about
# local x; its local parameters come into the current frame by the inverse turn.
LEGACY_TO_CURRENT = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
LEGACY_TO_CURRENT_QUAT = torch.tensor([math.sqrt(0.5), -math.sqrt(0.5), 0.0, 0.0])


def property_names(channels: int, rest: int) -> list[str]:
    """Column names for C channels and `rest` = C (K - 1) higher-order SH coefficients."""
    return [
        *("x", "y", "z", "nx", "ny", "nz"),
        *(f"f_dc_{i}" for i in range(channels)),
        *(f"f_rest_{i}" for i in range(rest)),
        "opacity",
        *(f"scale_{i}" for i in range(3)),
        *(f"rot_{i}" for i in range(4)),
        "binding_0",
    ]


def save_ply(path: str | os.PathLike, gaussians: BoundGaussians) -> Path:
    """Write `gaussians` as a binary little-endian 3DGS PLY (atomically); returns the path."""
    columns = _columns(gaussians)
    table = np.empty(len(gaussians), dtype=[(name, col.dtype) for name, col in columns.items()])
    for name, col in columns.items():
        table[name] = col
    header = _header(table.dtype, len(table))
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(header + table.tobytes())
    return path


def load_ply(path: str | os.PathLike, num_faces: int | None = None) -> BoundGaussians:
    """Read a GaussianAvatars PLY (upstream's or `save_ply`'s) bound to a mesh of `num_faces`
    triangles (None: only a legacy file, which names its face count, may omit it).

    Raises PlyError naming the file and what is wrong when it is not such a PLY."""
    path = Path(path)
    data = path.read_bytes()
    count, dtype, legacy_faces = _parse_header(path, data)
    body = data[data.index(END_HEADER) + len(END_HEADER) :]
    if len(body) < count * dtype.itemsize:
        raise PlyError(
            f"{path}: truncated: {len(body)} data bytes, need {count * dtype.itemsize} "
            f"for {count} vertices"
        )
    table = np.frombuffer(body, dtype=dtype, count=count)
    bad = [name for name in dtype.names if not np.isfinite(table[name]).all()]
    if bad:
        raise PlyError(f"{path}: NaN or infinite values in {', '.join(bad[:6])}")
    num_faces = num_faces if num_faces is not None else legacy_faces
    if num_faces is None:
        raise PlyError(f"{path}: the mesh's face count is needed to bind it (num_faces)")
    gaussians = _gaussians(path, table, num_faces)
    return _from_legacy_frame(gaussians) if "binding" in dtype.names else gaussians


def _from_legacy_frame(gaussians: BoundGaussians) -> BoundGaussians:
    """The same world Gaussians with local parameters in the current face frame."""
    with torch.no_grad():
        gaussians.local_means.copy_(gaussians.local_means @ LEGACY_TO_CURRENT.T)
        turn = LEGACY_TO_CURRENT_QUAT.expand_as(gaussians.local_quats)
        gaussians.local_quats.copy_(quat_multiply(turn, gaussians.local_quats))
    return gaussians


def _columns(gaussians: BoundGaussians) -> dict[str, np.ndarray]:
    def f32(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().cpu().to(torch.float32).numpy()

    n = len(gaussians)
    sh = gaussians.sh.detach()
    rest = sh[:, 1:, :].transpose(1, 2).reshape(n, sh.shape[2] * (sh.shape[1] - 1))
    blocks = (
        f32(gaussians.local_means),
        np.zeros((n, 3), np.float32),
        f32(sh[:, 0, :]),
        f32(rest),
        f32(gaussians.opacity_logits)[:, None],
        f32(gaussians.log_scales),
        f32(gaussians.local_quats),
    )
    floats = np.concatenate(blocks, axis=1)
    names = property_names(sh.shape[2], rest.shape[1])
    columns = {name: floats[:, i].astype("<f4") for i, name in enumerate(names[:-1])}
    columns["binding_0"] = gaussians.face_ids.detach().cpu().numpy().astype("<f4")
    return columns


def _header(dtype: np.dtype, count: int) -> bytes:
    lines = ["ply", FORMAT_LINE, f"element vertex {count}"]
    lines += [f"property float {name}" for name in dtype.names]
    return ("\n".join(lines) + "\n").encode("ascii") + END_HEADER


def _parse_header(path: Path, data: bytes) -> tuple[int, np.dtype, int | None]:
    """(vertex count, structured dtype of a vertex row, a legacy file's num_faces comment)."""
    end = data.find(END_HEADER, 0, MAX_HEADER_BYTES)
    if not data.startswith(b"ply\n") or end < 0:
        raise PlyError(f"{path}: not a PLY file (missing 'ply' magic or 'end_header')")
    lines = data[:end].decode("ascii", errors="replace").splitlines()[1:]
    if FORMAT_LINE not in lines:
        raise PlyError(f"{path}: missing '{FORMAT_LINE}' in the PLY header")
    count, fields, num_faces = None, [], None
    for line in lines:
        words = line.split()
        if words[:2] == ["comment", "num_faces"]:
            num_faces = _header_int(path, line)
        elif words[:1] == ["element"]:
            if count is not None or words[1:2] != ["vertex"]:
                raise PlyError(f"{path}: expected a single 'element vertex', got '{line}'")
            count = _header_int(path, line)
        elif words[:1] == ["property"]:
            fields.append(_field(path, words))
    if count is None:
        raise PlyError(f"{path}: missing 'element vertex N' in the PLY header")
    try:
        dtype = np.dtype(fields)
    except ValueError as exc:  # e.g. a property named twice
        raise PlyError(f"{path}: bad PLY properties: {exc}") from None
    return count, dtype, num_faces


def _header_int(path: Path, line: str) -> int:
    """The count that ends a header line such as 'element vertex 12'."""
    words = line.split()
    if len(words) != 3 or not words[2].isdigit():
        raise PlyError(f"{path}: malformed PLY header line '{line}'")
    return int(words[2])


def _field(path: Path, words: list[str]) -> tuple[str, str]:
    if len(words) != 3 or words[1] not in PLY_TYPES:
        raise PlyError(f"{path}: unsupported PLY property '{' '.join(words)}'")
    return words[2], "<" + PLY_TYPES[words[1]]


def _gaussians(path: Path, table: np.ndarray, num_faces: int) -> BoundGaussians:
    channels, k = _sh_layout(path, set(table.dtype.names))
    binding = _binding(path, table)
    if len(binding) and not (binding.min() >= 0 and binding.max() < num_faces):
        raise PlyError(f"{path}: binding outside 0..{num_faces - 1} (num_faces {num_faces})")
    n = len(table)
    dc = _stack(table, [f"f_dc_{i}" for i in range(channels)]).reshape(n, 1, channels)
    rest = _stack(table, [f"f_rest_{i}" for i in range(channels * (k - 1))])
    higher = rest.reshape(n, channels, k - 1).transpose(1, 2)
    return BoundGaussians(
        local_means=_stack(table, ["x", "y", "z"]),
        log_scales=_stack(table, ["scale_0", "scale_1", "scale_2"]),
        local_quats=_stack(table, ["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacity_logits=_stack(table, ["opacity"])[:, 0],
        sh=torch.cat((dc, higher), dim=1).contiguous(),
        face_ids=torch.from_numpy(binding),
        num_faces=num_faces,
    )


def _binding(path: Path, table: np.ndarray) -> np.ndarray:
    """Each Gaussian's face id: upstream's float `binding_0`, or a legacy int `binding`."""
    names = table.dtype.names
    column = "binding_0" if "binding_0" in names else "binding" if "binding" in names else None
    if column is None:
        raise PlyError(f"{path}: missing PLY property binding_0 (each Gaussian's face id)")
    values = table[column]
    if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
        raise PlyError(f"{path}: {column} holds values that are not face ids")
    return values.astype(np.int64)


def _sh_layout(path: Path, names: set[str]) -> tuple[int, int]:
    """(channels C, coefficients K) from the f_dc_* / f_rest_* counts; checks every column."""
    channels = _count_prefixed(names, "f_dc_")
    rest = _count_prefixed(names, "f_rest_")
    missing = [name for name in property_names(channels, rest)[:-1] if name not in names]
    if channels == 0 or missing:
        raise PlyError(f"{path}: missing PLY properties: {', '.join(missing or ['f_dc_0'])}")
    k = 1 + rest // channels
    if rest % channels or math.isqrt(k) ** 2 != k:
        raise PlyError(f"{path}: {rest} f_rest_* for {channels} channels is no SH degree")
    return channels, k


def _stack(table: np.ndarray, columns: list[str]) -> torch.Tensor:
    """(N, len(columns)) float32 tensor of the named columns (N x 0 for none)."""
    stacked = np.zeros((len(table), len(columns)), np.float32)
    for i, column in enumerate(columns):
        stacked[:, i] = table[column]
    return torch.from_numpy(stacked)


def _count_prefixed(names: set[str], prefix: str) -> int:
    """How many `<prefix><i>` properties there are (a gap shows up later as a missing name)."""
    pattern = re.compile(re.escape(prefix) + r"\d+")
    return sum(1 for name in names if pattern.fullmatch(name))
