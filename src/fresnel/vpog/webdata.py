"""VPOG's query images in the BOP / GSO web-dataset shards (megapose's `train_pbr_web` layout).

On-disk layout: a folder of plain (uncompressed) tar files `shard-000000.tar`, `shard-000001.tar`,
... read and written with the standard library (no webdataset dependency). A sample is the set
of members sharing a key `<scene_id:06d>_<view_id:06d>` (member name = key + "." + suffix):
    <key>.rgb.png             RGB, 8 bits per channel, (H, W)
    <key>.depth.png           uint16 depth, camera z in units of 0.1 mm (BOP's depth_scale 0.1),
                              0 = no measurement; metres = value / 10000
    <key>.segmentation.png    uint8 or uint16 instance ids, 0 = background
    <key>.camera_data.json    {"K": 3x3, "resolution": [H, W], "TWC": 4x4 camera-to-world}
    <key>.object_datas.json   [{"label": object id, "TWO": 4x4 object-to-world,
                                "visib_fract": float, optional "unique_id": int}, ...]
    <key>.infos.json          {"scene_id": int, "view_id": int} (optional when reading)
Transforms are 4x4 row-major lists; megapose's own (quaternion xyzw, translation) pairs are
read too. "TWC" may be left out, meaning the identity (world = camera frame).

Reading: every object of a sample with visib_fract > 0 gives one `QuerySample`, with the
object-to-camera pose inv(TWC) @ TWO and the mask `segmentation == instance id`, where the
instance id is the object's "unique_id" when given and otherwise its index in object_datas
plus 1 (the assumption, for data without unique ids, that instances are numbered from 1 in
list order). A sample with a missing required member or a malformed member is left out with a
logged warning and counted (`ShardReader.skipped`); reading never stops on a bad sample. A
folder without shards is a ValueError.

Conventions: OpenCV cameras (x right, y down, z forward), pixel centres at (j + 0.5, i + 0.5),
depth = camera z in metres in memory, poses object-to-camera X_cam = R X_obj + t.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from fresnel.vpog.geometry import in_plane_rotation, look_at_origin
from fresnel.vpog.objects import ObjectMesh
from fresnel.vpog.templates import (
    depth_from_png_units,
    depth_to_png_units,
    render_view,
    template_intrinsics,
)

log = logging.getLogger("fresnel.vpog.webdata")

SHARD_PATTERN = "shard-*.tar"
REQUIRED = ("rgb.png", "depth.png", "segmentation.png", "camera_data.json", "object_datas.json")
KEY_FORMAT = re.compile(r"^(\d{6,})_(\d{6,})$")
NOMINAL_DISTANCE = 3.0  # object diameters: the templates' radius, which fixes K's focal length
_SCENE_MODULUS = 1_000_000


@dataclass
class QuerySample:
    """One object in one image; see the module docstring for the conventions."""

    key: str
    rgb: Tensor  # uint8 (3, H, W)
    depth: Tensor  # float32 (H, W) metres, 0 where no measurement
    mask: Tensor  # bool (H, W), the pixels of this object
    K: Tensor  # float64 (3, 3)
    pose: Tensor  # float64 (4, 4) object-to-camera
    object_id: str


@dataclass(frozen=True)
class SampleRef:
    """Where one object of one sample lives: its shard, key, members and instance index."""

    shard: Path
    key: str
    members: dict[str, tuple[int, int]]  # suffix -> (byte offset of the data, size)
    instance: int  # index in object_datas.json
    object_id: str


# -- writing -------------------------------------------------------------------------------


def write_shards(
    samples: Iterable[QuerySample], directory: str | Path, samples_per_shard: int = 256
) -> list[Path]:
    """Write `samples` as shards of `samples_per_shard`; returns the shard paths.

    Existing `shard-*.tar` files in `directory` are removed first, so the folder holds exactly
    these samples. Keys must follow `<scene>_<view>` (six or more digits each) and be unique.
    Files are byte-for-byte reproducible (fixed member times and owners).
    """
    if samples_per_shard < 1:
        raise ValueError(f"samples_per_shard must be >= 1, got {samples_per_shard}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(SHARD_PATTERN):
        stale.unlink()
    paths: list[Path] = []
    seen: set[str] = set()
    batch: list[QuerySample] = []
    for sample in samples:
        _check_key(sample.key, seen)
        batch.append(sample)
        if len(batch) == samples_per_shard:
            paths.append(_write_shard(batch, directory / f"shard-{len(paths):06d}.tar"))
            batch = []
    if batch:
        paths.append(_write_shard(batch, directory / f"shard-{len(paths):06d}.tar"))
    return paths


def _check_key(key: str, seen: set[str]) -> None:
    if not KEY_FORMAT.match(key):
        raise ValueError(f"sample key {key!r} is not <scene:06d>_<view:06d>")
    if key in seen:
        raise ValueError(f"sample key {key!r} appears twice; keys must be unique")
    seen.add(key)


def _write_shard(samples: list[QuerySample], path: Path) -> Path:
    partial = path.with_name(path.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.USTAR_FORMAT) as tar:
        for sample in samples:
            for suffix, data in encode_sample(sample).items():
                _add_member(tar, f"{sample.key}.{suffix}", data)
    os.replace(partial, path)
    return path


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    tar.addfile(info, io.BytesIO(data))


def encode_sample(sample: QuerySample) -> dict[str, bytes]:
    """The members of one single-object sample, by suffix (world = camera frame)."""
    scene, view = (int(part) for part in KEY_FORMAT.match(sample.key).groups())
    height, width = sample.depth.shape
    camera = {
        "K": sample.K.double().tolist(),
        "resolution": [height, width],
        "TWC": np.eye(4).tolist(),
    }
    visible = 1.0 if bool(sample.mask.any()) else 0.0
    objects = [
        {
            "label": sample.object_id,
            "TWO": sample.pose.double().tolist(),
            "visib_fract": visible,
            "unique_id": 1,
        }
    ]
    return {
        "rgb.png": _png(sample.rgb.permute(1, 2, 0).numpy()),
        "depth.png": _png(depth_to_png_units(sample.depth)),
        "segmentation.png": _png(sample.mask.numpy().astype(np.uint8)),
        "camera_data.json": json.dumps(camera).encode(),
        "object_datas.json": json.dumps(objects).encode(),
        "infos.json": json.dumps({"scene_id": scene, "view_id": view}).encode(),
    }


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
    return buffer.getvalue()


# -- reading -------------------------------------------------------------------------------


def shard_paths(directory: str | Path) -> list[Path]:
    """The sorted `shard-*.tar` files of `directory`; FileNotFoundError when there are none."""
    directory = Path(directory)
    paths = sorted(directory.glob(SHARD_PATTERN)) if directory.is_dir() else []
    if not paths:
        raise FileNotFoundError(
            f"{directory}: no {SHARD_PATTERN} query shards; write them with "
            "fresnel vpog_make_dataset (or the vpog_queries stage) or fix the path"
        )
    return paths


class ShardReader:
    """Iterator over the QuerySamples of a shard folder, in shard and member order.

    `skipped` counts what was left out with a warning: samples with missing or malformed
    members, and objects whose images fail to decode.
    """

    def __init__(self, directory: str | Path) -> None:
        self.paths = shard_paths(directory)
        self.skipped = 0
        self._samples = self._generate()

    def __iter__(self) -> ShardReader:
        return self

    def __next__(self) -> QuerySample:
        return next(self._samples)

    def _generate(self) -> Iterator[QuerySample]:
        for path in self.paths:
            refs, skipped = index_shard(path)
            self.skipped += skipped
            for ref in refs:
                try:
                    yield load_sample(ref)
                except ValueError as exc:
                    self.skipped += 1
                    log.warning("skipped a query: %s", exc)


def read_shards(directory: str | Path) -> ShardReader:
    """Every QuerySample of the shards in `directory` (module docstring), lazily."""
    return ShardReader(directory)


def index_shards(directory: str | Path) -> tuple[list[SampleRef], int]:
    """(references to every object to read, number of samples skipped) over a shard folder."""
    refs: list[SampleRef] = []
    skipped = 0
    for path in shard_paths(directory):
        shard_refs, shard_skipped = index_shard(path)
        refs += shard_refs
        skipped += shard_skipped
    return refs, skipped


def index_shard(path: Path) -> tuple[list[SampleRef], int]:
    """(references to the visible objects of one shard, samples skipped with a warning)."""
    try:
        members = _members_by_key(path)
    except (OSError, tarfile.TarError) as exc:
        log.warning("%s: unreadable shard skipped (%s)", path, exc)
        return [], 1
    refs: list[SampleRef] = []
    skipped = 0
    with open(path, "rb") as file:
        for key, found in members.items():
            try:
                refs += _sample_refs(file, path, key, found)
            except ValueError as exc:
                skipped += 1
                log.warning("%s: skipped sample %s: %s", path, key, exc)
    return refs, skipped


def _members_by_key(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """key -> suffix -> (data offset, size) of the regular files of a tar, in member order."""
    members: dict[str, dict[str, tuple[int, int]]] = {}
    with tarfile.open(path, "r:") as tar:
        for info in tar:
            if not info.isfile():
                continue
            folder, _, base = info.name.rpartition("/")
            stem, dot, suffix = base.partition(".")
            if not dot:
                continue
            key = f"{folder}/{stem}" if folder else stem
            members.setdefault(key, {})[suffix] = (info.offset_data, info.size)
    return members


def _sample_refs(file, path: Path, key: str, found: dict) -> list[SampleRef]:
    missing = [suffix for suffix in REQUIRED if suffix not in found]
    if missing:
        raise ValueError(f"missing member(s) {', '.join(missing)}")
    objects = _object_datas(_read_json(file, found["object_datas.json"], "object_datas.json"))
    _camera_data(_read_json(file, found["camera_data.json"], "camera_data.json"))
    return [
        SampleRef(path, key, found, index, str(entry["label"]))
        for index, entry in enumerate(objects)
        if float(entry.get("visib_fract", 1.0)) > 0
    ]


def _read_bytes(file, span: tuple[int, int]) -> bytes:
    offset, size = span
    file.seek(offset)
    data = file.read(size)
    if len(data) != size:
        raise ValueError("truncated member")
    return data


def _read_json(file, span: tuple[int, int], name: str):
    try:
        return json.loads(_read_bytes(file, span))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{name} is not JSON ({exc})") from None


def _object_datas(value) -> list[dict]:
    ok = isinstance(value, list) and all(
        isinstance(e, dict) and "label" in e and "TWO" in e for e in value
    )
    if not ok:
        raise ValueError("object_datas.json must be a list of {label, TWO, visib_fract}")
    for entry in value:
        as_transform(entry["TWO"], "TWO")
        try:
            float(entry.get("visib_fract", 1.0))
            int(entry.get("unique_id", 0))
        except (TypeError, ValueError):
            raise ValueError("object_datas.json: visib_fract / unique_id not numbers") from None
    return value


def _camera_data(value) -> tuple[Tensor, tuple[int, int] | None, Tensor]:
    if not isinstance(value, dict) or "K" not in value:
        raise ValueError("camera_data.json must be a dict with K")
    try:
        K = torch.tensor(value["K"], dtype=torch.float64)
        resolution = value.get("resolution")
        resolution = None if resolution is None else tuple(int(x) for x in resolution)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"camera_data.json: bad K or resolution ({exc})") from None
    if K.shape != (3, 3) or not torch.isfinite(K).all():
        raise ValueError(f"camera_data.json: K must be a finite 3x3, got {value['K']}")
    last_row = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    if not (K[0, 0] > 0 and K[1, 1] > 0 and torch.allclose(K[2], last_row)):
        raise ValueError(
            f"camera_data.json: K {value['K']} is not a pinhole (fx, fy > 0, last row 0 0 1)"
        )
    TWC = as_transform(value.get("TWC", np.eye(4).tolist()), "TWC")
    return K, resolution, TWC


def as_transform(value, name: str) -> Tensor:
    """(4, 4) float64 of a 4x4 list or of megapose's [quaternion xyzw, translation] pair."""
    try:
        if len(value) == 2 and len(value[0]) == 4 and len(value[1]) == 3:
            return _from_quaternion(value[0], value[1])
        matrix = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} is not a 4x4 transform ({exc})") from None
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    if matrix.shape != (4, 4) or not torch.isfinite(matrix).all():
        raise ValueError(f"{name} is not a finite 4x4 transform")
    if not torch.allclose(matrix[3], bottom):
        raise ValueError(f"{name}'s last row is not (0, 0, 0, 1)")
    R = matrix[:3, :3]
    if not torch.allclose(R @ R.T, torch.eye(3, dtype=R.dtype), atol=1e-4) or torch.det(R) < 0:
        raise ValueError(f"{name}'s upper-left 3x3 is not a rotation")
    return matrix


def _from_quaternion(quaternion, translation) -> Tensor:
    x, y, z, w = (float(c) for c in quaternion)
    norm = math.sqrt(x * x + y * y + z * z + w * w)
    if not norm > 0:
        raise ValueError("zero quaternion")
    x, y, z, w = x / norm, y / norm, z / norm, w / norm
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3] = torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )
    matrix[:3, 3] = torch.tensor([float(c) for c in translation], dtype=torch.float64)
    return matrix


def load_sample(ref: SampleRef) -> QuerySample:
    """Decode one object of one sample; ValueError naming the shard and key when malformed."""
    try:
        return _load(ref)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{ref.shard}: sample {ref.key}: {exc}") from None


def _load(ref: SampleRef) -> QuerySample:
    with open(ref.shard, "rb") as file:
        data = {suffix: _read_bytes(file, ref.members[suffix]) for suffix in REQUIRED}
    K, resolution, TWC = _camera_data(json.loads(data["camera_data.json"]))
    entry = _object_datas(json.loads(data["object_datas.json"]))[ref.instance]
    rgb = _decode_png(data["rgb.png"], "rgb.png", "RGB")
    height, width = rgb.shape[:2]
    depth = _decode_png(data["depth.png"], "depth.png", None)
    segmentation = _decode_png(data["segmentation.png"], "segmentation.png", None)
    for name, image in (("depth.png", depth), ("segmentation.png", segmentation)):
        if image.shape != (height, width):
            raise ValueError(f"{name} is {image.shape}, rgb.png is {(height, width)}")
    if resolution is not None and resolution != (height, width):
        raise ValueError(f"camera_data.json resolution {resolution} != image {(height, width)}")
    instance_id = int(entry.get("unique_id", ref.instance + 1))
    return QuerySample(
        key=ref.key,
        rgb=torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        depth=depth_from_png_units(depth),
        mask=torch.from_numpy(segmentation == instance_id),
        K=K,
        pose=torch.linalg.inv(TWC) @ as_transform(entry["TWO"], "TWO"),
        object_id=str(entry["label"]),
    )


def _decode_png(data: bytes, name: str, mode: str | None) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            array = np.array(image.convert(mode) if mode else image)
    except OSError as exc:
        raise ValueError(f"{name} does not decode ({exc})") from None
    if mode is None and (array.ndim != 2 or array.dtype.kind not in "ui"):
        raise ValueError(f"{name} must be a single-channel integer image")
    return array


# -- synthetic queries ---------------------------------------------------------------------


def render_queries(
    obj: ObjectMesh,
    count: int,
    image_size: int = 224,
    seed: int = 0,
    upper_hemisphere: bool = True,
    distance_range: tuple[float, float] = (2.5, 3.5),
    inplane_range_deg: float = 180.0,
    offset_fraction: float = 0.05,
    background: str | float = "noise",
) -> list[QuerySample]:
    """`count` seeded renders of `obj` at random poses (same seed, same bytes).

    Viewpoints are uniform on the (upper) sphere, followed by an in-plane rotation uniform in
    +-inplane_range_deg about the optical axis; the distance is uniform in `distance_range`
    diameters and the object's origin lands uniformly within +-offset_fraction * image_size
    pixels of the image centre. K is the templates' (`template_intrinsics` at the nominal 3
    diameters), so at 3 diameters the query and template scales agree. `background` "noise"
    draws smooth random colours per image; a number is a flat grey. Keys are
    `<seed mod 1e6:06d>_<view:06d>`.
    """
    if background != "noise" and not isinstance(background, int | float):
        raise ValueError(f"background must be 'noise' or a number, got {background!r}")
    generator = torch.Generator().manual_seed(seed)
    K = template_intrinsics(image_size, NOMINAL_DISTANCE * obj.diameter, obj.diameter)
    scene = seed % _SCENE_MODULUS
    samples = []
    for view in range(count):
        pose = random_pose(
            generator,
            obj.diameter,
            float(K[0, 0]),
            image_size,
            upper_hemisphere,
            distance_range,
            inplane_range_deg,
            offset_fraction,
        )
        backdrop = (
            noise_background(image_size, image_size, generator)
            if background == "noise"
            else float(background)
        )
        samples.append(render_query(obj, pose, K, image_size, f"{scene:06d}_{view:06d}", backdrop))
    return samples


def render_query(
    obj: ObjectMesh,
    pose: Tensor,
    K: Tensor,
    image_size: int,
    key: str,
    background: float | Tensor = 0.0,
) -> QuerySample:
    """One square query of `obj` at object-to-camera `pose` (background: value or (3, H, W))."""
    rgb, depth, mask = render_view(obj, K, pose, image_size, image_size, background)
    return QuerySample(key, rgb, depth, mask, K.double().clone(), pose.double().clone(), obj.name)


def random_pose(
    generator: torch.Generator,
    diameter: float,
    focal: float,
    image_size: int,
    upper_hemisphere: bool = True,
    distance_range: tuple[float, float] = (2.5, 3.5),
    inplane_range_deg: float = 180.0,
    offset_fraction: float = 0.05,
) -> Tensor:
    """(4, 4) float64 object-to-camera pose drawn as `render_queries` describes."""
    u = torch.rand(7, generator=generator, dtype=torch.float64)
    z = u[0] if upper_hemisphere else 2 * u[0] - 1
    azimuth = 2 * math.pi * u[1]
    ring = torch.sqrt(1 - z * z)
    direction = torch.stack((ring * torch.cos(azimuth), ring * torch.sin(azimuth), z))
    theta = (2 * u[2] - 1) * math.radians(inplane_range_deg)
    low, high = distance_range
    distance = diameter * (low + (high - low) * u[3])
    offset = (2 * u[4:6] - 1) * offset_fraction * image_size  # pixels
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = in_plane_rotation(theta) @ look_at_origin(direction)
    pose[:2, 3] = offset * distance / focal
    pose[2, 3] = distance
    return pose


def noise_background(height: int, width: int, generator: torch.Generator) -> Tensor:
    """(3, H, W) float64 smooth random colours in [0, 1]: a coarse and a finer colour grid,
    upsampled bilinearly and mixed 2:1."""
    coarse = torch.rand(1, 3, 4, 4, generator=generator, dtype=torch.float64)
    fine = torch.rand(1, 3, 12, 12, generator=generator, dtype=torch.float64)
    size = (height, width)
    up = [
        F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        for grid in (coarse, fine)
    ]
    return ((2 * up[0] + up[1]) / 3)[0].clamp(0, 1)
