"""Objects to render for VPOG: built-in synthetic meshes with procedural textures, and user meshes.

The built-ins let templates, queries and tests run with no download: a box, a cylinder and an
irregular tetrahedron, in metres, centred at the origin (their bounding box's centre), each face
textured with smooth seeded noise so that image features can tell views apart. The same seed
gives the same bytes. UVs follow `fresnel.vpog.mesh_render` (OBJ's, v up); each flat face (the
cylinder's side and caps) owns one cell of a texture atlas, inset by a texel so that bilinear
sampling never reads a neighbouring cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

TEXTURE_SIZE = 128  # texels per side of a built-in object's texture
_CELL_INSET = 1.0  # texels between a face's UVs and its atlas cell's border


@dataclass(frozen=True)
class ObjectMesh:
    """A textured triangle mesh: vertices (V, 3) float32 metres, faces (F, 3) long, per-corner
    uv (F, 3, 2), texture (3, T, T) float32 in [0, 1]; diameter = the largest distance between
    two vertices (BOP's definition), in the vertices' unit."""

    vertices: Tensor
    faces: Tensor
    uv: Tensor
    texture: Tensor
    diameter: float
    name: str


def box(
    size: tuple[float, float, float] = (0.10, 0.07, 0.05),
    *,
    seed: int = 0,
    texture_size: int = TEXTURE_SIZE,
) -> ObjectMesh:
    """A box of `size` (x, y, z) metres: 8 vertices, 12 triangles, each side its own noise
    pattern and hue, so no rotation maps its appearance onto itself."""
    half = torch.tensor(size, dtype=torch.float64) / 2
    signs = torch.tensor([[i, j, k] for i in (-1, 1) for j in (-1, 1) for k in (-1, 1)])
    vertices = signs * half
    faces, uv = [], []
    for cell, (axis, sign) in enumerate((a, s) for a in range(3) for s in (-1, 1)):
        corners = _box_side(signs, axis, sign)
        faces += [corners[:3], [corners[0], corners[2], corners[3]]]
        uv += _quad_uv(_atlas_cell(cell, 3, 2, texture_size))
    texture = _procedural_texture(texture_size, seed, _atlas_texels(3, 2, texture_size))
    return _object(vertices, faces, torch.stack(uv), texture, "box")


def cylinder(
    radius: float = 0.035,
    height: float = 0.12,
    segments: int = 32,
    *,
    seed: int = 0,
    texture_size: int = TEXTURE_SIZE,
) -> ObjectMesh:
    """A closed cylinder about z. Its geometry is rotationally symmetric (to the `segments`-gon);
    its texture is not: one noise band runs once round the side (with a visible seam at
    angle 0) and each cap has its own, so the pose is unique from appearance although not from the silhouette."""
    angles = torch.arange(segments + 1, dtype=torch.float64) * (2 * math.pi / segments)
    ring = torch.stack((radius * angles.cos(), radius * angles.sin()), -1)  # seam vertex twice
    z = torch.full((segments + 1, 1), height / 2, dtype=torch.float64)
    centres = torch.tensor([[0.0, 0.0, -height / 2], [0.0, 0.0, height / 2]], dtype=torch.float64)
    vertices = torch.cat((torch.cat((ring, -z), 1), torch.cat((ring, z), 1), centres))
    bottom, top, n = 0, segments + 1, segments + 1
    side_cell = _atlas_cell(0, 1, 2, texture_size)  # the top half; the caps share the bottom
    cap_cells = [_atlas_cell(cell, 2, 2, texture_size) for cell in (2, 3)]
    faces, uv = [], []
    for i in range(segments):
        quad = [bottom + i, bottom + i + 1, top + i + 1, top + i]
        faces += [quad[:3], [quad[0], quad[2], quad[3]]]
        uv += _quad_uv(side_cell, (i / segments, (i + 1) / segments))
    for cap, (ring_start, centre) in enumerate(((bottom, 2 * n), (top, 2 * n + 1))):
        for i in range(segments):
            step = (i + 1, i) if cap == 0 else (i, i + 1)  # wound outwards: -z, then +z
            faces.append([centre, *(ring_start + j for j in step)])
            points = ring[list(step)] / (2 * radius) + 0.5
            corners = torch.cat((torch.full((1, 2), 0.5, dtype=torch.float64), points))
            uv.append(_in_cell(cap_cells[cap], corners))
    cells = _atlas_texels(1, 2, texture_size)[:1] + _atlas_texels(2, 2, texture_size)[2:]
    texture = _procedural_texture(texture_size, seed, cells)
    return _object(vertices, faces, torch.stack(uv), texture, "cylinder")


def tetra(*, seed: int = 0, texture_size: int = TEXTURE_SIZE) -> ObjectMesh:
    """An irregular tetrahedron (all six edges of different lengths, about 10 cm across): no
    rotation maps it onto itself, in shape or in texture."""
    vertices = torch.tensor(
        [[0.06, 0.0, -0.02], [-0.03, 0.05, -0.03], [-0.04, -0.035, -0.025], [0.01, 0.005, 0.07]],
        dtype=torch.float64,
    )
    vertices -= (vertices.amax(0) + vertices.amin(0)) / 2
    faces = [[0, 2, 1], [0, 1, 3], [1, 2, 3], [2, 0, 3]]
    triangle = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, 1.0]], dtype=torch.float64)
    uv = [_in_cell(_atlas_cell(cell, 2, 2, texture_size), triangle) for cell in range(4)]
    texture = _procedural_texture(texture_size, seed, _atlas_texels(2, 2, texture_size))
    return _object(vertices, faces, torch.stack(uv), texture, "tetra")


BUILTIN = {"box": box, "cylinder": cylinder, "tetra": tetra}


def load_mesh(path: str | Path, *, scale: float = 1.0, center: bool = False) -> ObjectMesh:
    """A user mesh (e.g. a Google Scanned Objects `.obj` with its texture) through `trimesh`.

    Vertices are multiplied by `scale` (0.001 for BOP's millimetre models) and, with `center`,
    moved so that their bounding box is centred at the origin (leave it off to keep a dataset's
    object frame). A mesh without a textured material gets its main colour as a 1x1 texture.
    """
    import trimesh

    mesh = trimesh.load(str(path), force="mesh", process=False)
    vertices = torch.as_tensor(mesh.vertices, dtype=torch.float64) * scale
    if center:
        vertices -= (vertices.amax(0) + vertices.amin(0)) / 2
    faces = torch.as_tensor(mesh.faces, dtype=torch.long)
    uv, texture = _mesh_texture(mesh, faces)
    hull = torch.as_tensor(mesh.convex_hull.vertices, dtype=torch.float64) * scale
    mesh_object = _object(vertices, faces, uv, texture, Path(path).stem)
    return ObjectMesh(**{**mesh_object.__dict__, "diameter": diameter(hull)})


def save_object(obj: ObjectMesh, path: str | Path) -> Path:
    """The mesh as one `.pt` file (tensors + diameter + name), what evaluation renders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**obj.__dict__}, path)
    return path


def load_object(path: str | Path) -> ObjectMesh:
    """A mesh written by `save_object`."""
    try:
        fields = torch.load(path, map_location="cpu", weights_only=True)
        return ObjectMesh(**fields)
    except (OSError, RuntimeError, TypeError, EOFError) as exc:
        raise ValueError(
            f"{path}: not an object mesh written by save_object ({exc}); rerun the stage "
            "that renders the templates"
        ) from None


def diameter(vertices: Tensor, chunk: int = 4096) -> float:
    """The largest distance between two of `vertices` (N, 3), in chunks of rows."""
    points = vertices.double()
    best = 0.0
    for start in range(0, len(points), chunk):
        best = max(best, float(torch.cdist(points[start : start + chunk], points).max()))
    return best


def _object(vertices, faces, uv, texture, name: str) -> ObjectMesh:
    vertices = torch.as_tensor(vertices, dtype=torch.float64)
    return ObjectMesh(
        vertices=vertices.float(),
        faces=torch.as_tensor(faces, dtype=torch.long),
        uv=uv.float(),
        texture=texture.float(),
        diameter=diameter(vertices),
        name=name,
    )


def _box_side(signs: Tensor, axis: int, sign: int) -> list[int]:
    """The four vertex indices of one side, in order round it, wound outwards."""
    a, b = [i for i in range(3) if i != axis]
    order = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    if sign * (1 if (axis, a, b) in ((0, 1, 2), (1, 2, 0), (2, 0, 1)) else -1) < 0:
        order.reverse()
    index = {tuple(row): i for i, row in enumerate(signs.tolist())}
    corners = []
    for sa, sb in order:
        key = [0, 0, 0]
        key[axis], key[a], key[b] = sign, sa, sb
        corners.append(index[tuple(key)])
    return corners


def _atlas_cell(cell: int, columns: int, rows: int, size: int) -> Tensor:
    """UV rectangle (u0, v0, u1, v1) of cell `cell` (row-major from the texture's top-left)
    of a columns x rows atlas, inset by _CELL_INSET texels."""
    col, row = cell % columns, cell // columns
    inset = _CELL_INSET / size
    u0, u1 = col / columns + inset, (col + 1) / columns - inset
    v1, v0 = 1 - row / rows - inset, 1 - (row + 1) / rows + inset  # v up: row 0 is the top
    return torch.tensor([u0, v0, u1, v1], dtype=torch.float64)


def _in_cell(cell: Tensor, points: Tensor) -> Tensor:
    """Unit-square points (N, 2) mapped into the cell's UV rectangle."""
    return cell[:2] + points * (cell[2:] - cell[:2])


def _quad_uv(cell: Tensor, span: tuple[float, float] = (0.0, 1.0)) -> list[Tensor]:
    """The UVs of the two triangles (0, 1, 2), (0, 2, 3) of a quad whose corners run round
    the unit square (or its [span] slice in u)."""
    u0, u1 = span
    square = torch.tensor([[u0, 0.0], [u1, 0.0], [u1, 1.0], [u0, 1.0]], dtype=torch.float64)
    corners = _in_cell(cell, square)
    return [corners[:3], corners[[0, 2, 3]]]


def _atlas_texels(columns: int, rows: int, size: int) -> list[tuple[int, int, int, int]]:
    """Texel rectangles (y0, y1, x0, x1) of a columns x rows atlas's cells, row-major."""
    return [
        (row * size // rows, (row + 1) * size // rows, col * size // columns,
         (col + 1) * size // columns)
        for row in range(rows)
        for col in range(columns)
    ]  # fmt: skip


def _procedural_texture(size: int, seed: int, cells: list[tuple[int, int, int, int]]) -> Tensor:
    """(3, size, size) atlas: in each cell (texel rectangle), two seeded hues mixed by smooth
    noise at two scales, plus fine grain, so every cell is distinct and has no symmetry."""
    generator = torch.Generator().manual_seed(seed)
    texture = torch.zeros(3, size, size, dtype=torch.float64)
    for y0, y1, x0, x1 in cells:
        shape = (y1 - y0, x1 - x0)
        hues = torch.rand(2, 3, 1, 1, generator=generator, dtype=torch.float64)
        mix = _smooth_noise(4, shape, generator) + 0.5 * _smooth_noise(12, shape, generator)
        mix = (mix - mix.min()) / (mix.max() - mix.min())
        grain = 0.1 * torch.rand(1, *shape, generator=generator, dtype=torch.float64)
        texture[:, y0:y1, x0:x1] = (hues[0] * mix + hues[1] * (1 - mix) + grain).clamp(0, 1)
    return texture


def _smooth_noise(cells: int, shape: tuple[int, int], generator: torch.Generator) -> Tensor:
    """(1, H, W) noise: a random cells x cells grid, upsampled bicubically."""
    grid = torch.rand(1, 1, cells, cells, generator=generator, dtype=torch.float64)
    return F.interpolate(grid, size=shape, mode="bicubic", align_corners=True)[0]


def _mesh_texture(mesh, faces: Tensor) -> tuple[Tensor, Tensor]:
    """Per-corner UVs and the (3, H, W) texture of a trimesh mesh (module docstring)."""
    visual = mesh.visual
    uv = getattr(visual, "uv", None)
    image = getattr(getattr(visual, "material", None), "image", None)
    if uv is not None and image is not None:
        pixels = torch.as_tensor(bytearray(image.convert("RGB").tobytes()), dtype=torch.uint8)
        texture = pixels.reshape(image.height, image.width, 3).permute(2, 0, 1) / 255.0
        return torch.as_tensor(uv, dtype=torch.float64)[faces], texture
    colour = _main_colour(visual)
    return torch.zeros(len(faces), 3, 2), colour.reshape(3, 1, 1)


def _main_colour(visual) -> Tensor:
    """The mesh's single colour (its material's or vertices' main colour), grey without one."""
    try:
        rgba = visual.main_color if hasattr(visual, "main_color") else visual.material.main_color
        return torch.as_tensor(rgba[:3], dtype=torch.float64) / 255.0
    except AttributeError:
        return torch.full((3,), 0.5, dtype=torch.float64)
