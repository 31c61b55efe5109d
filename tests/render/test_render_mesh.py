"""The mesh rasteriser's surface outputs: perspective-correct barycentrics that reproduce the
pixel centre, depth against the analytic plane, and attribute interpolation that is affine in 3D.
(Face ids and coverage are tested through `rasterize_faces` in tests/test_avatars_regions.py.)"""

import math

import pytest
import torch

from fresnel.render import Camera
from fresnel.render.mesh import MeshRaster, interpolate, rasterize

CAMERA = Camera(30.0, 28.0, 15.5, 13.0, 32, 28)
IDENTITY = torch.eye(4, dtype=torch.float64)


def rotation_viewmat(angle: float, translation=(0.1, -0.05, 0.3)) -> torch.Tensor:
    """World-to-camera: a rotation about (1, 1, 1) / sqrt(3) and a translation."""
    axis = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64) / math.sqrt(3.0)
    cross = torch.tensor(
        [[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]],
        dtype=torch.float64,
    )
    rotation = torch.eye(3, dtype=torch.float64) + math.sin(angle) * cross
    rotation += (1 - math.cos(angle)) * cross @ cross
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[:3, :3], viewmat[:3, 3] = rotation, torch.tensor(translation, dtype=torch.float64)
    return viewmat


def to_camera(vertices: torch.Tensor, viewmat: torch.Tensor) -> torch.Tensor:
    return vertices @ viewmat[:3, :3].T + viewmat[:3, 3]


def pixel_rays(camera: Camera) -> torch.Tensor:
    """`(H, W, 3)` camera-space rays through the pixel centres, with z = 1."""
    ys, xs = torch.meshgrid(
        torch.arange(camera.height, dtype=torch.float64) + 0.5,
        torch.arange(camera.width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    x, y = (xs - camera.cx) / camera.fx, (ys - camera.cy) / camera.fy
    return torch.stack((x, y, torch.ones_like(x)), -1)


@pytest.fixture(scope="module")
def scene():
    """Overlapping triangles at several depths and tilts, seen through a rotated camera."""
    generator = torch.Generator().manual_seed(3)
    centres = 1.5 * (torch.rand(12, 1, 3, generator=generator, dtype=torch.float64) - 0.5)
    spread = 1.2 * (torch.rand(12, 3, 3, generator=generator, dtype=torch.float64) - 0.5)
    world = (centres + spread).reshape(-1, 3)
    # Put the scene about 1.3 to 3.7 m in front of the rotated camera.
    viewmat = rotation_viewmat(0.7)
    camera_points = to_camera(world, viewmat) + torch.tensor([0.0, 0.0, 2.5], dtype=torch.float64)
    world = (camera_points - viewmat[:3, 3]) @ viewmat[:3, :3]
    faces = torch.arange(len(world)).reshape(-1, 3)
    return world, faces, viewmat, rasterize(world, faces, CAMERA, viewmat)


def test_barycentrics_sum_to_one_and_vanish_on_background(scene):
    _, _, _, raster = scene
    covered = raster.mask
    assert 0.1 < covered.double().mean() < 0.9
    assert raster.barycentrics.shape == (CAMERA.height, CAMERA.width, 3)
    assert torch.allclose(raster.barycentrics[covered].sum(-1), torch.ones(1, dtype=torch.float64))
    assert (raster.barycentrics[~covered] == 0).all() and (raster.depth[~covered] == 0).all()
    assert (raster.barycentrics[covered] >= -1e-6).all()
    assert (raster.depth[covered] > 1.0).all()


def test_interpolated_camera_point_projects_onto_the_pixel_centre(scene):
    world, faces, viewmat, raster = scene
    point = interpolate(raster, to_camera(world, viewmat), faces)  # (H, W, 3)
    covered = raster.mask
    rays = pixel_rays(CAMERA)
    u = CAMERA.fx * point[..., 0] / point[..., 2] + CAMERA.cx
    v = CAMERA.fy * point[..., 1] / point[..., 2] + CAMERA.cy
    centre_u, centre_v = rays[..., 0] * CAMERA.fx + CAMERA.cx, rays[..., 1] * CAMERA.fy + CAMERA.cy
    assert (u - centre_u)[covered].abs().max() < 1e-6
    assert (v - centre_v)[covered].abs().max() < 1e-6
    assert torch.allclose(point[..., 2][covered], raster.depth[covered], rtol=1e-12, atol=0)
    assert (point[~covered] == 0).all()


def test_depth_of_a_tilted_plane_is_the_analytic_plane_depth():
    # The plane n . P = k in camera space, covered by a quad of two triangles.
    normal = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64)
    offset = 2.0
    rays = pixel_rays(CAMERA)
    corner_pixels = [(2, 3), (29, 1), (30, 26), (1, 25)]
    corner_rays = torch.stack([rays[y, x] for x, y in corner_pixels])
    corners = corner_rays * (offset / (corner_rays @ normal))[:, None]
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    raster = rasterize(corners, faces, CAMERA, IDENTITY)
    covered = raster.mask
    assert covered.sum() > 500
    analytic = offset / (rays @ normal)  # the ray's parameter t is its z, as the ray has z = 1
    assert torch.allclose(raster.depth[covered], analytic[covered], rtol=1e-12, atol=0)
    assert {int(f) for f in raster.face_ids[covered].unique()} == {0, 1}


def test_per_vertex_colour_is_affine_in_3d():
    corners = torch.tensor([[-0.6, -0.5, 1.2], [0.8, -0.3, 3.5], [0.1, 0.7, 2.0]]).double()
    mix = torch.tensor([[0.5, -0.2, 0.1], [0.3, 0.4, -0.2], [-0.1, 0.2, 0.3]]).double()
    base = torch.tensor([0.2, 0.1, 0.05]).double()
    colours = corners @ mix.T + base  # an affine function of the 3D point at the vertices
    faces = torch.tensor([[0, 1, 2]])
    raster = rasterize(corners, faces, CAMERA, IDENTITY)
    image = interpolate(raster, colours, faces)
    normal = torch.linalg.cross(corners[1] - corners[0], corners[2] - corners[0])
    rays = pixel_rays(CAMERA)
    pixels = [(14, 13), (10, 9), (18, 15), (16, 20)]
    for x, y in pixels:
        assert raster.face_ids[y, x] == 0, (x, y)
        hit = rays[y, x] * (normal @ corners[0]) / (normal @ rays[y, x])
        assert torch.allclose(image[y, x], hit @ mix.T + base, rtol=0, atol=1e-12), (x, y)
        # Screen-space (not perspective-correct) interpolation misses: the test can tell.
        screen = corners[:, :2] / corners[:, 2:] * torch.tensor([CAMERA.fx, CAMERA.fy])
        screen += torch.tensor([CAMERA.cx, CAMERA.cy])
        matrix = torch.cat((screen.T, torch.ones(1, 3, dtype=torch.float64)))
        weights = torch.linalg.solve(matrix, torch.tensor([x + 0.5, y + 0.5, 1.0]).double())
        assert (weights @ colours - image[y, x]).abs().max() > 1e-3, (x, y)
    assert (image[~raster.mask] == 0).all()


def test_per_corner_attributes_match_per_vertex_ones(scene):
    world, faces, _, raster = scene
    values = torch.rand(len(world), 2, generator=torch.Generator().manual_seed(1)).double()
    per_vertex = interpolate(raster, values, faces)
    per_corner = interpolate(raster, values[faces], faces)
    assert per_vertex.shape == (CAMERA.height, CAMERA.width, 2)
    assert torch.equal(per_vertex, per_corner)
    with pytest.raises(ValueError, match="attributes"):
        interpolate(raster, values[faces][:-1], faces)


def test_chunking_and_dtype(scene):
    world, faces, viewmat, raster = scene
    chunked = rasterize(world, faces, CAMERA, viewmat, chunk_candidates=5)
    assert torch.equal(chunked.face_ids, raster.face_ids)
    assert torch.equal(chunked.barycentrics, raster.barycentrics)
    assert torch.equal(chunked.depth, raster.depth)
    single = rasterize(world.float(), faces, CAMERA, viewmat.float())
    assert isinstance(single, MeshRaster) and single.barycentrics.dtype == torch.float32
    assert single.depth.dtype == torch.float32
