"""File primitives every stage shares: atomic writes, hashing, the guide's .bin format,
and a content-addressed cache that outlives a stage's (deleted-before-run) outputs."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

# The training guide's per-image teacher formats (raw float32, C order, no header).
DINOV2_SHAPE = (37, 37, 384)  # DINOv2-small patch features of a 518x518 image

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only on success.

    A killed process leaves at most a `.tmp-*` file, never a file that looks finished.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_f32_bin(path: str | os.PathLike, array: np.ndarray) -> None:
    """The guide's raw format: C-order little-endian float32, no header."""
    write_bytes(path, np.ascontiguousarray(array, dtype="<f4").tobytes())


def read_f32_bin(path: str | os.PathLike, shape: tuple[int, ...]) -> np.ndarray:
    data = np.fromfile(path, dtype="<f4")
    expected = int(np.prod(shape))
    if data.size != expected:
        raise ValueError(
            f"{path}: holds {data.size} float32 values, expected {expected} for shape {shape}"
        )
    return data.reshape(shape)


def cache_root() -> Path:
    """Where content-keyed intermediate results live ($FRESNEL_CACHE, default .fresnel-cache)."""
    return Path(os.environ.get("FRESNEL_CACHE", ".fresnel-cache"))


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Place `src` at `dst` by hard link (cheap for large datasets), else by copy."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)


def reset_dir(path: str | os.PathLike) -> Path:
    """Empty (or create) a stage's output directory."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
