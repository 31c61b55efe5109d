"""VPOG's mesh renderer and built-in objects: a box at a known pose against its analytic
silhouette (convex hull of the projected corners), ray-box depth and per-side texture colours;
background, determinism, texture sampling, diameters and the trimesh-less `load_mesh`."""

import itertools
import math

import pytest
import torch

from fresnel.vpog.mesh_render import render_mesh, sample_texture
from fresnel.vpog.objects import box, cylinder, tetra

SIZE = 96
K = torch.tensor([[330.0, 0.0, 47.0], [0.0, 320.0, 50.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
BOX_SIZE = (0.10, 0.07, 0.05)


def rodrigues(axis_angle) -> torch.Tensor:
    vector = torch.tensor(axis_angle, dtype=torch.float64)
    angle = float(vector.norm())
    x, y, z = (vector / angle).tolist()
    cross = torch.tensor([[0, -z, y], [z, 0, -x], [-y, x, 0]], dtype=torch.float64)
    return (
        torch.eye(3, dtype=torch.float64)
        + math.sin(angle) * cross
        + (1 - math.cos(angle)) * (cross @ cross)
    )


def make_pose(axis_angle=(0.6, -0.8, 0.35), t=(0.006, -0.004, 0.42)) -> torch.Tensor:
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3], pose[:3, 3] = rodrigues(axis_angle), torch.tensor(t, dtype=torch.float64)
    return pose


POSE = make_pose()


def pixel_rays() -> torch.Tensor:
    """(H, W, 3) camera rays through the pixel centres (j + 0.5, i + 0.5), with z = 1."""
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    x, y = (u.double() - K[0, 2]) / K[0, 0], (v.double() - K[1, 2]) / K[1, 1]
    return torch.stack((x, y, torch.ones_like(x)), -1)


def ray_box(half: torch.Tensor, pose: torch.Tensor):
    """Slab test per pixel: camera depth of the first hit on the box (inf for a miss), the
    entered side as (axis, sign), and whether two sides tie for the entry (an edge)."""
    rotation, translation = pose[:3, :3], pose[:3, 3]
    origin = -rotation.T @ translation
    direction = pixel_rays() @ rotation  # object-frame directions, parameter t = camera z
    with torch.no_grad():
        t1, t2 = (-half - origin) / direction, (half - origin) / direction
    near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
    enter, axis = near.max(-1)
    leave = far.min(-1).values
    depth = torch.where(enter <= leave, enter, torch.inf)
    sign = -direction.gather(-1, axis[..., None])[..., 0].sign()
    two = near.topk(2, dim=-1).values
    return depth, axis, sign.long(), (two[..., 0] - two[..., 1]) < 1e-9


def convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Andrew's monotone chain, counter-clockwise in (x, y)."""
    points = sorted(set(points))

    def turn(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def chain(seq):
        out = []
        for p in seq:
            while len(out) >= 2 and turn(out[-2], out[-1], p) <= 0:
                out.pop()
            out.append(p)
        return out[:-1]

    return chain(points) + chain(points[::-1])


def inside_distance(hull, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels) from each point to the hull's border, positive inside."""
    sides = []
    for (ax, ay), (bx, by) in zip(hull, hull[1:] + hull[:1], strict=True):
        length = math.hypot(bx - ax, by - ay)
        sides.append(((bx - ax) * (y - ay) - (by - ay) * (x - ax)) / length)
    return torch.stack(sides).amin(0)


@pytest.fixture(scope="module")
def box_mesh():
    return box(BOX_SIZE, seed=0)


@pytest.fixture(scope="module")
def rendered(box_mesh):
    vertices = box_mesh.vertices.double()
    args = (vertices, box_mesh.faces, K, POSE, SIZE, SIZE)
    return render_mesh(*args, uv=box_mesh.uv, texture=box_mesh.texture)


def test_silhouette_is_the_convex_hull_of_the_projected_corners(box_mesh, rendered):
    camera_points = box_mesh.vertices.double() @ POSE[:3, :3].T + POSE[:3, 3]
    projected = camera_points @ K.T
    corners = [tuple(p) for p in (projected[:, :2] / projected[:, 2:]).tolist()]
    hull = convex_hull(corners)
    assert len(hull) == 6  # three sides seen
    v, u = torch.meshgrid(torch.arange(SIZE) + 0.5, torch.arange(SIZE) + 0.5, indexing="ij")
    distance = inside_distance(hull, u.double(), v.double())
    band = 1e-6  # pixels whose centre lies this close to the outline may go either way
    assert torch.equal(rendered.mask[distance.abs() > band], (distance > 0)[distance.abs() > band])
    area = 0.5 * sum(
        ax * by - bx * ay for (ax, ay), (bx, by) in zip(hull, hull[1:] + hull[:1], strict=True)
    )
    perimeter = sum(math.dist(a, b) for a, b in zip(hull, hull[1:] + hull[:1], strict=True))
    assert abs(int(rendered.mask.sum()) - area) < perimeter / 2
    assert 0.15 < rendered.mask.double().mean() < 0.6


def test_depth_is_the_ray_box_entry_depth(box_mesh, rendered):
    half = box_mesh.vertices.double().amax(0)  # the float32 corners
    depth, _, _, _ = ray_box(half, POSE)
    hit = depth.isfinite()
    assert torch.equal(hit & rendered.mask, rendered.mask)
    mask = rendered.mask
    assert torch.allclose(rendered.depth[mask], depth[mask], rtol=1e-9, atol=0)
    centre = SIZE // 2
    assert mask[centre, centre]
    assert math.isclose(rendered.depth[centre, centre], depth[centre, centre], rel_tol=1e-9)


def test_each_side_shows_its_texture_colour(box_mesh):
    palette = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0, 1, 1], [1, 0, 1]], dtype=torch.float32
    )
    texture = palette.T.reshape(3, 2, 3).repeat_interleave(64, 1).repeat_interleave(64, 2)
    vertices = box_mesh.vertices.double()
    out = render_mesh(
        vertices, box_mesh.faces, K, POSE, SIZE, SIZE, uv=box_mesh.uv, texture=texture
    )

    half = box_mesh.vertices.double().amax(0)  # the float32 corners
    _, axis, sign, edge = ray_box(half, POSE)
    corners = vertices[box_mesh.faces]
    normals = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    side_colour = {}
    for face, normal in enumerate(normals):
        side_axis = int(normal.abs().argmax())
        u, v = box_mesh.uv[face].mean(0).tolist()
        cell = int((1 - v) * 2) * 3 + int(u * 3)  # the atlas cell the side's UVs sit in
        side_colour[(side_axis, int(normal[side_axis].sign()))] = palette[cell]
    assert len({tuple(c.tolist()) for c in side_colour.values()}) == 6
    checked = out.mask & ~edge
    expected = torch.stack(
        [side_colour[(int(a), int(s))] for a, s in zip(axis[checked], sign[checked], strict=True)]
    )
    assert torch.equal(out.rgb.permute(1, 2, 0)[checked], expected)
    assert len(expected.unique(dim=0)) == 3  # three sides seen


def test_vertex_colours_are_affine_in_3d_and_background_is_filled(box_mesh):
    vertices = box_mesh.vertices.double()
    colours = vertices / torch.tensor(BOX_SIZE, dtype=torch.float64) + 0.5
    out = render_mesh(vertices, box_mesh.faces, K, POSE, SIZE, SIZE, vertex_colors=colours)
    depth, _, _, _ = ray_box(vertices.amax(0), POSE)
    camera_hit = pixel_rays() * depth[..., None]
    object_hit = (camera_hit - POSE[:3, 3]) @ POSE[:3, :3]
    expected = object_hit / torch.tensor(BOX_SIZE, dtype=torch.float64) + 0.5
    rgb = out.rgb.permute(1, 2, 0)
    assert torch.allclose(rgb[out.mask], expected[out.mask], rtol=0, atol=1e-9)
    assert (rgb[~out.mask] == 0).all() and (out.depth[~out.mask] == 0).all()

    grey = render_mesh(vertices, box_mesh.faces, K, POSE, SIZE, SIZE, background=(0.2, 0.3, 0.4))
    assert torch.equal(grey.rgb[:, ~grey.mask].T.unique(dim=0), torch.tensor([[0.2, 0.3, 0.4]]))
    assert (grey.rgb[:, grey.mask] == 1).all()  # no colours: white


def test_rendering_and_objects_are_deterministic(box_mesh, rendered):
    again = box(BOX_SIZE, seed=0)
    assert torch.equal(again.texture, box_mesh.texture) and torch.equal(again.uv, box_mesh.uv)
    assert not torch.equal(box(BOX_SIZE, seed=1).texture, box_mesh.texture)
    args = (again.vertices.double(), again.faces, K, POSE, SIZE, SIZE)
    second = render_mesh(*args, uv=again.uv, texture=again.texture)
    assert torch.equal(second.rgb, rendered.rgb) and torch.equal(second.depth, rendered.depth)
    assert torch.equal(second.mask, rendered.mask)
    assert rendered.rgb.shape == (3, SIZE, SIZE) and rendered.mask.dtype == torch.bool
    assert rendered.rgb[:, rendered.mask].std(1).min() > 0.02  # textured, not flat


def test_diameters_and_centring():
    assert math.isclose(box(BOX_SIZE).diameter, math.hypot(*BOX_SIZE), rel_tol=1e-12)
    radius, height = 0.03, 0.1
    assert math.isclose(cylinder(radius, height).diameter, math.hypot(2 * radius, height))
    shape = tetra()
    edges = [float((a - b).norm()) for a, b in itertools.combinations(shape.vertices.double(), 2)]
    assert math.isclose(shape.diameter, max(edges), rel_tol=1e-6)
    assert len({round(e, 6) for e in edges}) == 6  # no two edges alike: no symmetry
    for mesh in (box(), cylinder(), shape):
        low, high = mesh.vertices.amin(0), mesh.vertices.amax(0)
        assert torch.allclose(low + high, torch.zeros(3), atol=1e-7), mesh.name
        assert mesh.uv.shape == (len(mesh.faces), 3, 2) and mesh.texture.shape[0] == 3


@pytest.mark.parametrize("make", [cylinder, tetra])
def test_other_objects_render_around_their_centre(make):
    mesh = make()
    out = render_mesh(mesh.vertices, mesh.faces, K, make_pose(t=(0.0, 0.0, 0.4)), SIZE, SIZE,
                      uv=mesh.uv, texture=mesh.texture)  # fmt: skip
    assert out.mask.sum() > 300 and out.depth.dtype == torch.float32
    reach = float(mesh.vertices.norm(dim=1).max())  # farthest vertex from the origin
    depth = out.depth[out.mask]
    assert (depth > 0.4 - reach).all() and (depth < 0.4 + reach).all()


def test_texture_sampling_hits_texel_centres_and_clamps_to_the_edge():
    texture = torch.arange(12.0).reshape(1, 3, 4)  # rows top to bottom; v up
    uv = torch.tensor([[0.125, 5 / 6], [0.625, 0.5], [0.25, 5 / 6], [-1.0, 2.0], [2.0, -1.0]])
    got = sample_texture(texture, uv)[:, 0]
    assert torch.allclose(got, torch.tensor([0.0, 6.0, 0.5, 0.0, 11.0]), atol=1e-5)


def test_uv_and_texture_go_together(box_mesh):
    with pytest.raises(ValueError, match="uv and texture"):
        render_mesh(box_mesh.vertices, box_mesh.faces, K, POSE, 8, 8, uv=box_mesh.uv)
