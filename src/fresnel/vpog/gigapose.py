"""Templates rendered by GigaPose (nv-nguyen/gigapose), brought into this package's layout.

GigaPose's templates of one dataset (`<root>` = `.../datasets/templates/<dataset>`), as its
`render_*_templates.py` write them and its `TemplateData` reads them back:
    object_poses/NNNNNN.npy   (V, 4, 4) float64 object-to-camera poses, OpenCV axes, t in mm;
                              one file per object, NNNNNN its BOP id (1-based)
    NNNNNN/VVVVVV.png         RGBA, 8 bits: the render; alpha is the object's mask
                              (BlenderProc's soft edges: object where alpha > 127)
    NNNNNN/VVVVVV_depth.png   uint16 depth in mm, 0 = background
Every template shares one camera that GigaPose hard-codes (`GIGAPOSE_K`, 640 x 480). The meshes
are BOP's `models/obj_NNNNNN.ply` (mm) with `models_info.json` (diameter, symmetries).

`import_templates` writes each object as `<output>/obj_NNNNNN/` in `fresnel.vpog.templates`'s
layout: metres, the centred square around the principal point resized to `image_size` (K scaled
to match; RGB by area, depth and mask by nearest pixel), with the mesh (`mesh.pt`, metres, BOP's
object frame kept, so the poses still hold) and its symmetries (`symmetries.json`) beside them.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fresnel.vpog.bop import MM
from fresnel.vpog.templates import TemplateSet, save_templates

GIGAPOSE_K = ((572.4114, 0.0, 320.0), (0.0, 573.57043, 240.0), (0.0, 0.0, 1.0))
GIGAPOSE_SIZE = (480, 640)  # (H, W)
POSES_DIR = "object_poses"
LEVELS = {42: 0, 162: 1, 642: 2}  # GigaPose's icosphere levels by view count (full sphere)


def object_ids(root: str | Path) -> list[int]:
    """The BOP ids of the objects whose poses `root/object_poses/` holds."""
    paths = sorted((Path(root) / POSES_DIR).glob("*.npy"))
    if not paths:
        raise FileNotFoundError(
            f"{Path(root) / POSES_DIR}: no NNNNNN.npy; point --templates_dir at GigaPose's "
            "templates/<dataset> folder"
        )
    return [int(path.stem) for path in paths]


def read_object(root: str | Path, obj_id: int) -> TemplateSet:
    """One object's GigaPose templates at their own size, in metres (`TemplateSet`)."""
    root = Path(root)
    poses = torch.from_numpy(np.load(root / POSES_DIR / f"{obj_id:06d}.npy")).double()
    if poses.ndim != 3 or poses.shape[1:] != (4, 4) or not torch.isfinite(poses).all():
        raise ValueError(f"{root / POSES_DIR}/{obj_id:06d}.npy: not finite (V, 4, 4) poses")
    poses[:, :3, 3] *= MM
    views = [_read_view(root / f"{obj_id:06d}", view) for view in range(len(poses))]
    rgb, depth, mask = (torch.stack(parts) for parts in zip(*views, strict=True))
    K = torch.tensor(GIGAPOSE_K, dtype=torch.float64)
    level = LEVELS.get(len(poses), -1)
    return TemplateSet(rgb, depth, mask, poses, K, f"obj_{obj_id:06d}", level, False)


def _read_view(folder: Path, view: int) -> tuple[Tensor, Tensor, Tensor]:
    rgba = _read(folder / f"{view:06d}.png", "RGBA")
    depth = _read(folder / f"{view:06d}_depth.png", None)
    if depth.shape != rgba.shape[:2] or rgba.shape[:2] != GIGAPOSE_SIZE:
        raise ValueError(f"{folder}/{view:06d}: images are not GigaPose's {GIGAPOSE_SIZE}")
    rgb = torch.from_numpy(rgba[..., :3].copy()).permute(2, 0, 1)
    return (
        rgb,
        torch.from_numpy(depth.astype(np.float64) * MM).float(),
        torch.from_numpy(rgba[..., 3] > 127),
    )


def _read(path: Path, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert(mode) if mode else image)
    except OSError as exc:
        raise ValueError(f"{path}: missing or unreadable ({exc})") from None


def square_crop(templates: TemplateSet, image_size: int) -> TemplateSet:
    """The templates cut to the centred square around the principal point and resized to
    image_size x image_size, K scaled with them."""
    height, width = templates.rgb.shape[-2:]
    side = min(height, width)
    K = templates.K.clone()
    left = int(np.clip(round(float(K[0, 2]) - side / 2), 0, width - side))
    top = int(np.clip(round(float(K[1, 2]) - side / 2), 0, height - side))
    box = (left, top, left + side, top + side)
    size = (image_size, image_size)
    rgb = [_resize(image.permute(1, 2, 0).numpy(), box, size, Image.BOX) for image in templates.rgb]
    depth = [_resize(d.numpy(), box, size, Image.NEAREST) for d in templates.depth]
    mask = [_resize(m.numpy().astype(np.uint8), box, size, Image.NEAREST) for m in templates.mask]
    scale = image_size / side
    K[0, 2] -= left
    K[1, 2] -= top
    K[:2] *= scale
    return replace(
        templates,
        rgb=torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2).contiguous(),
        depth=torch.from_numpy(np.stack(depth)),
        mask=torch.from_numpy(np.stack(mask) > 0),
        K=K,
    )


def _resize(array: np.ndarray, box, size, resample) -> np.ndarray:
    return np.array(Image.fromarray(array).resize(size, resample=resample, box=box))


def import_templates(root: str | Path, models_dir: str | Path, output_dir: str | Path,
                     image_size: int = 224, ids: list[int] | None = None) -> dict:  # fmt: skip
    """Every object (or `ids`) of a GigaPose templates folder into `output_dir` (module
    docstring); the template count per object folder."""
    from fresnel.vpog.bop import move_models_info_symmetries
    from fresnel.vpog.objects import load_mesh, save_object
    from fresnel.vpog.synthetic import MESH_FILE, SYMMETRIES_FILE

    models_dir = Path(models_dir)
    info_path = models_dir / "models_info.json"
    models_info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    counts = {}
    for obj_id in ids or object_ids(root):
        mesh_path = models_dir / f"obj_{obj_id:06d}.ply"
        if not mesh_path.is_file():
            raise FileNotFoundError(f"{mesh_path}: missing; --models_dir is BOP's models folder")
        templates = square_crop(read_object(root, obj_id), image_size)
        folder = save_templates(templates, output_dir)
        mesh = replace(load_mesh(mesh_path, scale=MM), name=templates.object_id)
        save_object(mesh, folder / MESH_FILE)
        symmetries = move_models_info_symmetries(models_info.get(str(obj_id), {}), MM)
        if symmetries:
            (folder / SYMMETRIES_FILE).write_text(json.dumps(symmetries))
        counts[templates.object_id] = len(templates)
    return counts
