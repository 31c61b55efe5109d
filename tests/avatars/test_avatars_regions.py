"""Region-adaptive loss weights: the z-buffered triangle rasteriser against known coverage and a
ray-casting reference, the no-hole edge rule, and the synthetic head's region maps."""

import pytest
import torch

from fresnel.avatars.data import SyntheticConfig, arc_viewmats
from fresnel.avatars.head import REGION_INDEX, REGIONS
from fresnel.avatars.regions import (
    rasterize_faces,
    region_map,
    region_weight_map,
    region_weights,
)
from fresnel.avatars.synthetic_head import SyntheticHead
from fresnel.render import Camera

CAMERA = Camera(16.0, 16.0, 0.0, 0.0, 20, 20)  # u = 16 X / Z: screen = camera x, y scaled
IDENTITY = torch.eye(4)


def lift(screen: list[tuple[float, float]], depths: list[float]) -> torch.Tensor:
    """Camera-space vertices that project to the given screen points at the given depths."""
    points = [
        ((u - CAMERA.cx) * z / CAMERA.fx, (v - CAMERA.cy) * z / CAMERA.fy, z)
        for (u, v), z in zip(screen, depths, strict=True)
    ]
    return torch.tensor(points, dtype=torch.float64)


def pixel_set(face_ids: torch.Tensor, face: int) -> set[tuple[int, int]]:
    return {(int(x), int(y)) for y, x in (face_ids == face).nonzero().tolist()}


def reference_face_ids(vertices, faces, camera, viewmat, margin=1e-6):
    """Ray casting (Moller-Trumbore, both windings) through every pixel centre: the face with the
    nearest hit, -1 for none; and the pixels too close to an edge or a depth tie to judge."""
    cam = vertices.double() @ viewmat[:3, :3].double().T + viewmat[:3, 3].double()
    ys, xs = torch.meshgrid(
        torch.arange(camera.height, dtype=torch.float64) + 0.5,
        torch.arange(camera.width, dtype=torch.float64) + 0.5,
        indexing="ij",
    )
    rays = torch.stack(
        ((xs - camera.cx) / camera.fx, (ys - camera.cy) / camera.fy, torch.ones_like(xs)), -1
    ).reshape(-1, 1, 3)
    a, b, c = (cam[faces[:, i]][None] for i in range(3))
    e1, e2 = b - a, c - a
    p = torch.linalg.cross(rays.expand(-1, len(faces), 3), e2.expand(len(rays), -1, 3))
    det = (e1 * p).sum(-1)
    inv = 1.0 / det
    s = -a
    u = (s * p).sum(-1) * inv
    q = torch.linalg.cross(s.expand_as(p), e1.expand_as(p))
    v = (rays * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv  # depth along the ray whose z component is 1
    bary = torch.stack((1 - u - v, u, v), -1)
    hit = (bary >= 0).all(-1) & (t > 0) & (det.abs() > 1e-15)
    depth = torch.where(hit, t, torch.inf)
    nearest, face = depth.min(1)
    ids = torch.where(nearest.isfinite(), face, -1)
    near_edge = (bary.abs() < margin).any(-1) & (t > 0)
    two = depth.topk(min(2, len(faces)), dim=1, largest=False).values
    tie = (two[:, -1] - two[:, 0] < margin) & (len(faces) > 1) & nearest.isfinite()
    ambiguous = near_edge.any(1) | tie
    shape = (camera.height, camera.width)
    return ids.reshape(shape), ambiguous.reshape(shape)


def assert_matches_reference(vertices, faces, camera=CAMERA, viewmat=IDENTITY):
    """Exact agreement with ray casting on every pixel the geometry does not leave ambiguous."""
    faces = torch.as_tensor(faces)
    got = rasterize_faces(vertices, faces, camera, viewmat)
    want, ambiguous = reference_face_ids(vertices, faces, camera, viewmat)
    assert got.shape == (camera.height, camera.width) and got.dtype == torch.long
    mismatched = (got != want) & ~ambiguous
    assert not mismatched.any(), f"{int(mismatched.sum())} pixels differ from ray casting"
    return got, want, ambiguous


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("winding", [[0, 1, 2], [0, 2, 1]])
def test_right_triangle_covers_the_analytic_pixel_set(winding):
    # Legs on x = 2 and y = 2, hypotenuse x + y = 14 through pixel centres (inclusive):
    # centres (x + 0.5, y + 0.5) with x, y >= 2 and x + y <= 13.
    vertices = lift([(2, 2), (12, 2), (2, 12)], [2.0, 2.0, 2.0])
    face_ids = rasterize_faces(vertices, torch.tensor([winding]), CAMERA, IDENTITY)
    expected = {(x, y) for x in range(20) for y in range(20) if x >= 2 and y >= 2 and x + y <= 13}
    assert len(expected) == 55
    assert pixel_set(face_ids, 0) == expected
    assert pixel_set(face_ids, -1) == {(x, y) for x in range(20) for y in range(20)} - expected


def test_general_triangle_matches_ray_casting():
    vertices = lift([(1.3, 2.1), (13.7, 3.4), (5.2, 14.6)], [1.5, 2.5, 4.0])
    got, _, ambiguous = assert_matches_reference(vertices, [[0, 1, 2]])
    assert not ambiguous.any()
    assert 50 < int((got == 0).sum()) < 100 and (got == -1).any()


def test_rotated_camera_matches_ray_casting():
    head = SyntheticHead(level=1)  # 80 faces
    viewmat = arc_viewmats(SyntheticConfig(cameras=3))[0]
    camera = Camera(40.0, 40.0, 12.0, 12.0, 24, 24)
    got, _, ambiguous = assert_matches_reference(head.rest_vertices(), head.faces, camera, viewmat)
    assert int(ambiguous.sum()) < 10 and len(got.unique()) > 20


# --------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize("near_first", [True, False])
def test_nearer_triangle_wins_whatever_the_order(near_first):
    near = lift([(1.1, 1.3), (14.2, 2.7), (3.6, 15.1)], [2.0] * 3)
    far = lift([(4.4, 3.2), (18.3, 6.1), (8.7, 18.9)], [3.0] * 3)
    vertices = torch.cat((near, far) if near_first else (far, near))
    near_id = 0 if near_first else 1
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    face_ids = rasterize_faces(vertices, faces, CAMERA, IDENTITY)
    alone = [rasterize_faces(vertices, f[None], CAMERA, IDENTITY) == 0 for f in faces]
    overlap = alone[0] & alone[1]
    assert overlap.sum() > 20
    assert (face_ids[overlap] == near_id).all()
    assert ((face_ids >= 0) == (alone[0] | alone[1])).all()
    assert_matches_reference(vertices, faces)


@pytest.mark.parametrize("order", [[[0, 1, 2], [3, 4, 5]], [[3, 4, 5], [0, 1, 2]]])
def test_crossing_triangles_follow_perspective_correct_depth(order):
    # A flat triangle at z = 3 and one tilted from z = 1 (left) to z = 9 (right) crossing it.
    flat = lift([(1.2, 1.4), (18.6, 2.3), (9.7, 18.2)], [3.0] * 3)
    tilted = lift([(0.8, 9.3), (18.9, 4.6), (17.7, 15.8)], [1.0, 9.0, 9.0])
    vertices = torch.cat((flat, tilted))
    got, want, ambiguous = assert_matches_reference(vertices, order)
    assert int(ambiguous.sum()) <= 2
    flat_id, tilted_id = order.index([0, 1, 2]), order.index([3, 4, 5])
    assert (got == flat_id).sum() > 20 and (got == tilted_id).sum() > 20
    # Interpolating z itself (not 1/z) in screen space flips some pixels: the test can tell.
    screen_linear = _screen_linear_depth_winner(vertices, torch.tensor(order))
    assert ((screen_linear != want) & (want >= 0) & ~ambiguous).sum() >= 3


def _screen_linear_depth_winner(vertices, faces):
    """Face ids from a (wrong) z-buffer that interpolates z linearly in screen space."""
    best = torch.full((CAMERA.height, CAMERA.width), torch.inf, dtype=torch.float64)
    ids = torch.full((CAMERA.height, CAMERA.width), -1)
    for f, face in enumerate(faces.tolist()):
        p = vertices[face]
        uv = p[:, :2] / p[:, 2:] * CAMERA.fx
        covered = rasterize_faces(vertices, faces[f : f + 1], CAMERA, IDENTITY) == 0
        for y, x in covered.nonzero().tolist():
            matrix = torch.cat((uv.T, torch.ones(1, 3, dtype=torch.float64)))
            bary = torch.linalg.solve(matrix, torch.tensor([x + 0.5, y + 0.5, 1.0]).double())
            z = float(bary @ p[:, 2])
            if z < best[y, x]:
                best[y, x], ids[y, x] = z, f
    return ids


# --------------------------------------------------------------------------- culling


def test_triangle_behind_the_camera_covers_nothing():
    # Mirrored through the camera centre, this triangle would project onto the image.
    behind = -lift([(2.5, 3.5), (15.5, 4.5), (6.5, 16.5)], [2.0] * 3)
    face_ids = rasterize_faces(behind, torch.tensor([[0, 1, 2]]), CAMERA, IDENTITY)
    assert (face_ids == -1).all()
    mirrored = rasterize_faces(-behind, torch.tensor([[0, 1, 2]]), CAMERA, IDENTITY)
    assert (mirrored == 0).sum() > 40


def test_triangle_through_the_near_plane_is_skipped_and_empty_area_is_background():
    crossing = lift([(2.5, 3.5), (15.5, 4.5), (6.5, 16.5)], [2.0, 2.0, 2.0])
    crossing[2, 2] = -0.5
    visible = lift([(1.0, 1.0), (4.0, 1.0), (1.0, 4.0)], [2.0] * 3)
    vertices = torch.cat((crossing, visible))
    face_ids = rasterize_faces(vertices, torch.tensor([[0, 1, 2], [3, 4, 5]]), CAMERA, IDENTITY)
    assert (face_ids != 0).all()
    assert pixel_set(face_ids, 1) == {(1, 1), (2, 1), (3, 1), (1, 2), (2, 2), (1, 3)}
    assert (face_ids[5:, 5:] == -1).all()
    empty = rasterize_faces(vertices[:0], torch.zeros(0, 3, dtype=torch.long), CAMERA, IDENTITY)
    assert (empty == -1).all()


# --------------------------------------------------------------------------- edges


@pytest.mark.parametrize("diagonal", ["main", "anti"])
@pytest.mark.parametrize("depths", [(2.0, 2.0, 2.0, 2.0), (1.3, 2.9, 7.1, 3.7)])
def test_quad_split_in_two_leaves_no_hole(diagonal, depths):
    # Corners on pixel centres: both diagonals run through pixel centres too.
    vertices = lift([(2.5, 2.5), (15.5, 2.5), (15.5, 15.5), (2.5, 15.5)], list(depths))
    split = [[0, 1, 2], [0, 2, 3]] if diagonal == "main" else [[0, 1, 3], [1, 2, 3]]
    face_ids = rasterize_faces(vertices, torch.tensor(split), CAMERA, IDENTITY)
    inside = {(x, y) for x in range(2, 16) for y in range(2, 16)}
    assert pixel_set(face_ids, 0) | pixel_set(face_ids, 1) == inside
    assert pixel_set(face_ids, 0) and pixel_set(face_ids, 1)


def test_fan_around_a_pixel_centre_leaves_no_hole():
    centre = (9.5, 9.5)
    rim = [(3.5, 3.5), (9.5, 2.5), (16.5, 3.5), (17.5, 9.5), (16.5, 16.5), (9.5, 17.5)]
    rim += [(2.5, 16.5), (1.5, 9.5)]
    vertices = lift([centre, *rim], [2.0] + [2.0 + 0.7 * i for i in range(len(rim))])
    faces = [[0, 1 + i, 1 + (i + 1) % len(rim)] for i in range(len(rim))]
    # The spokes run through pixel centres; the fan covers exactly the convex octagon.
    got, _, _ = assert_matches_reference(vertices, faces)
    octagon = {(x, y) for x in range(20) for y in range(20) if _in_convex(rim, x + 0.5, y + 0.5)}
    assert pixel_set(got, -1) == {(x, y) for x in range(20) for y in range(20)} - octagon
    assert got[9, 9] >= 0 and got[2, 9] >= 0  # the shared vertex and a rim vertex


def _in_convex(polygon, x, y, tolerance=1e-9):
    """Whether (x, y) lies in the convex polygon (either orientation), boundary included."""
    sides = [
        (bx - ax) * (y - ay) - (by - ay) * (x - ax)
        for (ax, ay), (bx, by) in zip(polygon, polygon[1:] + polygon[:1], strict=True)
    ]
    return all(s >= -tolerance for s in sides) or all(s <= tolerance for s in sides)


def test_chunking_does_not_change_the_result():
    head = SyntheticHead()
    camera = Camera(1.7 * 32, 1.7 * 32, 16.0, 16.0, 32, 32)
    viewmat = arc_viewmats(SyntheticConfig())[2]
    whole = rasterize_faces(head.rest_vertices(), head.faces, camera, viewmat)
    chunked = rasterize_faces(head.rest_vertices(), head.faces, camera, viewmat, chunk_candidates=7)
    assert torch.equal(whole, chunked)


# --------------------------------------------------------------------------- weights


def test_region_weights_follow_the_region_order():
    weights = region_weights(eyes=2.0, mouth=3.0, nose=1.5)
    assert weights.shape == (len(REGIONS),)
    expected = {"skin": 1.0, "eyes": 2.0, "mouth": 3.0, "nose": 1.5}
    assert {name: float(weights[REGION_INDEX[name]]) for name in REGIONS} == expected


def test_region_weight_map_looks_up_each_pixels_region():
    face_ids = torch.tensor([[-1, 0, 1], [2, 3, -1]])
    face_regions = torch.tensor([3, 0, 1, 2])
    weights = torch.tensor([1.0, 2.0, 1.5, 4.0])
    assert torch.equal(region_map(face_ids, face_regions), torch.tensor([[-1, 3, 0], [1, 2, -1]]))
    expected = torch.tensor([[1.0, 4.0, 1.0], [2.0, 1.5, 1.0]])
    assert torch.equal(region_weight_map(face_ids, face_regions, weights), expected)


# --------------------------------------------------------------------------- synthetic head


@pytest.fixture(scope="module")
def head():
    return SyntheticHead()


@pytest.mark.parametrize("camera_index", [2, 3])  # six cameras: +-10 degrees off the face axis
def test_synthetic_head_region_map_from_the_front(head, camera_index):
    size = 64
    camera = Camera(1.7 * size, 1.7 * size, size / 2, size / 2, size, size)
    viewmat = arc_viewmats(SyntheticConfig(image_size=size))[camera_index]
    face_ids, _, ambiguous = assert_matches_reference(
        head.rest_vertices(), head.faces, camera, viewmat
    )
    assert int(ambiguous.sum()) < 20

    regions = region_map(face_ids, head.face_regions)
    for name in ("eyes", "nose", "mouth"):
        assert (regions == REGION_INDEX[name]).sum() > 20, name
    eyes_x = (regions == REGION_INDEX["eyes"]).nonzero()[:, 1]
    assert (eyes_x < size // 2).any() and (eyes_x >= size // 2).any()  # both eyes

    silhouette = face_ids >= 0
    assert _components(silhouette) == 1
    assert _components(~silhouette) == 1  # no hole inside the head
    rows, cols = silhouette.nonzero().double().mean(0).tolist()
    assert abs(rows - size / 2) < 3 and abs(cols - size / 2) < 3
    assert 0.2 < silhouette.double().mean() < 0.6

    weight = region_weight_map(face_ids, head.face_regions, region_weights(2.0, 2.0, 1.5))
    eyes_or_mouth = (regions == REGION_INDEX["eyes"]) | (regions == REGION_INDEX["mouth"])
    assert torch.equal(weight == 2.0, eyes_or_mouth)
    assert torch.equal(weight == 1.5, regions == REGION_INDEX["nose"])
    assert torch.equal(weight == 1.0, (regions == REGION_INDEX["skin"]) | ~silhouette)


def _components(mask: torch.Tensor) -> int:
    """Number of 4-connected components of a 2D bool mask."""
    unvisited = {(y, x) for y, x in mask.nonzero().tolist()}
    count = 0
    while unvisited:
        count += 1
        stack = [unvisited.pop()]
        while stack:
            y, x = stack.pop()
            for n in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if n in unvisited:
                    unvisited.remove(n)
                    stack.append(n)
    return count
