"""Procedural NeuroPBR dataset: tileable PBR materials and their three-view renders.

Families (FAMILIES): bricks (staggered, mortar), tiles (glazed ceramic, grout), wood
(planks with warped grain), brushed_metal (anisotropic streaks, fully metallic),
rusty_metal (paint / rust / bare steel mix, spatially varying metallic), stone (periodic
Worley cobbles) and fabric (plain weave). Every pattern is periodic over the tile: the
noise is band-limited spectral noise on the tile's Fourier grid (at most NOISE_BAND cycles
per tile, drawn independently of the output size, so one seed gives the same material at
any resolution), lattices have integer counts per tile, and normals come from the height
field by wrap-around central differences.

`make_dataset` writes the guide's layout (see the module fresnel.pbr.data). Renders use
the ground-truth maps after their 8-bit PNG round trip, so a clean view equals
to_display(render(load_material(...), lighting)) up to 8-bit rounding. Dirty views add a
soft cast shadow on the key light, blurred smudges and sensor noise; all randomness is
seeded by (seed, sample, view).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from fresnel.images import save_png
from fresnel.io import link_or_copy, reset_dir, write_json
from fresnel.pbr.maps import quantize_maps, save_maps, to_uint8
from fresnel.pbr.shader import Lighting, render, to_display, view_lighting
from fresnel.training.seeding import epoch_seed

FAMILIES = ("bricks", "tiles", "wood", "brushed_metal", "rusty_metal", "stone", "fabric")
NOISE_BAND = 64  # highest noise frequency, cycles per tile
SUPERSAMPLE_MIN = 256  # patterns are evaluated at least at this size, then box-filtered
VIEWS = 3
_MATERIAL_STREAM, _DIRTY_STREAM = 0x3A7, 0xD127

Array = np.ndarray
Layers = dict[str, Array]  # albedo HxWx3, roughness/metallic/height HxW, all in [0,1]


# ---------------------------------------------------------------- periodic primitives


@dataclass(frozen=True)
class Grid:
    """Where a tile is sampled: `size` pixels per side, offset by `shift` (x, y) pixels.

    Patterns are functions of the tile coordinates, periodic with period 1, so an integer
    shift reproduces np.roll of the unshifted tile exactly (the tileability test).
    """

    size: int
    shift: tuple[float, float] = (0.0, 0.0)

    def coords(self) -> tuple[Array, Array]:
        return tile_coords(self.size, self.shift)


def tile_coords(size: int, shift: tuple[float, float] = (0.0, 0.0)) -> tuple[Array, Array]:
    """Pixel-centre coordinates u (columns) and v (rows), in tile units (from 0 to 1 unshifted)."""
    base = np.arange(size) + 0.5
    return np.meshgrid((base + shift[0]) / size, (base + shift[1]) / size)


def spectral_noise(rng: np.random.Generator, grid: Grid, amplitude: Callable) -> Array:
    """Zero-mean, unit-variance periodic noise with spectrum amplitude(fx, fy).

    Coefficients are drawn on a fixed (2*NOISE_BAND)^2 frequency grid, so the noise does not
    depend on the tile size except through which frequencies fit below Nyquist.
    """
    size = grid.size
    freqs = np.arange(-NOISE_BAND, NOISE_BAND)
    fx, fy = np.meshgrid(freqs, freqs)  # fx varies along columns, fy along rows
    coef = rng.standard_normal(fx.shape) + 1j * rng.standard_normal(fx.shape)
    amp = amplitude(fx.astype(float), fy.astype(float))
    amp[NOISE_BAND, NOISE_BAND] = 0.0  # no DC: zero mean
    phase = np.exp(2j * np.pi * (fx * grid.shift[0] + fy * grid.shift[1]) / size)
    keep = (np.abs(fx) < size / 2) & (np.abs(fy) < size / 2)
    spectrum = np.zeros((size, size), dtype=complex)
    np.add.at(spectrum, (fy[keep] % size, fx[keep] % size), (coef * amp * phase)[keep])
    field = np.fft.ifft2(spectrum).real * size * size
    return field / max(np.sqrt((amp**2).sum()), 1e-12)


def fbm(rng: np.random.Generator, grid: Grid, beta: float = 2.0, fmin: float = 1.0) -> Array:
    """Fractal (1/f^beta power) periodic noise."""

    def amplitude(fx, fy):
        f = np.hypot(fx, fy)
        return np.where(f >= fmin, np.maximum(f, 1.0) ** (-beta / 2), 0.0)

    return spectral_noise(rng, grid, amplitude)


def streaks(rng: np.random.Generator, grid: Grid, along_x: float, across_y: float) -> Array:
    """Anisotropic periodic noise: long in x (few x cycles), thin in y (many y cycles)."""
    return spectral_noise(
        rng, grid, lambda fx, fy: np.exp(-((fx / along_x) ** 2) - (fy / across_y) ** 2)
    )


def periodic_blur(image: Array, sigma_px: float) -> Array:
    """Gaussian blur with wrap-around (FFT) over the first two axes."""
    if sigma_px <= 0:
        return image
    size_y, size_x = image.shape[:2]
    gy = np.exp(-2 * (np.pi * sigma_px * np.fft.fftfreq(size_y)) ** 2)
    gx = np.exp(-2 * (np.pi * sigma_px * np.fft.fftfreq(size_x)) ** 2)
    kernel = np.outer(gy, gx)
    if image.ndim == 3:
        kernel = kernel[..., None]
    return np.fft.ifft2(np.fft.fft2(image, axes=(0, 1)) * kernel, axes=(0, 1)).real


def smoothstep(edge0: float, edge1: float, x: Array) -> Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def normals_from_height(height: Array, strength: float) -> Array:
    """Unit tangent-space normals HxWx3 from a periodic height field.

    `strength` is the height amplitude in tile units, so slopes do not depend on the
    resolution. +y is up (decreasing row), matching fresnel.pbr.maps.
    """
    size_y, size_x = height.shape
    dh_dx = (np.roll(height, -1, axis=1) - np.roll(height, 1, axis=1)) * (size_x / 2)
    dh_dy_up = (np.roll(height, 1, axis=0) - np.roll(height, -1, axis=0)) * (size_y / 2)
    normal = np.stack([-strength * dh_dx, -strength * dh_dy_up, np.ones_like(height)], axis=-1)
    return normal / np.linalg.norm(normal, axis=-1, keepdims=True)


def _unit01(x: Array) -> Array:
    """Map unit-variance noise to roughly [0,1] (about +-2.5 sigma), clipped."""
    return np.clip(0.5 + x / 5.0, 0.0, 1.0)


def _rgb(*values: float) -> Array:
    return np.array(values, dtype=float)


def _lerp(a, b, t: Array) -> Array:
    """a + (b - a) * t, where a or b may be colours (last axis 3) and t a grey HxW weight."""
    is_colour = any(np.ndim(x) in (1, 3) for x in (a, b))
    t = np.asarray(t)[..., None] if is_colour and np.ndim(t) == 2 else t
    return a + (b - a) * t


def _random_hue(rng: np.random.Generator, saturation: float, value: float) -> Array:
    """A linear-space colour of random hue (HSV -> RGB)."""
    h = rng.uniform(0, 6)
    c = value * saturation
    x = c * (1 - abs(h % 2 - 1))
    sector = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(h) % 6]
    return np.array(sector) + (value - c)


# ---------------------------------------------------------------------- families


def _grid_cells(u: Array, v: Array, cols: int, rows: int, stagger: bool):
    """Cell ids and distance (tile units) to the nearest cell edge for a brick/tile grid."""
    r = v * rows
    row = np.floor(r)
    c = u * cols + (0.5 * (row % 2) if stagger else 0.0)
    col = np.floor(c) % cols
    fx, fy = c - np.floor(c), r - row
    edge = np.minimum(np.minimum(fx, 1 - fx) / cols, np.minimum(fy, 1 - fy) / rows)
    return ((row % rows) * cols + col).astype(int), edge


def bricks(rng: np.random.Generator, grid: Grid) -> Layers:
    u, v = grid.coords()
    rows, cols = 2 * int(rng.integers(2, 5)), int(rng.integers(2, 5))
    cell, edge = _grid_cells(u, v, cols, rows, stagger=True)
    mortar_w, bevel = rng.uniform(0.004, 0.009), rng.uniform(0.004, 0.01)
    brick = smoothstep(mortar_w, mortar_w + bevel, edge)
    grain = fbm(rng, grid, beta=1.2, fmin=4)
    shade_per_brick = rng.uniform(0.75, 1.2, size=rows * cols)[cell]
    base = _rgb(rng.uniform(0.3, 0.5), rng.uniform(0.1, 0.2), rng.uniform(0.05, 0.1))
    brick_rgb = base * (shade_per_brick * (1 + 0.12 * grain))[..., None]
    mortar_rgb = _rgb(*[rng.uniform(0.3, 0.45)] * 3) * (1 + 0.08 * grain)[..., None]
    return {
        "albedo": _lerp(mortar_rgb, brick_rgb, brick),
        "roughness": np.clip(_lerp(0.95, rng.uniform(0.7, 0.85), brick) + 0.05 * grain, 0, 1),
        "metallic": np.zeros_like(u),
        "height": 0.8 * brick + 0.05 * _unit01(grain),
        "strength": 0.02,
    }


def tiles(rng: np.random.Generator, grid: Grid) -> Layers:
    u, v = grid.coords()
    n = int(rng.integers(3, 7))
    cell, edge = _grid_cells(u, v, n, n, stagger=False)
    grout_w, bevel = rng.uniform(0.003, 0.007), rng.uniform(0.006, 0.014)
    tile = smoothstep(grout_w, grout_w + bevel, edge)
    speckle = fbm(rng, grid, beta=0.8, fmin=8)
    glaze = _random_hue(rng, rng.uniform(0.2, 0.7), rng.uniform(0.3, 0.8))
    tint = rng.uniform(0.9, 1.1, size=n * n)[cell]
    grout = _rgb(*[rng.uniform(0.2, 0.5)] * 3)
    return {
        "albedo": _lerp(grout, glaze * (tint * (1 + 0.03 * speckle))[..., None], tile),
        "roughness": np.clip(_lerp(0.9, rng.uniform(0.12, 0.35), tile) + 0.02 * speckle, 0, 1),
        "metallic": np.zeros_like(u),
        "height": tile * (0.9 + 0.1 * smoothstep(0.0, 0.1 / n, edge)),
        "strength": 0.015,
    }


def wood(rng: np.random.Generator, grid: Grid) -> Layers:
    u, v = grid.coords()
    planks = int(rng.integers(3, 7))
    row = np.floor(v * planks).astype(int)
    fy = v * planks - row
    row = row % planks  # plank id (the tile may be sampled beyond v = 1)
    joints = rng.uniform(0, 1, size=planks)[row]
    joint_dist = np.abs((u - joints + 0.5) % 1.0 - 0.5)
    gap = rng.uniform(0.002, 0.004)
    plank = smoothstep(gap, gap + 0.004, np.minimum(joint_dist, np.minimum(fy, 1 - fy) / planks))
    warp = streaks(rng, grid, along_x=3, across_y=6)
    rings = int(rng.integers(18, 40))
    phase = rng.uniform(0, 1, size=planks)[row]
    grain = 0.5 + 0.5 * np.sin(2 * np.pi * (rings * v + 0.6 * warp + phase))
    grain = grain**3  # thin dark latewood lines
    fibres = streaks(rng, grid, along_x=2, across_y=48)
    light = _rgb(rng.uniform(0.35, 0.6), rng.uniform(0.2, 0.32), rng.uniform(0.08, 0.15))
    dark = light * rng.uniform(0.35, 0.55)
    tint = rng.uniform(0.85, 1.15, size=planks)[row]
    albedo = _lerp(light, dark, grain) * (tint * (1 + 0.05 * fibres))[..., None]
    albedo = _lerp(_rgb(0.03, 0.02, 0.015), albedo, plank)
    return {
        "albedo": albedo,
        "roughness": np.clip(rng.uniform(0.4, 0.6) + 0.15 * grain + 0.03 * fibres, 0, 1),
        "metallic": np.zeros_like(u),
        "height": 0.7 * plank + 0.05 * grain + 0.02 * _unit01(fibres),
        "strength": 0.02,
    }


_METALS = {
    "steel": (0.56, 0.57, 0.58),
    "aluminium": (0.91, 0.92, 0.92),
    "gold": (1.0, 0.71, 0.29),
    "copper": (0.95, 0.64, 0.54),
}


def brushed_metal(rng: np.random.Generator, grid: Grid) -> Layers:
    u, _ = grid.coords()
    metal = _rgb(*list(_METALS.values())[int(rng.integers(len(_METALS)))])
    brush = streaks(rng, grid, along_x=1.5, across_y=60)
    dents = fbm(rng, grid, beta=3.0, fmin=1)
    return {
        "albedo": np.clip(metal * (1 + 0.04 * brush)[..., None], 0, 1),
        "roughness": np.clip(rng.uniform(0.2, 0.4) + 0.06 * brush, 0, 1),
        "metallic": np.ones_like(u),
        "height": 0.1 * _unit01(brush) + 0.4 * _unit01(dents),
        "strength": 0.01,
    }


def rusty_metal(rng: np.random.Generator, grid: Grid) -> Layers:
    wear = fbm(rng, grid, beta=2.2, fmin=1)
    pits = fbm(rng, grid, beta=0.8, fmin=6)
    threshold = rng.uniform(0.0, 0.8)
    rust = smoothstep(threshold, threshold + 0.3, wear + 0.2 * pits)
    bare = smoothstep(threshold - 0.35, threshold - 0.15, wear) * (1 - rust)
    paint = 1 - rust - bare
    paint_rgb = _random_hue(rng, rng.uniform(0.4, 0.8), rng.uniform(0.2, 0.6))
    rust_rgb = _lerp(_rgb(0.3, 0.1, 0.03), _rgb(0.5, 0.22, 0.07), _unit01(pits))
    steel = _rgb(0.6, 0.6, 0.62)
    albedo = paint[..., None] * paint_rgb + rust[..., None] * rust_rgb + bare[..., None] * steel
    roughness = paint * rng.uniform(0.3, 0.55) + rust * 0.9 + bare * rng.uniform(0.25, 0.4)
    return {
        "albedo": albedo,
        "roughness": np.clip(roughness + 0.03 * pits, 0, 1),
        "metallic": bare,
        "height": 0.5 * paint + 0.35 * bare + rust * 0.25 * _unit01(pits),
        "strength": 0.01,
    }


def _worley(rng: np.random.Generator, grid: Grid, points: int) -> tuple[Array, Array, Array]:
    """Periodic Worley noise: nearest and second-nearest distances and the nearest cell id."""
    u, v = grid.coords()
    seeds = rng.uniform(0, 1, size=(points, 2))
    f1, f2 = np.full(u.shape, np.inf), np.full(u.shape, np.inf)
    cell = np.zeros(u.shape, dtype=int)
    for idx, (px, py) in enumerate(seeds):
        dx = np.abs((u - px + 0.5) % 1.0 - 0.5)  # distance on the torus
        dy = np.abs((v - py + 0.5) % 1.0 - 0.5)
        dist = np.hypot(dx, dy)
        closer = dist < f1
        f2 = np.where(closer, f1, np.minimum(f2, dist))
        cell = np.where(closer, idx, cell)
        f1 = np.where(closer, dist, f1)
    return f1, f2, cell


def stone(rng: np.random.Generator, grid: Grid) -> Layers:
    points = int(rng.integers(10, 30))
    f1, f2, cell = _worley(rng, grid, points)
    gap = rng.uniform(0.004, 0.012)
    cobble = smoothstep(gap, gap + 0.03, f2 - f1)
    dome = np.clip(2 * f1 / (f1 + f2), 0, 1)  # 0 at a cobble's centre, 1 on its border
    rough = fbm(rng, grid, beta=1.8, fmin=2)
    base = _rgb(*rng.uniform(0.25, 0.45, size=1).repeat(3)) * _rgb(1.0, 0.95, 0.85)
    tint = rng.uniform(0.7, 1.25, size=points)[cell]
    albedo = base * (tint * (1 + 0.15 * rough))[..., None]
    albedo = _lerp(_rgb(0.12, 0.11, 0.1), albedo, cobble)
    return {
        "albedo": albedo,
        "roughness": np.clip(_lerp(0.95, rng.uniform(0.55, 0.8), cobble) + 0.05 * rough, 0, 1),
        "metallic": np.zeros_like(f1),
        "height": 0.7 * cobble * np.sqrt(1 - 0.6 * dome**2) + 0.06 * _unit01(rough),
        "strength": 0.025,
    }


def fabric(rng: np.random.Generator, grid: Grid) -> Layers:
    u, v = grid.coords()
    threads = 2 * int(rng.integers(4, 12))
    i, j = np.floor(u * threads), np.floor(v * threads)
    fx, fy = u * threads - i, v * threads - j
    warp_on_top = (i + j) % 2 == 0  # plain weave
    warp_h, weft_h = np.sin(np.pi * fx), np.sin(np.pi * fy)
    height = np.where(warp_on_top, 0.5 + 0.5 * warp_h, 0.5 + 0.5 * weft_h)
    height = periodic_blur(height, sigma_px=grid.size / threads / 12)
    fuzz = fbm(rng, grid, beta=0.6, fmin=16)
    warp_rgb = _random_hue(rng, rng.uniform(0.3, 0.9), rng.uniform(0.1, 0.6))
    weft_rgb = _lerp(warp_rgb, _rgb(0.7, 0.7, 0.68), rng.uniform(0, 1))
    albedo = np.where(warp_on_top[..., None], warp_rgb, weft_rgb)
    albedo = albedo * (0.75 + 0.25 * height + 0.05 * fuzz)[..., None]
    return {
        "albedo": albedo,
        "roughness": np.clip(rng.uniform(0.8, 0.95) + 0.04 * fuzz, 0, 1),
        "metallic": np.zeros_like(u),
        "height": height + 0.05 * _unit01(fuzz),
        "strength": 0.008 * 16 / threads,
    }


GENERATORS: dict[str, Callable[[np.random.Generator, Grid], Layers]] = {
    "bricks": bricks,
    "tiles": tiles,
    "wood": wood,
    "brushed_metal": brushed_metal,
    "rusty_metal": rusty_metal,
    "stone": stone,
    "fabric": fabric,
}


def material_name(index: int) -> str:
    return f"{FAMILIES[index % len(FAMILIES)]}_{index:03d}"


def _box_downsample(image: Array, factor: int) -> Array:
    """Mean over factor x factor pixel blocks of an HxW or HxWxC array."""
    if factor == 1:
        return image
    h, w = image.shape[:2]
    blocks = image.reshape(h // factor, factor, w // factor, factor, *image.shape[2:])
    return blocks.mean(axis=(1, 3))


def supersampling(size: int) -> int:
    """Patterns are evaluated at >= SUPERSAMPLE_MIN px and box-filtered to `size`, so thin
    mortar lines and grain do not alias away at the small sizes CPU demos use."""
    return max(1, math.ceil(SUPERSAMPLE_MIN / size))


def generate_material(
    family: str, seed: int, index: int, size: int, shift: tuple[float, float] = (0.0, 0.0)
) -> dict[str, torch.Tensor]:
    """Float maps (no batch dim, fresnel.pbr.maps conventions) of one procedural material.

    `shift` samples the tile offset by (x, y) pixels; an integer shift equals a np.roll.
    Normals are computed at the supersampled resolution, averaged and renormalised.
    """
    if family not in GENERATORS:
        raise ValueError(f"unknown material family {family!r}; choose one of {FAMILIES}")
    rng = np.random.default_rng([_MATERIAL_STREAM, seed, index])
    ss = supersampling(size)
    layers = GENERATORS[family](rng, Grid(size * ss, (shift[0] * ss, shift[1] * ss)))
    normal = _box_downsample(normals_from_height(layers["height"], layers["strength"]), ss)
    normal = normal / np.linalg.norm(normal, axis=-1, keepdims=True)

    def chw(array: Array) -> torch.Tensor:
        array = _box_downsample(array[..., None] if array.ndim == 2 else array, ss)
        return torch.from_numpy(np.clip(array, 0, 1).transpose(2, 0, 1).astype(np.float32))

    return {
        "albedo": chw(layers["albedo"]),
        "roughness": chw(layers["roughness"]),
        "metallic": chw(layers["metallic"]),
        "normal": torch.from_numpy(normal.transpose(2, 0, 1).astype(np.float32)),
    }


# ---------------------------------------------------------------------- renders


def sample_seed(seed: int, sample_index: int) -> int:
    """The lighting seed of one sample (view_lighting(sample_seed, view))."""
    return epoch_seed(seed, sample_index)


def _blobs(rng: np.random.Generator, size: int, count: int, radius: tuple[float, float]) -> Array:
    """Soft random ellipses in [0,1] (their union), blurred."""
    u, v = tile_coords(size)
    mask = np.zeros((size, size))
    for _ in range(count):
        cx, cy = rng.uniform(0, 1, size=2)
        rx, ry = rng.uniform(*radius, size=2)
        angle = rng.uniform(0, np.pi)
        du, dv = u - cx, v - cy
        a = (du * np.cos(angle) + dv * np.sin(angle)) / rx
        b = (-du * np.sin(angle) + dv * np.cos(angle)) / ry
        mask = np.maximum(mask, (a * a + b * b <= 1.0).astype(float))
    return np.clip(periodic_blur(mask, sigma_px=size * rng.uniform(0.02, 0.05)), 0, 1)


def _cast_shadow(rng: np.random.Generator, size: int) -> Array:
    """Soft shadow (1 = lit) of an occluder: a blurred half-plane or a few blobs."""
    if rng.uniform() < 0.5:
        u, v = tile_coords(size)
        angle = rng.uniform(0, 2 * np.pi)
        signed = (u - 0.5) * np.cos(angle) + (v - 0.5) * np.sin(angle) - rng.uniform(-0.3, 0.3)
        shadow = smoothstep(-0.05, 0.05, signed)
    else:
        shadow = _blobs(rng, size, int(rng.integers(1, 4)), (0.1, 0.3))
    return 1.0 - rng.uniform(0.5, 0.9) * shadow


def dirty_view(
    maps: dict[str, torch.Tensor], lighting: Lighting, seed: int, sample_index: int, view: int
) -> Array:
    """Display-space HxWx3 render with a cast shadow on the key light, smudges, noise."""
    rng = np.random.default_rng([_DIRTY_STREAM, seed, sample_index, view])
    size = maps["albedo"].shape[-1]
    key = Lighting(lighting.light_dirs[:1], lighting.light_rgb[:1], lighting.view_dir)
    rest = Lighting(lighting.light_dirs[1:], lighting.light_rgb[1:], lighting.view_dir)
    batched = {name: t.unsqueeze(0) for name, t in maps.items()}
    with torch.no_grad():
        key_rad = render(batched, key)[0].permute(1, 2, 0).double().numpy()
        rest_rad = render(batched, rest)[0].permute(1, 2, 0).double().numpy()
    radiance = key_rad * _cast_shadow(rng, size)[..., None] + rest_rad
    display = to_display(torch.from_numpy(radiance)).numpy()
    smudge = _blobs(rng, size, int(rng.integers(1, 5)), (0.05, 0.2))[..., None]
    haze = rng.uniform(0.15, 0.4) * smudge
    display = display * (1 - haze) + haze * rng.uniform(0.5, 0.8, size=3)
    noise_sigma = rng.uniform(0.005, 0.03)
    display = display + rng.normal(0.0, 1.0, display.shape) * noise_sigma * np.sqrt(0.2 + display)
    return np.clip(display, 0, 1)


def clean_view(maps: dict[str, torch.Tensor], lighting: Lighting) -> torch.Tensor:
    """Display-space [3,H,W] render of maps without batch dim."""
    with torch.no_grad():
        return to_display(render({k: t.unsqueeze(0) for k, t in maps.items()}, lighting))[0]


def _save_rgb(array_hw3: Array, path: Path) -> None:
    save_png(Image.fromarray(np.rint(array_hw3 * 255.0).astype(np.uint8), "RGB"), path)


def make_dataset(
    root: str | os.PathLike,
    n_materials: int,
    samples_per_material: int,
    size: int,
    seed: int,
    dirty: bool = True,
) -> dict:
    """Write root/input/{clean,dirty}/sample_XXXX/{0,1,2}.png, render_metadata.json,
    render_lighting.json and root/output/<material>/*.png; return counts and timing.

    root/input and root/output are emptied first. Material i belongs to family
    FAMILIES[i % 7]; each of its samples is rendered under its own three lightings.
    """
    if n_materials < 1 or samples_per_material < 1 or size < 8:
        raise ValueError(
            f"make_dataset needs n_materials >= 1, samples_per_material >= 1 and size >= 8, got "
            f"{n_materials}, {samples_per_material}, {size}"
        )
    start = time.perf_counter()
    root = Path(root)
    input_dir, output_dir = reset_dir(root / "input"), reset_dir(root / "output")
    metadata, lighting_records = {}, {}
    progress = tqdm(total=n_materials * samples_per_material, desc="pbr synth", unit="sample")
    for m_idx in range(n_materials):
        name = material_name(m_idx)
        exact = generate_material(FAMILIES[m_idx % len(FAMILIES)], seed, m_idx, size)
        save_maps(exact, output_dir / name)
        maps = quantize_maps(exact)  # what a reader of output/ gets back
        for s in range(samples_per_material):
            index = m_idx * samples_per_material + s
            sample = f"sample_{index:04d}"
            lightings = [view_lighting(sample_seed(seed, index), v) for v in range(VIEWS)]
            for view, lighting in enumerate(lightings):
                clean = to_uint8(clean_view(maps, lighting))
                save_png(
                    Image.fromarray(clean, "RGB"), input_dir / "clean" / sample / f"{view}.png"
                )
                if dirty:
                    _save_rgb(
                        dirty_view(maps, lighting, seed, index, view),
                        input_dir / "dirty" / sample / f"{view}.png",
                    )
            metadata[sample] = name
            lighting_records[sample] = [lighting.to_json() for lighting in lightings]
            progress.update()
    progress.close()
    write_json(input_dir / "render_metadata.json", metadata)
    write_json(input_dir / "render_lighting.json", lighting_records)
    return {
        "n_materials": n_materials,
        "n_samples": len(metadata),
        "families": sorted({FAMILIES[i % len(FAMILIES)] for i in range(n_materials)}),
        "size": size,
        "seed": seed,
        "dirty": dirty,
        "seconds": round(time.perf_counter() - start, 3),
    }


def load_lighting(input_dir: str | os.PathLike) -> dict[str, list[Lighting]]:
    """render_lighting.json -> {sample: [Lighting per view]}."""
    path = Path(input_dir) / "render_lighting.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; regenerate the dataset with make_dataset")
    records = json.loads(path.read_text())
    return {sample: [Lighting.from_json(v) for v in views] for sample, views in records.items()}


def prepare_dataset(out_dir, source: str, n_materials: int, samples_per_material: int,
                    size: int, dirty: bool, seed: int) -> dict:  # fmt: skip
    """The pbr_dataset stage: `source` "synthetic" makes one with make_dataset; "local:<dir>"
    places an existing dataset in the guide's layout (hard links, else copies) after
    checking it loads."""
    if source == "synthetic":
        return make_dataset(out_dir, n_materials, samples_per_material, size, seed, dirty)
    from fresnel.pbr.data import PBRDataset, dataset_dirs

    src = Path(source.removeprefix("local:"))
    input_dir, output_dir = dataset_dirs(src)
    entries = PBRDataset(input_dir, output_dir, curriculum_mode=1).entries  # validates
    out_dir = reset_dir(out_dir)
    for tree in (input_dir, output_dir):
        for path in sorted(p for p in tree.rglob("*") if p.is_file()):
            link_or_copy(path, out_dir / path.relative_to(src))
    return {"source": str(src), "entries": len(entries)}
