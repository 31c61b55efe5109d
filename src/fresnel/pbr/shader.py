"""Differentiable metallic-roughness GGX shading of a flat PBR material tile.

Scene: the tile lies in the z=0 plane, the camera is orthographic, lights are directional
(no cast shadows: the clean dataset renders and the re-render metric use exactly this).
All vectors share the tangent frame of fresnel.pbr.maps (+x right, +y up, +z out).

    radiance = sum over lights of (kd * albedo / pi + D * Vis * F) * E * max(n.l, 0)

- F0 = lerp(f0_dielectric, albedo, metallic); kd = (1 - F) * (1 - metallic)
- alpha = max(roughness^2, ALPHA_MIN); D = GGX (Trowbridge-Reitz)
- Vis = G / (4 n.l n.v) with G the separable Smith GGX masking-shadowing (exact G1)
- F = Schlick with f90 = clamp(50 * mean(F0), 0, 1): the Filament / UE4 "specular
  occlusion" convention. For F0 >= 0.02 it is plain Schlick (f90 = 1); F0 = 0 switches
  specular off entirely, so metallic = 0 with f0_dielectric = 0 is an exact Lambertian.

`to_display` maps radiance to [0,1] for PNGs: Reinhard x / (1 + x) then the sRGB transfer
curve; `from_display` is its exact inverse on [0,1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

ALPHA_MIN = 1e-3  # keeps D finite for a mirror-smooth surface (roughness 0)
NDOTV_MIN = 1e-4
F0_DIELECTRIC = 0.04

Vec3 = tuple[float, float, float]


def _as_tensor(values, like: torch.Tensor) -> torch.Tensor:
    if isinstance(values, torch.Tensor):  # keeps gradients flowing into the lights
        return values.to(like.device, like.dtype)
    return torch.as_tensor(np.asarray(values, dtype=np.float64)).to(like.device, like.dtype)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the channel dim of [B,3,H,W] with a broadcastable [1,3,1,1]."""
    return (a * b).sum(dim=1, keepdim=True)


def ggx_distribution(n_dot_h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    a2 = alpha * alpha
    denom = n_dot_h * n_dot_h * (a2 - 1.0) + 1.0
    return a2 / (math.pi * denom * denom)


def smith_visibility(n_dot_l: torch.Tensor, n_dot_v: torch.Tensor, alpha: torch.Tensor):
    """G / (4 n.l n.v) for separable Smith GGX: finite at n.l = 0 (no division by n.l)."""
    a2 = alpha * alpha
    lam_l = n_dot_l + torch.sqrt(a2 + (1.0 - a2) * n_dot_l * n_dot_l)
    lam_v = n_dot_v + torch.sqrt(a2 + (1.0 - a2) * n_dot_v * n_dot_v)
    return 1.0 / (lam_l * lam_v)


def schlick_fresnel(v_dot_h: torch.Tensor, f0: torch.Tensor) -> torch.Tensor:
    f90 = (50.0 * f0.mean(dim=1, keepdim=True)).clamp(0.0, 1.0)
    return f0 + (f90 - f0) * (1.0 - v_dot_h).clamp(0.0, 1.0) ** 5


def _unit(vector: torch.Tensor) -> torch.Tensor:
    return vector / vector.norm().clamp_min(1e-12)


def shade(
    maps: dict[str, torch.Tensor],
    light_dirs,
    light_rgb,
    view_dir,
    f0_dielectric: float = F0_DIELECTRIC,
) -> torch.Tensor:
    """Linear radiance [B,3,H,W] of batched maps under directional lights.

    light_dirs [L,3] point toward the lights (normalised here), light_rgb [L,3] is each
    light's irradiance E at normal incidence, view_dir [3] points toward the camera.
    Lights are summed one at a time so memory stays at a few [B,3,H,W] buffers.
    """
    albedo, normal = maps["albedo"], maps["normal"]
    roughness, metallic = maps["roughness"], maps["metallic"]
    dirs, rgb = _as_tensor(light_dirs, albedo), _as_tensor(light_rgb, albedo)
    if dirs.dim() != 2 or dirs.shape[1] != 3 or rgb.shape != dirs.shape:
        raise ValueError(
            f"light_dirs and light_rgb must both be [L,3], got {dirs.shape}, {rgb.shape}"
        )
    v = _unit(_as_tensor(view_dir, albedo)).view(1, 3, 1, 1)
    alpha = (roughness * roughness).clamp_min(ALPHA_MIN)
    f0 = f0_dielectric + (albedo - f0_dielectric) * metallic
    n_dot_v = _dot(normal, v).clamp_min(NDOTV_MIN)
    radiance = torch.zeros_like(albedo)
    for light_dir, irradiance in zip(dirs, rgb, strict=True):
        l = _unit(light_dir).view(1, 3, 1, 1)  # noqa: E741 - the usual BRDF symbol
        h = _unit(l + v)
        n_dot_l = _dot(normal, l).clamp_min(0.0)
        n_dot_h = _dot(normal, h).clamp_min(0.0)
        fresnel = schlick_fresnel(_dot(v, h).clamp(0.0, 1.0), f0)
        diffuse = (1.0 - fresnel) * (1.0 - metallic) * albedo / math.pi
        specular = ggx_distribution(n_dot_h, alpha) * smith_visibility(n_dot_l, n_dot_v, alpha)
        radiance = radiance + (diffuse + specular * fresnel) * irradiance.view(1, 3, 1, 1) * n_dot_l
    return radiance


@dataclass(frozen=True)
class Lighting:
    """One view's lights and camera direction (all unit vectors, toward light / camera)."""

    light_dirs: tuple[Vec3, ...]
    light_rgb: tuple[Vec3, ...]
    view_dir: Vec3

    def to_json(self) -> dict:
        return {
            "light_dirs": [list(d) for d in self.light_dirs],
            "light_rgb": [list(c) for c in self.light_rgb],
            "view_dir": list(self.view_dir),
        }

    @classmethod
    def from_json(cls, data: dict) -> Lighting:
        try:
            return cls(
                light_dirs=tuple(_vec3(d) for d in data["light_dirs"]),
                light_rgb=tuple(_vec3(c) for c in data["light_rgb"]),
                view_dir=_vec3(data["view_dir"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(
                f"lighting record {data!r} is malformed ({exc}); it needs light_dirs [[x,y,z],...],"
                " light_rgb [[r,g,b],...] and view_dir [x,y,z]"
            ) from None


def _vec3(values: Sequence[float]) -> Vec3:
    x, y, z = (float(v) for v in values)
    return (x, y, z)


def render(
    maps: dict[str, torch.Tensor], lighting: Lighting, f0_dielectric: float = F0_DIELECTRIC
) -> torch.Tensor:
    """shade() under a Lighting record."""
    return shade(maps, lighting.light_dirs, lighting.light_rgb, lighting.view_dir, f0_dielectric)


def srgb_encode(linear: torch.Tensor) -> torch.Tensor:
    low = linear * 12.92
    high = 1.055 * linear.clamp_min(0.0031308) ** (1 / 2.4) - 0.055
    return torch.where(linear <= 0.0031308, low, high)


def srgb_decode(encoded: torch.Tensor) -> torch.Tensor:
    low = encoded / 12.92
    high = ((encoded.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4
    return torch.where(encoded <= 0.04045, low, high)


def to_display(radiance: torch.Tensor) -> torch.Tensor:
    """Linear radiance >= 0 -> [0,1): Reinhard x/(1+x), then the sRGB curve (no clamp)."""
    radiance = radiance.clamp_min(0.0)
    return srgb_encode(radiance / (1.0 + radiance))


def from_display(display: torch.Tensor) -> torch.Tensor:
    """Inverse of to_display for values in [0,1) (1.0 would be infinite radiance)."""
    compressed = srgb_decode(display.clamp(0.0, 1.0 - 1e-6))
    return compressed / (1.0 - compressed)


def _direction(azimuth_deg: float, elevation_deg: float) -> Vec3:
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    return (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))


def _tint(rng: np.random.Generator, spread: float) -> Vec3:
    tint = 1.0 + rng.uniform(-spread, spread, size=3)
    return _vec3(tint / tint.mean())


def _scaled(color: Vec3, intensity: float) -> Vec3:
    return _vec3([c * intensity for c in color])


_VIEW_STREAM, _HELDOUT_STREAM = 0x5EED, 0xE7A1  # separate random streams per use


def view_lighting(seed: int, view_idx: int) -> Lighting:
    """The lighting of dataset view `view_idx` (0..2) of the sample seeded `seed`.

    A key light circles the tile (views 120 deg apart plus jitter, elevation 30-65 deg),
    a dim fill light sits opposite, a faint sky light is overhead; the camera tilts at most
    10 deg from the normal. Irradiances put a white surface near the middle of the display
    range.
    """
    base = np.random.default_rng([_VIEW_STREAM, seed]).uniform(0.0, 360.0)
    rng = np.random.default_rng([_VIEW_STREAM, seed, view_idx])
    key_az = base + 120.0 * view_idx + rng.uniform(-20.0, 20.0)
    key = _direction(key_az, rng.uniform(30.0, 65.0))
    fill = _direction(key_az + 180.0 + rng.uniform(-30.0, 30.0), rng.uniform(20.0, 50.0))
    sky = _direction(rng.uniform(0.0, 360.0), rng.uniform(75.0, 90.0))
    view = _direction(rng.uniform(0.0, 360.0), 90.0 - rng.uniform(0.0, 10.0))
    return Lighting(
        light_dirs=(key, fill, sky),
        light_rgb=(
            _scaled(_tint(rng, 0.08), rng.uniform(2.2, 3.2)),
            _scaled(_tint(rng, 0.08), rng.uniform(0.3, 0.6)),
            _scaled(_tint(rng, 0.05), rng.uniform(0.15, 0.3)),
        ),
        view_dir=view,
    )


def heldout_lighting(seed: int, k: int) -> list[Lighting]:
    """k lightings from a random stream the dataset never uses, for re-render evaluation.

    Each has one key light anywhere over the hemisphere above 15 deg (covering directions the
    dataset's three views skip), a dim fill, and a camera tilted up to 25 deg.
    """
    rng = np.random.default_rng([_HELDOUT_STREAM, seed])
    lightings = []
    for _ in range(k):
        key_az = rng.uniform(0.0, 360.0)
        lightings.append(
            Lighting(
                light_dirs=(
                    _direction(key_az, rng.uniform(15.0, 80.0)),
                    _direction(key_az + 180.0, rng.uniform(30.0, 60.0)),
                ),
                light_rgb=(
                    _scaled(_tint(rng, 0.1), rng.uniform(2.0, 3.2)),
                    _scaled(_tint(rng, 0.1), rng.uniform(0.2, 0.5)),
                ),
                view_dir=_direction(rng.uniform(0.0, 360.0), 90.0 - rng.uniform(0.0, 25.0)),
            )
        )
    return lightings
