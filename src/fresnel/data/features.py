"""Batched ONNX Runtime feature extraction (DINOv2 patch features + depth), incremental by content.

Per image the stage writes the guide's raw float32 files (C order, no header):

* ``<id>_dinov2.bin``: 37 x 37 x 384 DINOv2 patch features;
* ``<id>_depth.bin``: depth_size x depth_size relative depth, the model's 518 x 518 output
  resized with plain bilinear interpolation (torch.nn.functional.interpolate, mode="bilinear",
  align_corners=False, antialias=False; skipped when depth_size is 518);

plus ``index.json``. Results live in a content-addressed cache,
``cache_root()/features/<key>/<png sha256>_{dinov2,depth}.bin``, where ``key`` hashes both ONNX
files and depth_size; only images missing there go through the models, and the outputs are
hard links (or copies) of cache entries. The key is the sha256 of the PNG bytes themselves, so
a re-matted image is recomputed even when its id and source are unchanged.

Determinism (measured with onnxruntime 1.31 CPUExecutionProvider on the exported tiny and
DINOv2-shaped graphs): an image's outputs are bitwise identical whatever the batch size
(1..8), its position in the batch, the other images in it, and intra-op thread counts 1, 2, 4.
So batches need no zero padding, and a run killed mid-way and rerun (which batches the
remaining images differently) ends byte-identical to an uninterrupted run; the tests check
both. GPU providers were not measured.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from fresnel import device, io
from fresnel.device import onnx_session_options

log = logging.getLogger(__name__)

IMAGE_SIZE = 518
DINOV2_SHAPE = io.DINOV2_SHAPE
KINDS = ("dinov2", "depth")


class FeatureError(RuntimeError):
    """An input image or model cannot be used."""


# --------------------------------------------------------------------------- models


def _session(path: Path, providers: list[str]):
    import onnxruntime as ort

    if not Path(path).is_file():
        raise FeatureError(f"ONNX model not found: {path}")
    options = onnx_session_options()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers)


def resize_depth(depth: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize (align_corners=False, no antialias) of one (H, W) map to (size, size)."""
    import torch

    depth = np.asarray(depth, dtype=np.float32)
    if depth.shape == (size, size):
        return depth.copy()
    tensor = torch.from_numpy(np.ascontiguousarray(depth))[None, None]
    resized = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", align_corners=False, antialias=False
    )
    return resized[0, 0].numpy()


def to_pixel_values(images: Sequence[np.ndarray]) -> np.ndarray:
    """uint8 (518, 518, 3) RGB images -> float32 (B, 3, 518, 518) in [0, 1]."""
    batch = np.stack([np.asarray(image, dtype=np.uint8) for image in images])
    if batch.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise FeatureError(
            f"images must be {IMAGE_SIZE}x{IMAGE_SIZE}x3 uint8, got {batch.shape[1:]}"
        )
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255)


class Extractor:
    """Both ONNX models in ONNX Runtime sessions for one target; call it on a batch."""

    def __init__(self, dinov2_onnx, depth_onnx, depth_size: int, target: str = "cpu"):
        import onnxruntime as ort

        wanted, self.note = device.onnx_providers(target, ort.get_available_providers())
        self.paths = {"dinov2": Path(dinov2_onnx), "depth": Path(depth_onnx)}
        self.sessions = {kind: _session(self.paths[kind], wanted) for kind in KINDS}
        self.providers = self.sessions["dinov2"].get_providers()
        self.depth_size = depth_size

    def __call__(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images -> (B, 37, 37, 384) features, (B, d, d) depth, float32."""
        pixels = to_pixel_values(images)
        (features,) = self.sessions["dinov2"].run(["features"], {"pixel_values": pixels})
        (depth,) = self.sessions["depth"].run(["depth"], {"pixel_values": pixels})
        self._check(features, DINOV2_SHAPE, "dinov2", len(images))
        self._check(depth, (IMAGE_SIZE, IMAGE_SIZE), "depth", len(images))
        resized = np.stack([resize_depth(d, self.depth_size) for d in depth])
        return features.astype(np.float32, copy=False), resized

    def _check(self, array: np.ndarray, shape: tuple, kind: str, batch: int) -> None:
        if array.shape != (batch, *shape):
            raise FeatureError(
                f"{self.paths[kind]}: output shape {array.shape}, expected {(batch, *shape)}"
            )


def extract(
    images: Sequence[np.ndarray],
    dinov2_onnx,
    depth_onnx,
    depth_size: int,
    batch_size: int = 1,
    target: str = "cpu",
) -> tuple[np.ndarray, np.ndarray]:
    """Features and depth for in-memory uint8 (518, 518, 3) images, `batch_size` at a time."""
    if not images:
        return np.zeros((0, *DINOV2_SHAPE), np.float32), np.zeros(
            (0, depth_size, depth_size), np.float32
        )
    extractor = Extractor(dinov2_onnx, depth_onnx, depth_size, target)
    parts = [extractor(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- inputs


def read_manifest(images_dir) -> list[tuple[str, Path]]:
    """(id, png path) for every row of the matte stage's manifest, sorted by id."""
    import pandas as pd

    images_dir = Path(images_dir)
    manifest = images_dir / "manifest.parquet"
    if not manifest.is_file():
        raise FeatureError(f"image manifest not found: {manifest}")
    table = pd.read_parquet(manifest, columns=["id", "file"])
    ids = [str(i) for i in table["id"]]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise FeatureError(f"{manifest}: duplicate ids {duplicates[:5]}")
    rows = zip(ids, table["file"], strict=True)
    return sorted((i, images_dir / str(f)) for i, f in rows)


def load_image(path: Path) -> np.ndarray:
    """A 518x518 RGB PNG as uint8 (518, 518, 3); errors name the file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            mode, size = image.mode, image.size
            array = np.asarray(image)
    except FileNotFoundError:
        raise FeatureError(f"image not found: {path}") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise FeatureError(f"cannot read image {path}: {exc}") from exc
    if mode != "RGB" or size != (IMAGE_SIZE, IMAGE_SIZE):
        raise FeatureError(
            f"{path}: expected a {IMAGE_SIZE}x{IMAGE_SIZE} RGB image, got {size[0]}x{size[1]} {mode}"
        )
    return array


def _content_hash(path: Path) -> str:
    try:
        return io.sha256_file(path)
    except FileNotFoundError:
        raise FeatureError(f"image not found: {path}") from None


# --------------------------------------------------------------------------- cache


def cache_key(dinov2_sha: str, depth_sha: str, depth_size: int) -> str:
    """16 hex digits naming the cache folder for one (models, depth_size) combination."""
    return hashlib.sha256(f"{dinov2_sha}\n{depth_sha}\n{depth_size}".encode()).hexdigest()[:16]


def _entry_sizes(depth_size: int) -> dict[str, int]:
    return {"dinov2": int(np.prod(DINOV2_SHAPE)) * 4, "depth": depth_size * depth_size * 4}


def _entry(cache: Path, sha: str, kind: str) -> Path:
    return cache / f"{sha}_{kind}.bin"


def _is_cached(cache: Path, sha: str, sizes: dict[str, int]) -> bool:
    """Both files present with their exact sizes (writes are atomic, so size is a full check)."""
    for kind in KINDS:
        path = _entry(cache, sha, kind)
        if not path.is_file() or path.stat().st_size != sizes[kind]:
            return False
    return True


def _store(cache: Path, sha: str, features: np.ndarray, depth: np.ndarray) -> None:
    """Write one image's entries atomically and read-only (outputs hard-link to them)."""
    for kind, array in (("dinov2", features), ("depth", depth)):
        path = _entry(cache, sha, kind)
        io.write_f32_bin(path, array)
        os.chmod(path, 0o444)


def _open_cache(dinov2_onnx: Path, depth_onnx: Path, depth_size: int) -> Path:
    shas = {}
    for kind, path in (("dinov2", dinov2_onnx), ("depth", depth_onnx)):
        if not path.is_file():
            raise FeatureError(f"ONNX model not found: {path}")
        shas[kind] = io.sha256_file(path)
    cache = io.cache_root() / "features" / cache_key(shas["dinov2"], shas["depth"], depth_size)
    if not (cache / "key.json").is_file():
        io.write_json(cache / "key.json", {"onnx_sha256": shas, "depth_size": depth_size})
    return cache


# --------------------------------------------------------------------------- stage


def _compute(todo: dict[str, Path], cache: Path, extractor: Extractor, batch_size: int) -> int:
    """Push the images in `todo` (sha -> png) through the models; store after every batch."""
    items = list(todo.items())
    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    for batch in tqdm(batches, desc="features", unit="batch"):
        features, depth = extractor([load_image(path) for _, path in batch])
        for (sha, _), feats, dep in zip(batch, features, depth, strict=True):
            _store(cache, sha, feats, dep)
    return len(items)


def _place_outputs(rows, shas: dict[str, str], cache: Path, out_dir: Path, depth_size: int):
    for image_id, _ in rows:
        for kind in KINDS:
            io.link_or_copy(_entry(cache, shas[image_id], kind), out_dir / f"{image_id}_{kind}.bin")
    io.write_json(
        out_dir / "index.json",
        {
            "ids": [image_id for image_id, _ in rows],
            "dinov2_shape": list(DINOV2_SHAPE),
            "depth_shape": [depth_size, depth_size],
            "dtype": "float32",
        },
    )


def run(
    images_dir,
    dinov2_onnx,
    depth_onnx,
    out_dir,
    batch_size: int,
    depth_size: int,
    target: str = "cpu",
) -> dict:
    """Write features for every image in `images_dir`'s manifest to `out_dir`; returns stats."""
    import onnxruntime as ort

    if batch_size < 1 or depth_size < 1:
        raise ValueError(f"batch_size and depth_size must be >= 1, got {batch_size}, {depth_size}")
    out_dir = io.reset_dir(out_dir)
    rows = read_manifest(images_dir)
    cache = _open_cache(Path(dinov2_onnx), Path(depth_onnx), depth_size)
    shas = {image_id: _content_hash(path) for image_id, path in rows}
    sizes = _entry_sizes(depth_size)
    todo: dict[str, Path] = {}
    for image_id, path in rows:
        if shas[image_id] not in todo and not _is_cached(cache, shas[image_id], sizes):
            todo[shas[image_id]] = path
    providers, note = device.onnx_providers(target, ort.get_available_providers())
    log.info("features: %d images, %d to compute, cache %s", len(rows), len(todo), cache)
    computed = 0
    if todo:
        extractor = Extractor(dinov2_onnx, depth_onnx, depth_size, target)
        providers, note = extractor.providers, extractor.note
        if note:
            log.warning(note)
        computed = _compute(todo, cache, extractor, batch_size)
    _place_outputs(rows, shas, cache, out_dir, depth_size)
    return {
        "images": len(rows),
        "computed": computed,
        "cached": len(rows) - computed,
        "model_runs": computed,
        "providers": list(providers),
        "note": note,
        "cache": str(cache),
    }
