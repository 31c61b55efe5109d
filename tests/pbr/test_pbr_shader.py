"""GGX shader of fresnel.pbr.shader: closed-form cases, symmetries, gradients, lightings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fresnel.pbr.evaluate import rerender_error
from fresnel.pbr.maps import normalize_normals
from fresnel.pbr.shader import (
    Lighting,
    from_display,
    heldout_lighting,
    render,
    shade,
    to_display,
    view_lighting,
)


def random_maps(batch=2, size=8, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=dtype)

    normal = torch.randn(batch, 3, size, size, generator=gen, dtype=dtype) * 0.4
    normal[:, 2] = normal[:, 2].abs() + 0.6
    return {
        "albedo": rand(batch, 3, size, size),
        "roughness": 0.1 + 0.9 * rand(batch, 1, size, size),
        "metallic": rand(batch, 1, size, size),
        "normal": normalize_normals(normal),
    }


def unit(v):
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


LIGHT_DIRS = np.stack([unit([0.3, 0.2, 1.0]), unit([-0.5, 0.4, 0.6]), unit([0.1, -0.9, 0.3])])
LIGHT_RGB = np.array([[2.0, 1.5, 1.0], [0.5, 0.6, 0.7], [1.0, 1.0, 1.0]])
VIEW = unit([0.2, -0.1, 1.0])


def test_lambertian_case_is_exact_and_lights_add_linearly():
    maps = random_maps(dtype=torch.float64)
    maps["metallic"] = torch.zeros_like(maps["metallic"])
    out = shade(maps, LIGHT_DIRS, LIGHT_RGB, VIEW, f0_dielectric=0.0)
    expected = torch.zeros_like(out)
    for light_dir, rgb in zip(LIGHT_DIRS, LIGHT_RGB, strict=True):
        l = torch.as_tensor(light_dir).view(1, 3, 1, 1)  # noqa: E741
        n_dot_l = (maps["normal"] * l).sum(dim=1, keepdim=True).clamp_min(0)
        expected += maps["albedo"] * n_dot_l / math.pi * torch.as_tensor(rgb).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    singles = sum(
        shade(maps, LIGHT_DIRS[i : i + 1], LIGHT_RGB[i : i + 1], VIEW, 0.0) for i in range(3)
    )
    torch.testing.assert_close(out, singles, rtol=1e-12, atol=1e-12)


def test_white_lambertian_facing_a_unit_light_gives_one_over_pi():
    maps = {
        "albedo": torch.ones(1, 3, 2, 2),
        "roughness": torch.ones(1, 1, 2, 2),
        "metallic": torch.zeros(1, 1, 2, 2),
        "normal": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 2, 2),
    }
    out = shade(maps, [[0, 0, 1]], [[1, 1, 1]], [0, 0, 1], f0_dielectric=0.0)
    torch.testing.assert_close(out, torch.full_like(out, 1 / math.pi))


def test_light_below_the_surface_contributes_nothing():
    maps = random_maps()
    maps["normal"] = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand_as(maps["normal"])
    out = shade(maps, [unit([0.3, 0.1, -0.5])], [[5, 5, 5]], VIEW)
    assert torch.count_nonzero(out) == 0


def test_ground_truth_rerendered_against_itself_has_zero_error():
    maps = random_maps(batch=3, size=16)
    errors = rerender_error(maps, {k: v.clone() for k, v in maps.items()}, heldout_lighting(0, 3))
    assert torch.all(errors["rerender_mae"] == 0)
    assert torch.all(errors["rerender_psnr"] == 100.0)


def _rotate_z90(vectors: torch.Tensor, dim: int) -> torch.Tensor:
    x, y, z = vectors.unbind(dim)
    return torch.stack([-y, x, z], dim=dim)


def test_rotating_maps_normals_and_lights_together_rotates_the_image():
    maps = random_maps(batch=2, size=12, dtype=torch.float64)
    dirs, view = torch.as_tensor(LIGHT_DIRS), torch.as_tensor(VIEW)
    original = shade(maps, dirs, LIGHT_RGB, view)
    rotated = {k: torch.rot90(v, 1, dims=(-2, -1)) for k, v in maps.items()}
    rotated["normal"] = _rotate_z90(rotated["normal"], dim=1)
    out = shade(rotated, _rotate_z90(dirs, 1), LIGHT_RGB, _rotate_z90(view, 0))
    torch.testing.assert_close(out, torch.rot90(original, 1, dims=(-2, -1)), rtol=1e-12, atol=1e-12)
    # the check has teeth: rotating the normal map but not the lights changes the image
    lights_fixed = shade(rotated, dirs, LIGHT_RGB, view)
    assert (lights_fixed - torch.rot90(original, 1, dims=(-2, -1))).abs().max() > 1e-2


def test_any_rotation_of_normals_lights_and_view_keeps_per_pixel_shading():
    maps = random_maps(batch=1, size=6, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(3)).double())
    rot = q * torch.sign(torch.det(q))  # a proper rotation
    dirs, view = torch.as_tensor(LIGHT_DIRS), torch.as_tensor(VIEW)
    rotated_normals = torch.einsum("ij,bjhw->bihw", rot, maps["normal"])
    out = shade({**maps, "normal": rotated_normals}, dirs @ rot.T, LIGHT_RGB, rot @ view)
    torch.testing.assert_close(out, shade(maps, dirs, LIGHT_RGB, view), rtol=1e-11, atol=1e-12)


def test_specular_peaks_near_the_mirror_direction_for_low_roughness():
    maps = {
        "albedo": torch.full((1, 3, 1, 1), 0.9),
        "roughness": torch.full((1, 1, 1, 1), 0.15),
        "metallic": torch.ones(1, 1, 1, 1),
        "normal": torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1),
    }
    light = [math.sin(math.radians(40)), 0.0, math.cos(math.radians(40))]
    angles = np.arange(-80, 81, 2)  # view direction in the x-z plane, degrees from +z
    radiance = [
        float(
            shade(
                maps,
                [light],
                [[1, 1, 1]],
                [math.sin(math.radians(a)), 0, math.cos(math.radians(a))],
            ).mean()
        )
        for a in angles
    ]
    assert abs(angles[int(np.argmax(radiance))] - (-40)) <= 2
    assert max(radiance) > 20 * radiance[list(angles).index(40)]


def test_gradients_match_finite_differences_in_float64():
    maps = random_maps(batch=1, size=3, seed=5, dtype=torch.float64)
    leaves = [maps[k].clone().requires_grad_(True) for k in ("albedo", "roughness", "metallic")]
    normal = maps["normal"].clone().requires_grad_(True)

    def fn(albedo, roughness, metallic, normal):
        out = shade(
            {"albedo": albedo, "roughness": roughness, "metallic": metallic, "normal": normal},
            LIGHT_DIRS,
            LIGHT_RGB,
            VIEW,
        )
        return to_display(out)

    assert torch.autograd.gradcheck(fn, (*leaves, normal), eps=1e-6, atol=1e-5)
    loss = fn(*leaves, normal).sum()
    loss.backward()
    assert all(torch.isfinite(t.grad).all() for t in (*leaves, normal))


def test_display_tone_map_is_monotonic_bounded_and_invertible():
    radiance = torch.tensor([0.0, 1e-4, 0.01, 0.3, 1.0, 5.0, 100.0], dtype=torch.float64)
    display = to_display(radiance)
    assert display[0] == 0 and torch.all(display < 1) and torch.all(display.diff() > 0)
    torch.testing.assert_close(from_display(display), radiance, rtol=1e-6, atol=1e-9)
    assert abs(float(to_display(torch.tensor(1.0))) - 0.7354) < 1e-3  # sRGB(0.5)


def test_lighting_json_round_trip_and_bad_record_error():
    lighting = view_lighting(7, 1)
    assert Lighting.from_json(lighting.to_json()) == lighting
    with pytest.raises(ValueError, match="light_dirs"):
        Lighting.from_json({"light_dirs": [[0, 0, 1]], "view_dir": [0, 0, 1]})


def test_view_lightings_are_deterministic_distinct_and_above_the_surface():
    views = [view_lighting(11, v) for v in range(3)]
    assert views == [view_lighting(11, v) for v in range(3)]
    keys = np.array([v.light_dirs[0] for v in views])
    assert np.all(keys[:, 2] > 0.4)  # elevation >= 30 deg
    cosines = keys @ keys.T
    assert np.all(cosines[~np.eye(3, dtype=bool)] < 0.9)  # key lights differ between views
    tilts = [math.degrees(math.acos(v.view_dir[2])) for v in views]
    assert all(t <= 10.0 + 1e-9 for t in tilts) and len(set(v.view_dir for v in views)) == 3


def test_heldout_lightings_are_never_dataset_lightings():
    used = {view_lighting(seed, v) for seed in range(50) for v in range(3)}
    heldout = heldout_lighting(0, 8)
    assert len(set(heldout)) == 8 and not used & set(heldout)
    assert heldout == heldout_lighting(0, 8)


def test_render_matches_shade_and_works_for_any_batch():
    maps = random_maps(batch=5, size=4)
    lighting = view_lighting(0, 0)
    out = render(maps, lighting)
    assert out.shape == (5, 3, 4, 4) and torch.all(out >= 0)
    single = render({k: v[2:3] for k, v in maps.items()}, lighting)
    torch.testing.assert_close(out[2:3], single)
