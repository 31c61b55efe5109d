"""Teacher shards for NeuroPBR distillation (the guide's `teacher_infer.py`).

A trained teacher runs once over the PNG dataset and its four predicted maps are stored in
float16 shard files, so student training never runs the heavy teacher. Shards hold only the
teacher's predictions; inputs and hard targets are read from the PNGs during training.

Order: shard indices are positions in the dataset's entry list (`PBRDataset.entries`, the
(sample, source) pairs of the chosen render curriculum, in the dataset's own order). Shard
k holds positions [k * shard_size, (k + 1) * shard_size). `manifest.json` lists every entry
with its sample, source and material, every shard with its sha256, the stored size, the
teacher checkpoint's sha256 and a fingerprint of the input renders the teacher saw.

Files: `shard_{idx:05d}.pt` = {"indices": int64 [n], "teacher_outputs": {albedo, roughness,
metallic, normal: float16 [n, C, S, S]}}. They are read with `torch.load(weights_only=True)`
(`load_teacher_shard`), which refuses any pickled object other than tensors and containers.

The teacher runs in float32 (no autocast) so that the stored precision is set by the fp16
storage alone. `--shard-output-size` resizes its outputs before saving: area averaging when
shrinking, bilinear when enlarging, and normals renormalised to unit length afterwards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm import tqdm

from fresnel import device as devices
from fresnel.io import atomic_path, sha256_file, write_json
from fresnel.pbr.data import dataset_dirs
from fresnel.pbr.maps import MAP_CHANNELS, MAPS, normalize_normals

log = logging.getLogger(__name__)

FORMAT = "fresnel-pbr-teacher-shards/1"
MANIFEST = "manifest.json"
SHARD_KEYS = ("indices", "teacher_outputs")


class TeacherShardError(RuntimeError):
    """Shards cannot be written or read (bad values, bad files, dataset mismatch)."""


# ----------------------------------------------------------------------------- resizing
def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    if size < x.shape[-1]:
        return F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def resize_maps(maps: dict[str, torch.Tensor], size: int) -> dict[str, torch.Tensor]:
    """Resize batched maps [B,C,H,W] to size x size; normals come back unit length."""
    out = {name: _resize(maps[name], size) for name in MAPS}
    out["normal"] = normalize_normals(out["normal"])
    return out


# ----------------------------------------------------------------------------- inputs
def teacher_curriculum(cfg, render_curriculum: int | None) -> int:
    """The curriculum asked for, else the one the teacher was trained with."""
    if render_curriculum is not None:
        return int(render_curriculum)
    if getattr(cfg.data, "use_dirty_renders", False):
        return 2
    return int(getattr(cfg.data, "render_curriculum", 0))


def dataset_fingerprint(input_dir, entries: list[dict]) -> str:
    """sha256 over each entry's (sample, source, material) and its view PNGs' contents."""
    digest = hashlib.sha256()
    for entry in entries:
        views = sorted((Path(input_dir) / entry["source"] / entry["sample"]).glob("*.png"))
        line = [entry["sample"], entry["source"], entry["material"]]
        line += [f"{p.name}:{sha256_file(p)}" for p in views]
        digest.update(("\t".join(line) + "\n").encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- inference
class TeacherInputs(Dataset):
    """The normalised views of each PBRDataset entry (the maps are not needed here)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor:
        from fresnel.pbr.data import load_views, normalize_views

        ds = self.dataset
        return normalize_views(load_views(ds.view_paths(i), ds.image_size), ds.mean, ds.std)


@torch.no_grad()
def _infer(model, inputs, positions: range, batch_size: int, device, size, workers: int):
    """Teacher maps (float32, CPU) for dataset positions, resized to `size` when given,
    and the teacher's own output side."""
    loader = DataLoader(
        Subset(inputs, positions), batch_size=batch_size, shuffle=False, num_workers=workers
    )
    chunks = []
    for views in loader:
        out = model(views.to(device))
        missing = [m for m in MAPS if m not in out]
        if missing:
            raise TeacherShardError(
                f"teacher output lacks {missing}; is this a teacher checkpoint?"
            )
        maps = {m: out[m].float() for m in MAPS}
        native = int(maps["albedo"].shape[-1])
        chunks.append({m: v.cpu() for m, v in (resize_maps(maps, size) if size else maps).items()})
    return {m: torch.cat([c[m] for c in chunks]) for m in MAPS}, native


def to_fp16(maps: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """Cast to float16; values that are not finite there are an error naming the sample."""
    half = {m: maps[m].to(torch.float16).contiguous() for m in MAPS}
    for m in MAPS:
        bad = ~torch.isfinite(half[m]).flatten(1).all(dim=1)
        if bad.any():
            who = ", ".join(names[i] for i in bad.nonzero().flatten().tolist())
            raise TeacherShardError(
                f"{who}: teacher {m} has values that are not finite in float16; "
                "check the teacher checkpoint (NaN weights?) and these renders"
            )
    return half


def _clear_old_shards(shards_dir: Path) -> None:
    """Remove a previous run's shards and manifest (nothing else in the folder)."""
    shards_dir.mkdir(parents=True, exist_ok=True)
    for path in [shards_dir / MANIFEST, *shards_dir.glob("shard_*.pt")]:
        path.unlink(missing_ok=True)


def teacher_infer(
    checkpoint,
    input_dir=None,
    output_dir=None,
    shards_dir=None,
    shard_output_size: int | None = None,
    shard_size: int = 8,
    batch_size: int = 4,
    device: str = "cpu",
    render_curriculum: int | None = None,
    metadata_path=None,
    data_root=None,
    num_workers: int = 0,
) -> dict:
    """Run the teacher over the dataset and write fp16 shards plus manifest.json.

    `data_root` may replace input_dir/output_dir (data_root/input, data_root/output).
    `render_curriculum` None uses the teacher config's curriculum; `num_workers` PNG-decoding
    processes feed the teacher. Returns statistics.
    """
    from fresnel.pbr.data import PBRDataset
    from fresnel.pbr.teacher import load_generator

    if shards_dir is None:
        raise ValueError("give --shards-dir (where the shards are written)")
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size ({shard_size}) and batch_size ({batch_size}) must be >= 1")
    input_dir, output_dir = dataset_dirs(data_root, input_dir, output_dir)
    target = devices.resolve(device)
    model, cfg = load_generator(checkpoint, device=target)
    curriculum = teacher_curriculum(cfg, render_curriculum)
    mean, std = tuple(cfg.transform.mean), tuple(cfg.transform.std)
    dataset = PBRDataset(
        input_dir,
        output_dir,
        metadata_path,
        transform_mean=mean,
        transform_std=std,
        image_size=cfg.data.image_size,
        curriculum_mode=curriculum,
    )
    entries = [
        {"index": i, "sample": s, "source": src, "material": dataset.material_of(s)}
        for i, (s, src) in enumerate(dataset.entries)
    ]
    if not entries:
        raise TeacherShardError(f"{input_dir}: no dataset entries for curriculum {curriculum}")
    shards_dir = Path(shards_dir)
    _clear_old_shards(shards_dir)
    shards, native, inputs = [], 0, TeacherInputs(dataset)
    with tqdm(total=len(entries), desc="teacher_infer", unit="sample") as bar:
        for idx in range(math.ceil(len(entries) / shard_size)):
            positions = range(idx * shard_size, min((idx + 1) * shard_size, len(entries)))
            maps, native = _infer(
                model, inputs, positions, batch_size, target.device, shard_output_size, num_workers
            )
            names = [f"{entries[i]['sample']} ({entries[i]['source']})" for i in positions]
            shards.append(_write_shard(shards_dir, idx, positions, to_fp16(maps, names)))
            bar.update(len(positions))
    size = int(shard_output_size or native)
    manifest = {
        "format": FORMAT,
        "count": len(entries),
        "shard_size": shard_size,
        "output_size": size,
        "teacher_output_size": native,
        "teacher_image_size": int(cfg.data.image_size),
        "dtype": "float16",
        "channels": dict(MAP_CHANNELS),
        "render_curriculum": curriculum,
        "transform": {"mean": list(mean), "std": list(std)},
        "teacher_checkpoint": str(checkpoint),
        "teacher_checkpoint_sha256": sha256_file(checkpoint),
        "dataset_fingerprint": dataset_fingerprint(input_dir, entries),
        "entries": entries,
        "shards": shards,
    }
    write_json(shards_dir / MANIFEST, manifest)  # last: a killed run leaves no manifest
    log.info(
        "wrote %d shards of %d entries at %dpx to %s", len(shards), len(entries), size, shards_dir
    )
    return {
        "entries": len(entries),
        "shards": len(shards),
        "output_size": size,
        "teacher_output_size": native,
        "shards_dir": str(shards_dir),
    }


def _write_shard(shards_dir: Path, idx: int, positions: range, half: dict) -> dict:
    path = shards_dir / f"shard_{idx:05d}.pt"
    payload = {"indices": torch.tensor(list(positions), dtype=torch.long), "teacher_outputs": half}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return {
        "file": path.name,
        "first": positions.start,
        "count": len(positions),
        "sha256": sha256_file(path),
    }


# ----------------------------------------------------------------------------- reading
def read_manifest(shards_dir) -> dict:
    path = Path(shards_dir) / MANIFEST
    if not path.exists():
        raise TeacherShardError(f"{path} not found: run teacher_infer to write the shards")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise TeacherShardError(f"{path}: format {manifest.get('format')!r}, expected {FORMAT}")
    return manifest


def load_teacher_shard(path, output_size: int | None = None) -> dict:
    """Load and validate one shard (tensors only: pickled code is refused).

    Checks the keys, int64 indices, float16 maps of shape [n, C, S, S] with the contract's
    channel counts, one S for all maps, and S == output_size when given.
    """
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise TeacherShardError(
            f"{path}: refused: it holds pickled Python objects, not only tensors "
            f"({str(exc).splitlines()[0]}); regenerate it with teacher_infer"
        ) from exc
    except (RuntimeError, EOFError) as exc:
        raise TeacherShardError(f"{path}: not a readable shard ({exc}); regenerate it") from exc
    _validate_shard(path, data, output_size)
    return data


def _validate_shard(path, data, output_size: int | None) -> None:
    def fail(problem: str):
        raise TeacherShardError(f"{path}: {problem}; regenerate it with teacher_infer")

    if not isinstance(data, dict) or set(data) != set(SHARD_KEYS):
        fail(
            f"keys {sorted(data) if isinstance(data, dict) else type(data).__name__}, "
            f"expected {list(SHARD_KEYS)}"
        )
    indices, outputs = data["indices"], data["teacher_outputs"]
    if not (
        isinstance(indices, torch.Tensor) and indices.dtype == torch.long and indices.ndim == 1
    ):
        fail("'indices' must be a 1-D int64 tensor")
    if not isinstance(outputs, dict) or set(outputs) != set(MAPS):
        fail(f"'teacher_outputs' must hold exactly {list(MAPS)}")
    sizes = set()
    for name in MAPS:
        t = outputs[name]
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float16 or t.ndim != 4:
            fail(f"{name} must be a 4-D float16 tensor")
        if (
            t.shape[0] != len(indices)
            or t.shape[1] != MAP_CHANNELS[name]
            or t.shape[2] != t.shape[3]
        ):
            fail(
                f"{name} has shape {tuple(t.shape)}, expected "
                f"[{len(indices)}, {MAP_CHANNELS[name]}, S, S]"
            )
        sizes.add(t.shape[-1])
    if len(sizes) != 1:
        fail(f"maps have different sizes {sorted(sizes)}")
    if output_size is not None and sizes != {output_size}:
        fail(f"maps are {sizes.pop()}px, expected {output_size}px")
