"""First stage: gather images from a source into `images/*.png` plus a manifest.

Sources: `sample` (photos bundled with scikit-image, then seeded procedural images; offline),
`local:<dir>` (an image folder) and the HuggingFace datasets named in params (`lpff`, `ffhq`,
`celeba`), streamed and cached item by item so an interrupted or enlarged run resumes.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from importlib import resources
from io import BytesIO
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from fresnel import io
from fresnel.images import BadImage, load_rgb, save_png

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# Formats people keep photos in that no installed decoder reads.
UNSUPPORTED_SUFFIXES = {".heic": "HEIC", ".heif": "HEIF", ".avif": "AVIF", ".jxl": "JPEG XL"}
ON_BAD_IMAGE = ("skip", "fail")

_PD = "public domain (scikit-image sample data)"
_CC0 = "CC0 (scikit-image sample data)"
# Photos shipped inside the scikit-image wheel (never fetched with pooch), with the licence
# their docstrings state. Fixed order: `count` takes a prefix.
SAMPLE_PHOTOS = (
    ("astronaut", "astronaut.png", _PD),
    ("chelsea", "chelsea.png", _CC0),
    ("coffee", "coffee.png", _CC0),
    ("rocket", "rocket.jpg", _PD),
    ("camera", "camera.png", _CC0),
    ("hubble_deep_field", "hubble_deep_field.jpg", _PD),
    ("retina", "retina.jpg", _CC0),
    ("clock", "clock_motion.png", _PD),
    ("brick", "brick.png", _CC0),
    ("grass", "grass.png", _CC0),
    ("gravel", "gravel.png", _CC0),
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("source", pa.string()),
        ("origin", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("licence", pa.string()),
    ]
)


class DownloadError(RuntimeError):
    """The source cannot be read, or (on_bad_image: fail) some of its images were bad."""


@dataclass(frozen=True)
class _Item:
    id: str
    name: str  # how reports and logs name the item
    origin: str
    licence: str
    load: Callable[[], Image.Image | Path]  # an RGB image to encode, or a ready PNG to link
    from_cache: bool = False


def run(
    source: str,
    out_dir,
    count: int,
    seed: int,
    min_size: int,
    on_bad_image: str,
    datasets: dict,
    exclude=(),
) -> dict:
    """Fill `out_dir` with images/, manifest.parquet and rejected.json; return the counts.
    `exclude`: folders a local source skips (a command's own outputs inside its input)."""
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, not {on_bad_image!r}")
    kind, items, total, rejected = _items(source, count, seed, datasets, exclude)
    for entry in rejected:
        logger.warning("rejected %s: %s", entry["item"], entry["reason"])
    out = io.reset_dir(out_dir)
    rows, first_of, from_cache = [], {}, 0
    for item in tqdm(items, total=total, desc=f"download {source}", unit="img"):
        from_cache += item.from_cache
        try:
            row = _place(item, out, kind, min_size)
        except BadImage as exc:
            logger.warning("rejected %s: %s", item.name, exc.reason)
            rejected.append({"item": item.name, "reason": exc.reason})
            continue
        if row["sha256"] in first_of:  # same pixels under another name: keep the first only
            (out / row["file"]).unlink()
            reason = f"duplicate of {first_of[row['sha256']]} (identical pixels)"
            logger.warning("rejected %s: %s", item.name, reason)
            rejected.append({"item": item.name, "reason": reason, "duplicate": True})
            continue
        first_of[row["sha256"]] = item.name
        rows.append(row)
    _write_outputs(out, rows, rejected)
    bad = [r for r in rejected if not (r.get("duplicate") or r.get("ignored"))]
    stats = {"accepted": len(rows), "rejected": len(bad), "from_cache": from_cache,
             "duplicates": sum(bool(r.get("duplicate")) for r in rejected),
             "not_images": sum(bool(r.get("ignored")) for r in rejected)}  # fmt: skip
    logger.info("download %s: %s", source, stats)
    if not rows:
        logger.warning("download %s: no image was accepted", source)
    if bad and on_bad_image == "fail":
        lines = "\n".join(f"  {r['item']}: {r['reason']}" for r in bad)
        raise DownloadError(
            f"{len(bad)} bad image(s) from source {source!r} (on_bad_image: fail):\n{lines}"
        )
    return stats


def _items(source: str, count: int, seed: int, datasets: dict, exclude=()):
    """(the manifest's source name, the items, how many to expect, files already rejected)."""
    if source == "sample":
        items = _sample_items(count, seed)
        return "sample", items, len(items), []
    if source.startswith("local:"):
        items, rejected = _local_items(Path(source.removeprefix("local:")), count, exclude)
        return "local", items, len(items), rejected
    if source in datasets:
        return source, _hub_items(source, datasets[source], count), count, []
    known = ", ".join(["sample", "local:<dir>", *sorted(datasets)])
    raise DownloadError(f"unknown download source {source!r}; expected one of: {known}")


def _place(item: _Item, out: Path, kind: str, min_size: int) -> dict:
    """Check the item's size and write it to out/images; return its manifest row."""
    got = item.load()
    if isinstance(got, Path):
        with Image.open(got) as header:
            width, height = header.size
    else:
        width, height = got.size
    if min(width, height) < min_size:
        raise BadImage(item.name, f"too small: {width}x{height}, min_size is {min_size}")
    rel = f"images/{item.id}.png"
    if isinstance(got, Path):
        io.link_or_copy(got, out / rel)
    else:
        save_png(got, out / rel)
    return {
        "id": item.id,
        "file": rel,
        "source": kind,
        "origin": item.origin,
        "sha256": io.sha256_file(out / rel),
        "width": width,
        "height": height,
        "licence": item.licence,
    }


def _write_outputs(out: Path, rows: list[dict], rejected: list[dict]) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=MANIFEST_SCHEMA)
    with io.atomic_path(out / "manifest.parquet") as tmp:
        pq.write_table(table, tmp)
    io.write_json(out / "rejected.json", sorted(rejected, key=lambda r: r["item"]))


# --- sample -------------------------------------------------------------------------------


def _sample_items(count: int, seed: int) -> list[_Item]:
    data_dir = Path(str(resources.files("skimage") / "data"))
    items = []
    for name, filename, licence in SAMPLE_PHOTOS:
        path = data_dir / filename
        if not path.is_file():  # absent from this scikit-image build: never download it
            logger.debug("skimage sample %s is not bundled; skipped", filename)
            continue
        origin = f"skimage.data.{name}"
        items.append(
            _Item(f"sample_{name}", origin, origin, licence, partial(load_rgb, path, origin))
        )
    items = items[:count]
    for index in range(count - len(items)):
        origin = f"procedural(seed={seed}, index={index})"
        load = partial(procedural_image, seed, index)
        items.append(_Item(f"procedural_{index:04d}", origin, origin, "generated", load))
    return items


def procedural_image(seed: int, index: int, size: int = 256) -> Image.Image:
    """A deterministic RGB test picture: shaded soft-edged ellipses over a colour gradient."""
    rng = np.random.default_rng([seed % 2**64, index])
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    low, high = rng.uniform(0, 1, (2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (x - 0.5) * np.cos(angle) + (y - 0.5) * np.sin(angle), 0, 1)[..., None]
    img = low * (1 - t) + high * t
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0.2, 0.8, 2)
        rx, ry = rng.uniform(0.08, 0.3, 2)
        d = np.hypot((x - cx) / rx, (y - cy) / ry)[..., None]  # 1 on the ellipse's edge
        mask = np.clip((1 - d) * min(rx, ry) * size / 1.5, 0, 1)  # about 1.5 px of anti-aliasing
        shade = 1 - 0.4 * np.clip(d, 0, 1) ** 2  # brighter centre, so blobs read as lit volumes
        img = img * (1 - mask) + rng.uniform(0, 1, 3) * shade * mask
    return Image.fromarray(np.rint(img * 255).astype(np.uint8), "RGB")


# --- local:<dir> --------------------------------------------------------------------------


def _local_items(root: Path, count: int, exclude=()) -> tuple[list[_Item], list[dict]]:
    """(the first `count` image files under root, the files that are not used and why).
    Symlinked folders are followed (once each); every file is one or the other."""
    if not root.is_dir():
        raise DownloadError(f"local source: directory not found: {root}")
    candidates, rejected = [], []
    for path in _walk_files(root, exclude):
        rel = path.relative_to(root).as_posix()
        reason = _unusable_reason(path)
        if reason:
            not_an_image = path.suffix.lower() not in (*IMAGE_SUFFIXES, *UNSUPPORTED_SUFFIXES)
            rejected.append({"item": rel, "reason": reason, **({"ignored": True} if not_an_image
                                                                else {})})  # fmt: skip
        else:
            candidates.append(rel)
    rels = sorted(candidates)[:count]
    if not rels:
        raise DownloadError(f"local source: no image files ({' '.join(IMAGE_SUFFIXES)}) in {root}")
    ids = unique_ids(os.path.splitext(rel)[0] for rel in rels)
    items = [
        _Item(id_, rel, rel, "", partial(load_rgb, root / rel, rel))
        for id_, rel in zip(ids, rels, strict=True)
    ]
    return items, rejected


def _walk_files(root: Path, exclude=()) -> Iterator[Path]:
    seen = {os.path.realpath(p) for p in exclude}
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # excluded, a symlink loop, or a folder linked twice
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _unusable_reason(path: Path) -> str | None:
    """Why a file in a local folder cannot be an input image (None: try to load it)."""
    suffix = path.suffix.lower()
    if path.is_symlink() and not path.exists():
        return f"broken symbolic link (its target {os.readlink(path)} does not exist)"
    if suffix in UNSUPPORTED_SUFFIXES:
        return f"{UNSUPPORTED_SUFFIXES[suffix]} is not supported: convert it to PNG or JPEG"
    if suffix not in IMAGE_SUFFIXES:
        return f"not an image file type ({' '.join(IMAGE_SUFFIXES)})"
    return None


def unique_ids(stems: Iterable[str]) -> list[str]:
    """Sanitise each stem to [A-Za-z0-9_-] and suffix repeats (_2, _3, ...) in input order.

    Uniqueness ignores case, so the files stay distinct on case-insensitive file systems.
    """
    seen: set[str] = set()
    ids = []
    for stem in stems:
        base = re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "image"
        candidate, n = base, 1
        while candidate.lower() in seen:
            n += 1
            candidate = f"{base}_{n}"
        seen.add(candidate.lower())
        ids.append(candidate)
    return ids


# --- HuggingFace datasets -----------------------------------------------------------------


def hub_cache_dir(hub_id: str, split: str, column: str) -> Path:
    key = io.sha256_bytes(f"{hub_id}\n{split}\n{column}".encode())[:16]
    return io.cache_root() / "download" / key


def _hub_items(source: str, spec: dict, count: int) -> Iterator[_Item]:
    """Cached items first; the stream is opened (past the cached prefix) only if one is missing."""
    hub_id, split, column = spec["hub_id"], spec["split"], spec["image_column"]
    cache = hub_cache_dir(hub_id, split, column)
    paths = [cache / f"{i:06d}.png" for i in range(count)]

    def item(index: int, load: Callable[[], Path], cached: bool) -> _Item:
        origin = f"{hub_id}:{split}:{index}"
        return _Item(f"{source}_{index:06d}", origin, origin, spec.get("licence", ""), load, cached)

    def cached(index: int) -> _Item:
        return item(index, lambda: paths[index], True)

    start = next((i for i, p in enumerate(paths) if not p.is_file()), count)
    yield from (cached(i) for i in range(start))
    if start == count:
        return
    logger.info("%s: streaming %s from item %d (those before it are cached)", source, hub_id, start)
    rows = iter(_open_stream(source, hub_id, split, column).skip(start))
    for index in range(start, count):
        try:
            row = next(rows)
        except StopIteration:
            logger.warning(
                "%s: %s has only %d items, fewer than count=%d", source, hub_id, index, count
            )
            return
        except Exception as exc:
            raise DownloadError(
                f"{source}: reading {hub_id!r} failed at item {index} ({exc}); "
                f"items fetched so far are cached in {cache}, so a rerun resumes"
            ) from exc
        if column not in row:
            raise DownloadError(
                f"{source}: {hub_id!r} has no column {column!r}; it has {sorted(row)}"
            )
        if paths[index].is_file():
            yield cached(index)
        else:
            name = f"{hub_id}:{split}:{index}"
            yield item(index, partial(_fetch, row[column], paths[index], name), False)


def _open_stream(source: str, hub_id: str, split: str, column: str):
    import datasets  # slow to import; only the hub sources need it

    try:
        stream = datasets.load_dataset(hub_id, split=split, streaming=True)
    except Exception as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0")
        raise DownloadError(
            f"download source {source!r}: cannot load dataset {hub_id!r} (split {split!r})"
            f"{' with HF_HUB_OFFLINE set' if offline else ''}: {exc}. Unset HF_HUB_OFFLINE to "
            "download it, or put the images in a folder and use source 'local:<dir>'."
        ) from exc
    # Raw bytes, not PIL images: one undecodable image then rejects one item instead of
    # raising inside the iterator and ending the stream.
    if isinstance((stream.features or {}).get(column), datasets.Image):
        stream = stream.cast_column(column, datasets.Image(decode=False))
    return stream


def _fetch(value, dst: Path, name: str) -> Path:
    """Decode one dataset cell (PIL image, {"bytes", "path"} dict, bytes or path) into the cache."""
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, bytes):
        value = BytesIO(value)
    if value is None:
        raise BadImage(name, "no image data in this row")
    save_png(load_rgb(value, name), dst)
    return dst
