"""Second stage: optional background removal (rembg) and TRELLIS's crop geometry.

Per image: alpha from a rembg segmentation model (or none: the whole image is the subject);
bbox of the pixels with alpha > alpha_threshold * 255; a square crop of side
int(max(bbox w, h) * (1 + padding)) centred on the bbox (outside the image: black); a LANCZOS
resize to size x size; compositing on black (rgb * alpha). With the defaults (0.2, 518, 0.8)
this is TRELLIS's `preprocess_image`, except that the bbox size is its pixel extent and the
crop is centred to the sub-pixel (TRELLIS rounds the crop box to whole pixels).

rembg never downloads here: the model file must already be in `model_dir` (= U2NET_HOME).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm import tqdm

from fresnel import io
from fresnel.device import onnx_session_options
from fresnel.images import BadImage, load_rgb, save_png

logger = logging.getLogger(__name__)

ON_BAD_IMAGE = ("skip", "fail")

# rembg sessions that load exactly one `<name>.onnx` (found by `resolve_existing`) and
# return one mask per image. Not here: sam (prompted, two files), *_custom (explicit
# model_path), u2net_cloth_seg (three masks), remote services (atlascloud, withoutbg).
SINGLE_FILE_MODELS = (
    "u2net",
    "u2netp",
    "u2net_human_seg",
    "silueta",
    "isnet-general-use",
    "isnet-anime",
    "bria-rmbg",
    "birefnet-general",
    "birefnet-general-lite",
    "birefnet-general-fp16",
    "birefnet-portrait",
    "birefnet-dis",
    "birefnet-hrsod",
    "birefnet-cod",
    "birefnet-massive",
)

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("file", pa.string()),
        ("sha256", pa.string()),
        ("source_sha256", pa.string()),
        ("x0", pa.int64()),  # subject bbox in the source image, x1/y1 exclusive (a PIL box)
        ("y0", pa.int64()),
        ("x1", pa.int64()),
        ("y1", pa.int64()),
        ("crop_size", pa.int64()),  # side of the square crop taken around it, source pixels
    ]
)

Box = tuple[int, int, int, int]


class MatteError(RuntimeError):
    """The model file is missing or unusable, or (on_bad_image: fail) some images were bad."""


class NoSubject(ValueError):
    """No pixel of the alpha mask is above the threshold."""


# --- rembg --------------------------------------------------------------------------------


def _model_home(model_dir) -> Path:
    """`model_dir` as an absolute path; empty or None means $U2NET_HOME."""
    if model_dir in (None, ""):
        model_dir = os.environ.get("U2NET_HOME", "")
        if not model_dir:
            raise MatteError("matte.model_dir is empty and U2NET_HOME is not set")
    return Path(model_dir).expanduser().resolve()


def _candidates(model: str, model_dir) -> list[Path]:
    """rembg's search order with U2NET_HOME=model_dir: per-model folder, then flat layout."""
    if model not in SINGLE_FILE_MODELS:
        raise MatteError(
            f"matte.model {model!r} is not supported; use one of: {', '.join(SINGLE_FILE_MODELS)}"
        )
    home = _model_home(model_dir)
    return [home / "models" / model / f"{model}.onnx", home / f"{model}.onnx"]


def rembg_model_path(model: str, model_dir) -> Path:
    """The file rembg loads for `model` with U2NET_HOME=model_dir (the flat one if none exists).

    rembg looks for `<home>/models/<model>/<model>.onnx`, then `<home>/<model>.onnx`, and
    loads the first that exists without checking its hash (pooch checks only downloads).
    """
    candidates = _candidates(model, model_dir)
    return next((path for path in candidates if path.is_file()), candidates[-1])


def _missing_model_message(model: str, model_dir) -> str:
    nested, flat = _candidates(model, model_dir)
    return (
        f"matte.remove_background is true but rembg model {model!r} is missing: expected the "
        f"file {flat} (or {nested}). Offline there are no downloadable weights and this stage "
        f"never lets rembg download: place the ONNX file at {flat}, or set `matte.model_dir` "
        f"in params.yaml (or leave it empty and set U2NET_HOME) to a folder holding "
        f"{model}.onnx. To skip background removal, set matte.remove_background: false."
    )


def _require_model(model: str, model_dir) -> Path:
    path = rembg_model_path(model, model_dir)
    if not path.is_file():
        raise MatteError(_missing_model_message(model, model_dir))
    return path


def make_remover(model: str, model_dir) -> Callable[[Image.Image], Image.Image]:
    """A function RGB image -> alpha mask ('L', same size) from rembg's session for `model`.

    Raises MatteError, before importing rembg, if the model file is not in `model_dir`.
    """
    path = _require_model(model, model_dir)
    os.environ["U2NET_HOME"] = str(_model_home(model_dir))
    import rembg  # slow first import (numba); only background removal needs it

    _check_rembg_finds(model, path)
    session = rembg.new_session(model, sess_opts=onnx_session_options())

    def remove(img: Image.Image) -> Image.Image:
        # rembg stretches each prediction to 0..1; a flat one (0/0) becomes an empty mask
        with np.errstate(divide="ignore", invalid="ignore"):
            mask = rembg.remove(img, session=session, only_mask=True)
        return mask.convert("L")

    return remove


def _check_rembg_finds(model: str, path: Path) -> None:
    """Make sure rembg resolves `model` to `path` (so creating the session cannot download)."""
    import rembg
    from rembg.sessions import sessions

    resolve = getattr(sessions[model], "resolve_existing", None)
    if resolve is None:  # older rembg hands even an existing file to pooch (hash check)
        raise MatteError(
            f"rembg {rembg.__version__} may re-download a model whose hash differs from its "
            "release; this stage needs a rembg with BaseSession.resolve_existing (2.0.86 works)"
        )
    found = resolve(f"{model}.onnx")
    if found is None or Path(found).resolve() != path.resolve():
        raise MatteError(f"rembg resolves model {model!r} to {found}, not to {path}")


# --- geometry -----------------------------------------------------------------------------


def subject_bbox(alpha: Image.Image, alpha_threshold: float) -> Box | None:
    """(x0, y0, x1, y1), x1/y1 exclusive, of the pixels with alpha > threshold * 255."""
    mask = np.asarray(alpha.convert("L")) > alpha_threshold * 255
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def crop_box(bbox: Box, padding: float) -> tuple[float, float, float, float]:
    """The square of side int(max(w, h) * (1 + padding)) centred exactly on `bbox`."""
    x0, y0, x1, y1 = bbox
    side = max(1, int(max(x1 - x0, y1 - y0) * (1 + padding)))
    left, top = (x0 + x1 - side) / 2, (y0 + y1 - side) / 2
    return left, top, left + side, top + side


def _crop_resize(src: Image.Image, box: tuple[float, ...], size: int) -> Image.Image:
    """Crop `box` (may be fractional, may leave the image: zeros there) and LANCZOS-resize it."""
    left, top, right, bottom = box
    outer = (math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom))
    inner = (left - outer[0], top - outer[1], right - outer[0], bottom - outer[1])
    return src.crop(outer).resize((size, size), Image.Resampling.LANCZOS, box=inner)


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    """rgb * alpha, as TRELLIS computes it (float32, truncated to uint8)."""
    arr = np.asarray(rgba, dtype=np.float32) / 255
    rgb = arr[..., :3] * arr[..., 3:4]
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def _matte(
    rgb: Image.Image,
    alpha: Image.Image | None,
    padding: float,
    size: int,
    alpha_threshold: float,
) -> tuple[Image.Image, Box, int]:
    """(the size x size result, the subject bbox, the crop side)."""
    rgb = rgb.convert("RGB")
    if alpha is None:
        bbox, src = (0, 0, *rgb.size), rgb
    else:
        if alpha.size != rgb.size:
            raise ValueError(f"alpha is {alpha.size}, image is {rgb.size}")
        bbox = subject_bbox(alpha, alpha_threshold)
        if bbox is None:
            raise NoSubject(f"no subject found above alpha threshold {alpha_threshold}")
        src = rgb.copy()
        src.putalpha(alpha.convert("L"))
    box = crop_box(bbox, padding)
    out = _crop_resize(src, box, size)
    if alpha is not None:
        out = _composite_on_black(out)
    return out, bbox, round(box[2] - box[0])


def center_crop_composite(
    rgb: Image.Image,
    alpha: Image.Image | None,
    padding: float = 0.2,
    size: int = 518,
    alpha_threshold: float = 0.8,
) -> Image.Image:
    """Centre, pad-crop, resize and composite on black; alpha None: the whole image is subject.

    Raises NoSubject (a ValueError) if no alpha value is above the threshold.
    """
    return _matte(rgb, alpha, padding, size, alpha_threshold)[0]


# --- stage --------------------------------------------------------------------------------


def _check_params(padding: float, size: int, alpha_threshold: float, on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be one of {ON_BAD_IMAGE}, not {on_bad_image!r}")
    if padding < 0 or size < 1 or not 0 < alpha_threshold < 1:
        raise ValueError(
            f"need padding >= 0, size >= 1, 0 < alpha_threshold < 1; "
            f"got {padding}, {size}, {alpha_threshold}"
        )


def _read_manifest(in_dir: Path) -> list[dict]:
    path = in_dir / "manifest.parquet"
    if not path.is_file():
        raise MatteError(f"no manifest.parquet in {in_dir} (expected the download stage output)")
    return pd.read_parquet(path).sort_values("id").to_dict("records")


def _process(
    row: dict,
    in_dir: Path,
    out: Path,
    remover: Callable[[Image.Image], Image.Image] | None,
    geometry: dict,
) -> dict:
    """Matte one manifest row into out/images; return its output manifest row."""
    src = in_dir / row["file"]
    rgb = load_rgb(src, row["id"])
    if io.sha256_file(src) != row["sha256"]:
        raise BadImage(row["id"], "sha256 differs from the input manifest (file changed)")
    alpha = remover(rgb) if remover is not None else None
    try:
        img, bbox, side = _matte(rgb, alpha, **geometry)
    except NoSubject as exc:
        raise BadImage(row["id"], str(exc)) from None
    rel = f"images/{row['id']}.png"
    save_png(img, out / rel)
    x0, y0, x1, y1 = bbox
    return {
        "id": row["id"],
        "file": rel,
        "sha256": io.sha256_file(out / rel),
        "source_sha256": row["sha256"],
        **{"x0": x0, "y0": y0, "x1": x1, "y1": y1},
        "crop_size": side,
    }


def _write_outputs(out: Path, rows: list[dict], rejected: list[dict]) -> None:
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r["id"]), schema=MANIFEST_SCHEMA)
    with io.atomic_path(out / "manifest.parquet") as tmp:
        pq.write_table(table, tmp)
    io.write_json(out / "rejected.json", sorted(rejected, key=lambda r: r["item"]))


def run(
    in_dir,
    out_dir,
    remove_background: bool,
    model: str,
    model_dir,
    padding: float,
    size: int,
    alpha_threshold: float,
    on_bad_image: str,
) -> dict:
    """Fill `out_dir` with images/, manifest.parquet and rejected.json; return the counts."""
    _check_params(padding, size, alpha_threshold, on_bad_image)
    in_dir = Path(in_dir)
    items = _read_manifest(in_dir)
    remover = make_remover(model, model_dir) if remove_background else None
    out = io.reset_dir(out_dir)
    geometry = {"padding": padding, "size": size, "alpha_threshold": alpha_threshold}
    rows, rejected = [], []
    for row in tqdm(items, desc="matte", unit="img"):
        try:
            rows.append(_process(row, in_dir, out, remover, geometry))
        except BadImage as exc:
            logger.warning("rejected %s: %s", row["id"], exc.reason)
            rejected.append({"item": row["id"], "reason": exc.reason})
    _write_outputs(out, rows, rejected)
    stats = {
        "accepted": len(rows),
        "rejected": len(rejected),
        "remove_background": bool(remove_background),
        "model": model if remove_background else None,
    }
    logger.info("matte: %s", stats)
    if rejected and on_bad_image == "fail":
        lines = "\n".join(f"  {r['item']}: {r['reason']}" for r in rejected)
        raise MatteError(f"{len(rejected)} bad image(s) in matte (on_bad_image: fail):\n{lines}")
    return stats
