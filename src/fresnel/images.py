"""Robust image loading: whatever a dataset holds comes back as plain 8-bit RGB.

Alpha is dropped by compositing on black (premultiplying), so transparent regions become
black rather than whatever colour the encoder left under them. ICC profiles are ignored.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fresnel import io

_ALPHA_MODES = {"RGBA", "RGBa", "LA", "PA"}

# ImageNet normalisation (torchvision's), used by every ImageNet-pretrained backbone.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BadImage(ValueError):
    """An image that cannot be used; `path` names it and `reason` says why."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def load_rgb(
    src: str | os.PathLike | BinaryIO | Image.Image, name: str | os.PathLike | None = None
) -> Image.Image:
    """Open, fully decode and normalise an image to 8-bit RGB (EXIF orientation applied).

    `src` is a path, a binary file object or an opened PIL image; `name` labels it in errors.
    Raises BadImage for anything unreadable: missing, empty, truncated, not an image.
    """
    if name is None and not isinstance(src, (str, os.PathLike)):
        name = getattr(src, "filename", None) or getattr(src, "name", None) or "<image>"
    name = str(src if name is None else name)
    if isinstance(src, (str, os.PathLike)):
        if not Path(src).is_file():
            raise BadImage(name, "file not found")
        if Path(src).stat().st_size == 0:
            raise BadImage(name, "empty file (0 bytes)")
    try:
        if isinstance(src, Image.Image):
            return _decode(src)
        with Image.open(src) as img:
            return _decode(img)
    except BadImage as exc:
        raise BadImage(name, exc.reason) from None
    except PermissionError:
        raise BadImage(name, "permission denied: this user cannot read the file") from None
    except UnidentifiedImageError:
        raise BadImage(name, "not a recognised image file") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(name, f"too large to decode safely ({exc})") from None
    except Exception as exc:  # decoders raise OSError, SyntaxError, EOFError, struct.error...
        raise BadImage(name, f"truncated or corrupt image data ({exc})") from None


ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")  # (MPO camera JPEGs hold several frames too: fine)


def _decode(img: Image.Image) -> Image.Image:
    if img.format in ANIMATED_FORMATS and getattr(img, "is_animated", False):
        raise BadImage(
            "image", f"animated {img.format} ({img.n_frames} frames): save the frame to use"
        )
    img.load()  # a full decode, so truncated data raises here and not later
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert a decoded image of any mode to 8-bit RGB without metadata."""
    if img.mode.startswith("I;16") or img.mode == "I":
        grey = np.asarray(img, dtype=np.float64)
        # 16-bit codes 0..65535 map linearly onto 0..255 (65535 / 257 == 255); 32-bit "I"
        # images come from 16-bit files in practice, so they get the same scale
        return _from_grey(np.rint(np.clip(grey, 0, 65535) / 257))
    if img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        # float images are either in [0, 1] or already in 8-bit units
        scale = 255.0 if np.nanmax(grey, initial=0.0) <= 1.0 else 1.0
        return _from_grey(np.rint(np.clip(np.nan_to_num(grey) * scale, 0, 255)))
    if img.mode in _ALPHA_MODES or (img.mode == "P" and "transparency" in img.info):
        return _composite_on_black(img.convert("RGBA"))
    try:
        out = img.convert("RGB")
    except ValueError as exc:
        raise BadImage(
            getattr(img, "filename", "") or "<image>", f"mode {img.mode}: {exc}"
        ) from None
    out.info = {}
    return out


def _from_grey(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.repeat(grey.astype(np.uint8)[..., None], 3, axis=2), "RGB")


def _composite_on_black(rgba: Image.Image) -> Image.Image:
    arr = np.asarray(rgba, dtype=np.uint16)
    rgb = (arr[..., :3] * arr[..., 3:] + 127) // 255  # rounded premultiply
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def save_png(img: Image.Image, path: str | os.PathLike) -> None:
    """Write `img` as PNG atomically; the bytes depend only on the pixels (no metadata)."""
    clean = img.copy()
    clean.info = {}
    with io.atomic_path(path) as tmp:
        clean.save(tmp, format="PNG")
