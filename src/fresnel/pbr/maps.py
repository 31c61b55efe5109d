"""PBR map conventions shared by the NeuroPBR dataset, models, losses and evaluation.

Tensors (float32): albedo [B,3,H,W] in [0,1] (linear values, used as stored), roughness
[B,1,H,W] and metallic [B,1,H,W] in [0,1], normal [B,3,H,W] unit tangent-space vectors with
+x to the right (increasing column), +y up (decreasing row, OpenGL convention) and +z out of
the surface. The packed target is [8,H,W] (or [B,8,H,W]): albedo 0:3, roughness 3,
metallic 4, normal 5:8.

On disk a material is a folder with four 8-bit PNGs: albedo.png (RGB as-is),
roughness.png and metallic.png (grey), normal.png (RGB = n * 0.5 + 0.5).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fresnel.images import BadImage, load_rgb, save_png

MAPS = ("albedo", "roughness", "metallic", "normal")
MAP_CHANNELS = {"albedo": 3, "roughness": 1, "metallic": 1, "normal": 3}
TARGET_CHANNELS = sum(MAP_CHANNELS.values())
NUM_VIEWS = 3  # every model input is three renders of one material
GREY_MAPS = ("roughness", "metallic")


def _slices() -> dict[str, slice]:
    out, start = {}, 0
    for name in MAPS:
        out[name] = slice(start, start + MAP_CHANNELS[name])
        start += MAP_CHANNELS[name]
    return out


SLICES = _slices()


def split_maps(packed: torch.Tensor) -> dict[str, torch.Tensor]:
    """[8,H,W] or [B,8,H,W] -> {map name: [C,H,W] or [B,C,H,W]} (views, no copy)."""
    channel_dim = packed.dim() - 3
    if packed.dim() not in (3, 4) or packed.shape[channel_dim] != TARGET_CHANNELS:
        raise ValueError(
            f"packed PBR target must be [8,H,W] or [B,8,H,W], got {tuple(packed.shape)}"
        )
    return {
        name: packed.narrow(channel_dim, s.start, s.stop - s.start) for name, s in SLICES.items()
    }


def join_maps(maps: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of split_maps: concatenate the four maps along the channel dim."""
    missing = [name for name in MAPS if name not in maps]
    if missing:
        raise KeyError(f"PBR map dict lacks {missing}; it needs all of {list(MAPS)}")
    channel_dim = maps["albedo"].dim() - 3
    return torch.cat([maps[name] for name in MAPS], dim=channel_dim)


def normalize_normals(normal: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Unit-length normals along the channel dim (3rd from last); zero vectors become +z."""
    length = normal.norm(dim=-3, keepdim=True)
    plus_z = torch.zeros_like(normal)
    plus_z.narrow(-3, 2, 1).fill_(1.0)
    return torch.where(length > eps, normal / length.clamp_min(eps), plus_z)


def encode_normal(normal: torch.Tensor) -> torch.Tensor:
    """Unit normals -> the [0,1] PNG encoding n * 0.5 + 0.5."""
    return normal * 0.5 + 0.5


def decode_normal(encoded: torch.Tensor) -> torch.Tensor:
    """[0,1] PNG encoding -> unit normals (renormalised: 8-bit codes are not unit length)."""
    return normalize_normals(encoded * 2.0 - 1.0)


def resize_chw(image: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize [C,H,W] or [B,C,H,W] (bilinear, antialiased when shrinking); no-op at size."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(image.shape[-2:]) == hw:
        return image
    batched = image if image.dim() == 4 else image.unsqueeze(0)
    shrink = hw[0] < batched.shape[-2] or hw[1] < batched.shape[-1]
    out = F.interpolate(batched, size=hw, mode="bilinear", align_corners=False, antialias=shrink)
    return out if image.dim() == 4 else out.squeeze(0)


def _png_to_chw(path: Path) -> torch.Tensor:
    rgb = np.asarray(load_rgb(path), dtype=np.float32) / 255.0
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())


def load_material(folder: str | os.PathLike, size: int | None = None) -> dict[str, torch.Tensor]:
    """Read a material folder's four PNGs -> {name: [C,S,S]} (S = size, or native if None).

    Normals are resized in their encoded form and renormalised afterwards.
    """
    folder = Path(folder)
    missing = [f"{name}.png" for name in MAPS if not (folder / f"{name}.png").is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder}: material folder lacks {missing}; every material needs "
            f"{[f'{m}.png' for m in MAPS]}"
        )
    maps = {}
    for name in MAPS:
        try:
            image = _png_to_chw(folder / f"{name}.png")
        except BadImage as exc:
            raise BadImage(exc.path, f"{exc.reason}; re-export this map") from None
        if name in GREY_MAPS:
            image = image[:1]
        maps[name] = image if size is None else resize_chw(image, size).clamp(0, 1)
    maps["normal"] = decode_normal(maps["normal"])
    _check_same_size(folder, maps)
    return maps


def _check_same_size(folder: Path, maps: dict[str, torch.Tensor]) -> None:
    sizes = {name: tuple(t.shape[-2:]) for name, t in maps.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"{folder}: maps differ in size {sizes}; export them at one resolution")


def to_uint8(values: torch.Tensor) -> np.ndarray:
    """[C,H,W] in [0,1] -> HxWxC uint8 (round to nearest)."""
    array = values.detach().to(torch.float32).clamp(0, 1).cpu().numpy()
    return np.rint(array * 255.0).astype(np.uint8).transpose(1, 2, 0)


def map_images(maps: dict[str, torch.Tensor]) -> dict[str, Image.Image]:
    """Maps without batch dim -> the PIL images save_maps writes (grey maps in mode L)."""
    images = {}
    for name in MAPS:
        values = encode_normal(maps[name]) if name == "normal" else maps[name]
        array = to_uint8(values)
        images[name] = (
            Image.fromarray(array[..., 0], "L")
            if name in GREY_MAPS
            else Image.fromarray(array, "RGB")
        )
    return images


def save_maps(maps: dict[str, torch.Tensor], folder: str | os.PathLike) -> None:
    """Write {albedo,roughness,metallic,normal}.png for maps without batch dim, atomically."""
    for name, image in map_images(maps).items():
        save_png(image, Path(folder) / f"{name}.png")


def quantize_maps(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What save_maps + load_material return: maps rounded through their 8-bit PNG encoding."""
    out = {}
    for name, image in map_images(maps).items():
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        out[name] = torch.from_numpy(np.ascontiguousarray(array))
    out["normal"] = decode_normal(out["normal"])
    return out
