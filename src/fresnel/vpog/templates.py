"""Templates of one object for VPOG: renders from the icosphere viewpoints, and their files.

Conventions (those of `fresnel.vpog.geometry` and `fresnel.vpog.mesh_render`)
- poses (N, 4, 4) float64 map object into OpenCV camera coordinates (x right, y down,
  z forward); template i is `geometry.template_poses(level, radius, upper_hemisphere)[i]`, so its
  camera sits at distance `radius` (metres, default 3 object diameters) and looks at the
  object's origin.
- K (3, 3) float64 is one centred pinhole shared by all templates (`template_intrinsics`);
  pixel (row i, col j) has its centre at (j + 0.5, i + 0.5).
- rgb (N, 3, H, W) uint8; depth (N, H, W) float32 camera z in metres, 0 on background;
  mask (N, H, W) bool, the pixels the object covers.

On-disk layout (after GigaPose), one folder per object, `<root>/<object_id>/`:
    000000.png          RGB, 8 bits per channel, template 0
    000000_depth.png    depth as uint16 in units of 0.1 mm (BOP's convention: millimetres =
                        value * depth_scale with depth_scale = 0.1); 0 = background, so
                        depths up to 6.5535 m; metres = value * depth_scale / 1000
    000000_mask.png     mask, 8 bits, 255 on the object, 0 elsewhere
    000001.png ...      one triple per template, numbered as the poses
    poses.npy           (N, 4, 4) float64 object-to-camera poses
    info.json           {"object_id", "K" (3x3), "level", "upper_hemisphere", "radius",
                         "image_size" [H, W], "num_templates", "depth_scale" (0.1, mm per unit),
                         "depth_unit"}
Other files in the folder (e.g. the object's mesh) are left alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fresnel.vpog.geometry import template_poses
from fresnel.vpog.mesh_render import render_mesh
from fresnel.vpog.objects import ObjectMesh

DEPTH_SCALE_MM = 0.1  # millimetres per unit of a depth PNG (BOP's depth_scale)
METRES_PER_DEPTH_UNIT = DEPTH_SCALE_MM / 1000.0
MAX_DEPTH_UNITS = np.iinfo(np.uint16).max
INFO_FILE = "info.json"
POSES_FILE = "poses.npy"
RENDER_HINT = "render them again with fresnel vpog_render_templates"


@dataclass
class TemplateSet:
    """The templates of one object; see the module docstring for units and conventions."""

    rgb: Tensor  # uint8 (N, 3, H, W)
    depth: Tensor  # float32 (N, H, W) metres, 0 on background
    mask: Tensor  # bool (N, H, W)
    poses: Tensor  # float64 (N, 4, 4) object-to-camera, OpenCV
    K: Tensor  # float64 (3, 3)
    object_id: str
    level: int
    upper_hemisphere: bool

    def __len__(self) -> int:
        return len(self.poses)


@dataclass(frozen=True)
class TemplateInfo:
    """What a template folder holds, read without its images (`read_template_info`)."""

    directory: Path
    object_id: str
    K: Tensor  # float64 (3, 3)
    poses: Tensor  # float64 (N, 4, 4)
    level: int
    upper_hemisphere: bool
    image_size: tuple[int, int]  # (H, W)

    def __len__(self) -> int:
        return len(self.poses)


def template_intrinsics(
    image_size: int, radius: float, diameter: float, fill: float = 0.8
) -> Tensor:
    """(3, 3) float64 centred pinhole: an object `diameter` across, `radius` away, spans
    `fill` of the `image_size`-pixel image (f = fill * image_size * radius / diameter)."""
    if image_size <= 0 or radius <= 0 or diameter <= 0 or fill <= 0:
        raise ValueError("image_size, radius, diameter and fill must be positive")
    focal = fill * image_size * radius / diameter
    centre = image_size / 2.0
    return torch.tensor(
        [[focal, 0.0, centre], [0.0, focal, centre], [0.0, 0.0, 1.0]], dtype=torch.float64
    )


def render_templates(
    obj: ObjectMesh,
    level: int = 1,
    image_size: int = 224,
    upper_hemisphere: bool = True,
    radius: float | None = None,
    background: float = 0.0,
    progress: bool = True,
) -> TemplateSet:
    """Render `obj` (with its texture) from every icosphere viewpoint of `level`."""
    from tqdm import tqdm

    radius = 3.0 * obj.diameter if radius is None else float(radius)
    poses = template_poses(level, radius=radius, upper_hemisphere=upper_hemisphere)
    K = template_intrinsics(image_size, radius, obj.diameter)
    views = [
        render_view(obj, K, pose, image_size, image_size, background)
        for pose in tqdm(poses, desc=f"templates {obj.name}", disable=not progress)
    ]
    rgb, depth, mask = (torch.stack(parts) for parts in zip(*views, strict=True))
    return TemplateSet(rgb, depth, mask, poses, K, obj.name, level, upper_hemisphere)


def render_view(
    obj: ObjectMesh,
    K: Tensor,
    pose: Tensor,
    width: int,
    height: int,
    background: float | Tensor = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """(rgb uint8 (3, H, W), depth float32 (H, W) metres, mask bool (H, W)) of one pose.

    `background` is a value or an RGB triple in [0, 1], or a (3, H, W) image behind the object.
    """
    render = render_mesh(
        obj.vertices.double(), obj.faces, K, pose, width, height, uv=obj.uv, texture=obj.texture
    )
    backdrop = torch.as_tensor(background, dtype=render.rgb.dtype)
    if backdrop.ndim < 3:
        backdrop = backdrop.reshape(-1, 1, 1).expand(3, height, width)
    rgb = torch.where(render.mask, render.rgb, backdrop)
    return to_uint8(rgb), render.depth.float(), render.mask.clone()


def to_uint8(image: Tensor) -> Tensor:
    """Float colours in [0, 1] (clamped) as uint8, rounded to the nearest level."""
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


# -- files ---------------------------------------------------------------------------------


def depth_to_png_units(depth: Tensor) -> np.ndarray:
    """uint16 depth in 0.1 mm units (rounded) of a float depth in metres; ValueError beyond
    6.5535 m, which the format cannot hold."""
    units = np.round(depth.double().numpy() / METRES_PER_DEPTH_UNIT)
    if units.max(initial=0) > MAX_DEPTH_UNITS or units.min(initial=0) < 0:
        raise ValueError(
            f"depth range [{float(depth.min()):.4f}, {float(depth.max()):.4f}] m does not fit "
            f"uint16 0.1 mm units (0 to {MAX_DEPTH_UNITS * METRES_PER_DEPTH_UNIT} m)"
        )
    return units.astype(np.uint16)


def depth_from_png_units(units: np.ndarray) -> Tensor:
    """float32 metres of uint16 depth in 0.1 mm units."""
    return torch.from_numpy(units.astype(np.float64) * METRES_PER_DEPTH_UNIT).float()


def save_templates(ts: TemplateSet, directory: str | Path) -> Path:
    """Write `ts` to `directory/<object_id>/` (module docstring); returns that folder."""
    folder = Path(directory) / ts.object_id
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(len(ts)):
        stem = folder / f"{index:06d}"
        Image.fromarray(ts.rgb[index].permute(1, 2, 0).numpy()).save(f"{stem}.png")
        Image.fromarray(depth_to_png_units(ts.depth[index])).save(f"{stem}_depth.png")
        mask = ts.mask[index].numpy().astype(np.uint8) * 255
        Image.fromarray(mask).save(f"{stem}_mask.png")
    np.save(folder / POSES_FILE, ts.poses.double().numpy())
    height, width = ts.rgb.shape[-2:]
    info = {
        "object_id": ts.object_id,
        "K": ts.K.double().tolist(),
        "level": ts.level,
        "upper_hemisphere": ts.upper_hemisphere,
        "radius": float(ts.poses[0, 2, 3]) if len(ts) else None,
        "image_size": [height, width],
        "num_templates": len(ts),
        "depth_scale": DEPTH_SCALE_MM,
        "depth_unit": "uint16 depth PNG, millimetres = value * depth_scale",
    }
    (folder / INFO_FILE).write_text(json.dumps(info, indent=1))
    return folder


def load_templates(directory: str | Path) -> TemplateSet:
    """The TemplateSet saved in one object folder (`<root>/<object_id>/`)."""
    info = read_template_info(directory)
    rgb, depth, mask = load_template_views(info, range(len(info)))
    return TemplateSet(
        rgb, depth, mask, info.poses, info.K, info.object_id, info.level, info.upper_hemisphere
    )


def template_folders(root: str | Path) -> list[Path]:
    """The object folders (those holding an info.json) directly under `root`, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: no such templates directory; {RENDER_HINT}")
    return sorted(path.parent for path in root.glob(f"*/{INFO_FILE}"))


def read_template_info(directory: str | Path) -> TemplateInfo:
    """info.json and poses.npy of one object folder, checked; ValueError naming the bad file."""
    folder = Path(directory)
    info = _read_info(folder / INFO_FILE)
    poses_path = folder / POSES_FILE
    try:
        poses = torch.from_numpy(np.load(poses_path, allow_pickle=False)).double()
    except (OSError, ValueError) as exc:
        raise ValueError(f"{poses_path}: unreadable ({exc}); {RENDER_HINT}") from None
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or len(poses) != info["num_templates"]:
        raise ValueError(
            f"{poses_path}: shape {tuple(poses.shape)}, expected ({info['num_templates']}, 4, 4) "
            f"as info.json says; {RENDER_HINT}"
        )
    return TemplateInfo(
        directory=folder,
        object_id=str(info["object_id"]),
        K=info["K"],
        poses=poses,
        level=int(info["level"]),
        upper_hemisphere=bool(info["upper_hemisphere"]),
        image_size=info["image_size"],
    )


def _read_info(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path}: missing, so {path.parent} holds no templates; {RENDER_HINT}")
    try:
        info = json.loads(path.read_text())
        info["K"] = torch.tensor(info["K"], dtype=torch.float64)
        info["image_size"] = tuple(int(x) for x in info["image_size"])
        info["num_templates"] = int(info["num_templates"])
        scale = float(info["depth_scale"])
        fields = [info[k] for k in ("object_id", "level", "upper_hemisphere")]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: malformed ({type(exc).__name__}: {exc}); {RENDER_HINT}"
        ) from None
    if info["K"].shape != (3, 3) or len(info["image_size"]) != 2 or None in fields:
        raise ValueError(f"{path}: K must be 3x3 and image_size [H, W]; {RENDER_HINT}")
    if not math.isclose(scale, DEPTH_SCALE_MM):
        raise ValueError(f"{path}: depth_scale {scale}, only {DEPTH_SCALE_MM} is supported")
    return info


def load_template_views(info: TemplateInfo, indices) -> tuple[Tensor, Tensor, Tensor]:
    """(rgb uint8 (n, 3, H, W), depth float32 (n, H, W), mask bool (n, H, W)) of the templates
    `indices` of a folder; ValueError naming the first missing or malformed file."""
    views = [_load_view(info, int(index)) for index in indices]
    if not views:
        height, width = info.image_size
        return (
            torch.zeros(0, 3, height, width, dtype=torch.uint8),
            torch.zeros(0, height, width),
            torch.zeros(0, height, width, dtype=torch.bool),
        )
    rgb, depth, mask = (torch.stack(parts) for parts in zip(*views, strict=True))
    return rgb, depth, mask


def _load_view(info: TemplateInfo, index: int) -> tuple[Tensor, Tensor, Tensor]:
    stem = info.directory / f"{index:06d}"
    rgb = _read_png(Path(f"{stem}.png"), info.image_size, "RGB")
    depth = _read_png(Path(f"{stem}_depth.png"), info.image_size, None)
    mask_path = Path(f"{stem}_mask.png")
    if mask_path.exists():
        mask = torch.from_numpy(_read_png(mask_path, info.image_size, "L") > 0)
    else:
        mask = torch.from_numpy(depth > 0)
    return torch.from_numpy(rgb).permute(2, 0, 1).contiguous(), depth_from_png_units(depth), mask


def _read_png(path: Path, size: tuple[int, int], mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            array = np.array(image.convert(mode) if mode else image)
    except OSError as exc:
        raise ValueError(f"{path}: missing or unreadable ({exc}); {RENDER_HINT}") from None
    if mode is None and (array.ndim != 2 or array.dtype.kind not in "ui"):
        raise ValueError(f"{path}: not a single-channel integer depth PNG; {RENDER_HINT}")
    if array.shape[:2] != tuple(size):
        raise ValueError(f"{path}: {array.shape[:2]} pixels, info.json says {size}; {RENDER_HINT}")
    return array
