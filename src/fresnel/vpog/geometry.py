"""Template viewpoints and the angles that compare a query pose with them (VPOG, after GigaPose).

VPOG matches a query image against templates rendered from cameras on a sphere around the object.
Choosing templates needs two quantities: the *out-of-plane* angle (how far apart two viewpoints
are on the sphere, blind to any rotation of the camera about its optical axis) and the *in-plane*
angle (that rotation about the optical axis, which a template can undo by rotating its image).

Conventions
- A pose T (4x4) = [R | t] maps object coordinates into the camera frame: X_cam = R X_obj + t.
  Unless named otherwise, R is such an object-to-camera rotation with *OpenCV* camera axes.
- OpenCV camera axes: x right, y down, z forward (along the optical axis, into the scene).
  OpenGL camera axes: x right, y up, z backward. `opencv_to_opengl(R)` = diag(1, -1, -1) @ R
  (diag(1, -1, -1, 1) @ T for a 4x4 pose); the map is its own inverse.
- The *viewing direction* d(R) is the unit vector, in object coordinates, pointing from the
  object's origin towards the camera along the optical axis: row 2 of the OpenGL rotation,
  d = opencv_to_opengl(R)[2, :] = -R[2, :] (GigaPose's convention). When the origin lies on the
  optical axis, as for every template, it is the direction of the camera centre -R^T t. It
  depends on R only and is unchanged by an in-plane rotation R -> Rz(theta) @ R.
- Rz(theta) = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]] rotates the camera frame about its
  optical axis; with y down, a positive theta turns the image content clockwise on screen.
- Templates: object frame z up. Cameras sit at `radius` * (an icosphere vertex), look at the
  object's origin, and are upright: object +z projects upwards in the image (the camera x axis
  is horizontal). At the two poles, where "upright" is undefined, object +y projects upwards.
- Angles are in radians; functions broadcast over leading batch dimensions ((..., 3, 3) inputs)
  and keep the input dtype (float64 recommended for the exactness the tests check).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from fresnel.render.projection import rotation_between_directions

OBJECT_UP = (0.0, 0.0, 1.0)
POLE_UP = (0.0, 1.0, 0.0)  # "up" for cameras straight above or below the object
_PARALLEL_EPS = 1e-6


def opencv_to_opengl(pose: Tensor) -> Tensor:
    """diag(1, -1, -1) @ R for (..., 3, 3) rotations, diag(1, -1, -1, 1) @ T for (..., 4, 4)."""
    flipped = pose.clone()
    flipped[..., 1:3, :] = -flipped[..., 1:3, :]
    return flipped


def in_plane_rotation(theta: Tensor | float, dtype: torch.dtype = torch.float64) -> Tensor:
    """Rz(theta), (..., 3, 3): the rotation of a camera about its own optical axis."""
    if not isinstance(theta, Tensor):
        theta = torch.tensor(theta, dtype=dtype)
    cos, sin = torch.cos(theta), torch.sin(theta)
    zero, one = torch.zeros_like(theta), torch.ones_like(theta)
    rows = [
        torch.stack([cos, -sin, zero], dim=-1),
        torch.stack([sin, cos, zero], dim=-1),
        torch.stack([zero, zero, one], dim=-1),
    ]
    return torch.stack(rows, dim=-2)


@lru_cache(maxsize=8)
def _icosphere_vertices(subdivisions: int) -> tuple[tuple[float, float, float], ...]:
    vertices = _icosahedron_vertices()
    faces = _icosahedron_faces()
    for _ in range(subdivisions):
        faces = _subdivide(vertices, faces)
    return tuple(vertices)


def _icosahedron_vertices() -> list[tuple[float, float, float]]:
    # Poles on +-z; the upper ring has a vertex at azimuth 0 (towards +x), the lower ring is
    # offset by 36 degrees. The lower ring's z is the exact negation of the upper ring's, so
    # every equator vertex created by subdivision has z == 0 exactly.
    ring_z, ring_r = 1.0 / math.sqrt(5.0), 2.0 / math.sqrt(5.0)
    upper = [_on_ring(ring_r, ring_z, math.radians(72.0 * k)) for k in range(5)]
    lower = [_on_ring(ring_r, -ring_z, math.radians(36.0 + 72.0 * k)) for k in range(5)]
    return [(0.0, 0.0, 1.0), *upper, *lower, (0.0, 0.0, -1.0)]


def _on_ring(radius: float, z: float, azimuth: float) -> tuple[float, float, float]:
    return (radius * math.cos(azimuth), radius * math.sin(azimuth), z)


def _icosahedron_faces() -> list[tuple[int, int, int]]:
    north, south = 0, 11
    faces = []
    for k in range(5):
        u0, u1 = 1 + k, 1 + (k + 1) % 5
        l0, l1 = 6 + k, 6 + (k + 1) % 5
        faces += [(north, u0, u1), (u0, l0, u1), (u1, l0, l1), (south, l1, l0)]
    return faces


def _subdivide(
    vertices: list[tuple[float, float, float]], faces: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """Split each face in four; appends the (normalised) edge midpoints to `vertices`."""
    midpoint_of: dict[tuple[int, int], int] = {}

    def midpoint(a: int, b: int) -> int:
        key = (min(a, b), max(a, b))
        if key not in midpoint_of:
            summed = [p + q for p, q in zip(vertices[a], vertices[b], strict=True)]
            norm = math.sqrt(sum(c * c for c in summed))
            vertices.append(tuple(c / norm for c in summed))
            midpoint_of[key] = len(vertices) - 1
        return midpoint_of[key]

    new_faces = []
    for a, b, c in faces:
        ab, bc, ca = midpoint(a, b), midpoint(b, c), midpoint(c, a)
        new_faces += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
    return new_faces


def icosphere_directions(level: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """(N, 3) unit vertices of an icosahedron subdivided `level + 1` times.

    N = 10 * 4**(level + 1) + 2: 42 / 162 / 642 for level 0 / 1 / 2 (the icosahedron's 12
    vertices -> 42 -> 162 -> 642), as GigaPose's template levels. Subdivision splits each edge
    at its midpoint, pushed out to the unit sphere. The order is deterministic and nested: the
    12 icosahedron vertices come first (north pole, upper ring, lower ring, south pole), then
    each subdivision appends its new vertices, so level L's directions are the first ones of
    level L + 1.
    """
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    return torch.tensor(_icosphere_vertices(level + 1), dtype=dtype)


def look_at_origin(direction: Tensor) -> Tensor:
    """(..., 3, 3) upright OpenCV object-to-camera rotations of cameras at unit `direction`.

    The camera looks at the object's origin (forward = -direction); its x axis is
    forward x OBJECT_UP normalised, so object +z projects upwards; when forward is parallel to
    OBJECT_UP (the poles), POLE_UP replaces it. The rows of R are the camera axes in object
    coordinates: (x, y, forward).
    """
    forward = -direction / direction.norm(dim=-1, keepdim=True)
    up = forward.new_tensor(OBJECT_UP).expand_as(forward)
    right = torch.linalg.cross(forward, up, dim=-1)
    at_pole = right.norm(dim=-1, keepdim=True) < _PARALLEL_EPS
    pole_up = forward.new_tensor(POLE_UP).expand_as(forward)
    right = torch.where(at_pole, torch.linalg.cross(forward, pole_up, dim=-1), right)
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.linalg.cross(forward, right, dim=-1)
    return torch.stack([right, down, forward], dim=-2)


def template_poses(
    level: int,
    radius: float = 1.0,
    upper_hemisphere: bool = False,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """(N, 4, 4) OpenCV object-to-camera poses of upright cameras on the level's icosphere.

    Camera i sits at radius * icosphere_directions(level)[i] and looks at the object's origin,
    so t = (0, 0, radius) and viewing_direction(R_i) is that direction. GigaPose renders at
    radius 1000 (millimetres). `upper_hemisphere` keeps, in the same order, only the cameras
    with object-frame z >= 0 (the equator included: 26 / 91 / 341 of 42 / 162 / 642), GigaPose's
    "upper" pose distribution for objects that are never seen from below.
    """
    directions = icosphere_directions(level, dtype=dtype)
    if upper_hemisphere:
        directions = directions[directions[:, 2] >= 0]
    poses = torch.eye(4, dtype=dtype).repeat(len(directions), 1, 1)
    poses[:, :3, :3] = look_at_origin(directions)
    poses[:, 2, 3] = radius
    return poses


def viewing_direction(R: Tensor) -> Tensor:
    """(..., 3) unit vector from the object's origin towards the camera, in object coordinates.

    Row 2 of the OpenGL rotation, opencv_to_opengl(R)[..., 2, :] = -R[..., 2, :]. (Column 2,
    the public VPOG code's choice, is neither the camera direction nor in-plane invariant.)
    """
    return -R[..., 2, :]


def _angle_between(u: Tensor, v: Tensor) -> Tensor:
    # atan2 of |u x v| and u.v stays accurate near 0 and pi, unlike acos of the dot product.
    cross = torch.linalg.cross(*torch.broadcast_tensors(u, v), dim=-1).norm(dim=-1)
    return torch.atan2(cross, (u * v).sum(dim=-1))


def out_of_plane_angle(R1: Tensor, R2: Tensor) -> Tensor:
    """Angle in [0, pi] between the viewing directions of R1 and R2; 0 when they differ only by
    an in-plane rotation."""
    return _angle_between(viewing_direction(R1), viewing_direction(R2))


def in_plane_angle(R_query: Tensor, R_template: Tensor) -> Tensor:
    """theta in (-pi, pi] with R_query = Rz(theta) @ R_template when the viewing directions agree.

    When they differ, the template camera is first moved on the sphere along the great circle to
    the query's viewing direction (R_template @ Q^T, Q the minimal rotation taking the template's
    viewing direction to the query's, see `rotation_between_directions`); theta is the in-plane
    rotation left between the query and that moved template, so
    R_query = Rz(theta) @ R_template @ Q^T exactly. (GigaPose reads its in-plane angle off an
    Euler decomposition of R_template @ R_query^T instead: -theta when the directions agree.)
    """
    Q = rotation_between_directions(viewing_direction(R_template), viewing_direction(R_query))
    residual = R_query @ Q @ R_template.transpose(-1, -2)
    return torch.atan2(residual[..., 1, 0], residual[..., 0, 0])


def nearest_template(R_query: Tensor, template_R: Tensor) -> Tensor:
    """(...) long: index of the (N, 3, 3) template with the smallest out-of-plane angle to each
    (..., 3, 3) query; the lowest index among exact ties."""
    angles = out_of_plane_angle(R_query[..., None, :, :], template_R)
    return angles.argmin(dim=-1)
