"""Teacher shards: each image's frozen-teacher outputs (DINOv2 features, depth, and later
VLM density) plus its target image at training resolution, packed into fixed-size fp16
safetensors files that training streams from.

safetensors holds raw tensors and a JSON header only, so loading never executes pickled
code. The manifest lists every shard with its ids and sha256.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from safetensors.numpy import save_file
from safetensors.torch import load_file
from tqdm import tqdm

from fresnel.io import DINOV2_SHAPE, atomic_path, read_f32_bin, reset_dir, sha256_file, write_json

log = logging.getLogger(__name__)

FORMAT = "fresnel-shards/1"
MANIFEST = "manifest.json"


class ShardError(RuntimeError):
    """Inputs cannot be packed (missing or non-finite teacher outputs)."""


def _target_image(path: Path, resolution: int) -> np.ndarray:
    """The training target: RGB in [0, 1], channels first, at `resolution`."""
    with Image.open(path) as img:
        small = img.convert("RGB").resize((resolution, resolution), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.float32).transpose(2, 0, 1) / 255.0


def _to_fp16(name: str, item_id: str, array: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        half = array.astype(np.float16)
    if not np.isfinite(half).all():
        raise ShardError(f"{item_id}: {name} has values that are not finite in float16")
    return half


def _load_item(item_id, image_file, features_dir: Path, depth_size, resolution, vlm_dir):
    tensors = {
        "image": _target_image(image_file, resolution),
        "dinov2": read_f32_bin(features_dir / f"{item_id}_dinov2.bin", DINOV2_SHAPE),
        "depth": read_f32_bin(features_dir / f"{item_id}_depth.bin", (depth_size, depth_size)),
    }
    if vlm_dir is not None:
        tensors["vlm_density"] = np.load(vlm_dir / f"{item_id}_vlm_density.npy", allow_pickle=False)
    return {name: _to_fp16(name, item_id, value) for name, value in tensors.items()}


def pack(
    images_dir, features_dir, out_dir, resolution: int, shard_size: int, seed: int, vlm_dir=None
) -> dict:
    """Write `shard_{idx:05d}.safetensors` files of `shard_size` images and a manifest."""
    images_dir, features_dir, out_dir = Path(images_dir), Path(features_dir), Path(out_dir)
    vlm_dir = Path(vlm_dir) if vlm_dir else None
    manifest = pd.read_parquet(images_dir / "manifest.parquet").sort_values("id")
    index = json.loads((features_dir / "index.json").read_text())
    depth_size = index["depth_shape"][0]
    missing = sorted(set(manifest["id"]) - set(index["ids"]))
    if missing:
        raise ShardError(f"{features_dir}: no features for {', '.join(missing)}; rerun features")

    order = np.random.default_rng(seed).permutation(len(manifest))
    rows = manifest.iloc[order].reset_index(drop=True)
    reset_dir(out_dir)
    shards = []
    for idx in tqdm(range(math.ceil(len(rows) / shard_size)), desc="shards", unit="shard"):
        chunk = rows.iloc[idx * shard_size : (idx + 1) * shard_size]
        items = [
            _load_item(r.id, images_dir / r.file, features_dir, depth_size, resolution, vlm_dir)
            for r in chunk.itertuples()
        ]
        # safetensors writes the raw buffer: the arrays must be C-contiguous
        stacked = {k: np.ascontiguousarray(np.stack([it[k] for it in items])) for k in items[0]}
        path = out_dir / f"shard_{idx:05d}.safetensors"
        with atomic_path(path) as tmp:
            save_file(stacked, str(tmp), metadata={"ids": json.dumps(list(chunk.id))})
        shards.append({"file": path.name, "count": len(chunk), "ids": list(chunk.id),
                       "sha256": sha256_file(path)})  # fmt: skip

    item_shapes = {k: list(v.shape[1:]) for k, v in stacked.items()} if shards else {}
    write_json(out_dir / MANIFEST, {
        "format": FORMAT, "count": len(rows), "shard_size": shard_size,
        "resolution": resolution, "seed": seed, "dtype": "float16",
        "tensors": item_shapes, "vlm_density": "vlm_density" in item_shapes, "shards": shards,
    })  # fmt: skip
    return {"images": len(rows), "shards": len(shards)}


# preprocess_training_data writes <features>/../preprocessed/{raw,matted}; training packs a
# features folder into <features>/shards.
PREPROCESSED, PACKED = "preprocessed", "shards"


def for_training(data_dir, resolution: int, seed: int = 0) -> Path:
    """The shard folder for a training `--data_dir`, as the guide's Quick Start uses it: a
    shard folder itself, or an image folder that preprocess_training_data processed (its
    `features/`), or that features folder. A features folder is packed into `<features>/shards`
    at `resolution`, and repacked only when the features, images or resolution changed."""
    data_dir = Path(data_dir)
    if (data_dir / MANIFEST).is_file():
        return data_dir
    features = next((d for d in (data_dir, data_dir / "features") if (d / "index.json").is_file()),
                    None)  # fmt: skip
    if features is None:
        raise ShardError(
            f"{data_dir}: holds neither shards ({MANIFEST}) nor preprocessed features "
            f"(features/index.json); run `fresnel preprocess_training_data --data_dir {data_dir}`"
            " first, or pass a shard folder"
        )
    out = features / PACKED
    images = features.parent / PREPROCESSED / "matted"
    vlm = features if any(features.glob("*_vlm_density.npy")) else None
    source = {"index": sha256_file(features / "index.json"), "resolution": resolution,
              "images": sha256_file(images / "manifest.parquet"), "vlm": vlm is not None}  # fmt: skip
    if (out / MANIFEST).is_file() and read_manifest(out).get("source") == source:
        log.info("%s: training on the shards packed earlier in %s", data_dir, out)
        return out
    stats = pack(images, features, out, resolution, shard_size=256, seed=seed, vlm_dir=vlm)
    manifest = read_manifest(out)
    write_json(out / MANIFEST, {**manifest, "source": source})
    log.info("%s: preprocessed images and features, not shards: packed %d images at %d px into "
             "%s%s", data_dir, stats["images"], resolution, out,
             " with VLM density" if vlm else "")  # fmt: skip
    return out


def read_manifest(shard_dir) -> dict:
    manifest = json.loads((Path(shard_dir) / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise ShardError(f"{shard_dir}/{MANIFEST}: format {manifest.get('format')!r} != {FORMAT}")
    return manifest


def load_shard(path) -> dict[str, torch.Tensor]:
    """Load one shard's tensors (safetensors: no pickled code is executed)."""
    return load_file(str(path))


class ShardStream(torch.utils.data.IterableDataset):
    """Streams items shard by shard: one shard in memory per worker, shuffled per epoch.

    Each item is a dict of tensors ("image" 3xRxR, "dinov2" 37x37x384, "depth" DxD and,
    when packed, "vlm_density") plus its "id", cast to `dtype`.
    """

    def __init__(self, shard_dir, shuffle: bool = True, seed: int = 0, dtype=torch.float32):
        self.shard_dir = Path(shard_dir)
        self.manifest = read_manifest(shard_dir)
        self.shuffle, self.seed, self.dtype = shuffle, seed, dtype
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.manifest["count"]

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = self.manifest["shards"]
        order = rng.permutation(len(shards)) if self.shuffle else np.arange(len(shards))
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            order = order[worker.id :: worker.num_workers]
        for shard_idx in order:
            entry = shards[shard_idx]
            tensors = load_shard(self.shard_dir / entry["file"])
            items = rng.permutation(entry["count"]) if self.shuffle else range(entry["count"])
            for i in items:
                item = {k: v[i].to(self.dtype) for k, v in tensors.items()}
                item["id"] = entry["ids"][i]
                yield item
