"""The NeRSemble / GaussianAvatars dataset layout: read for users who have it, and written by
the synthetic stage (renders of a teacher avatar on the built-in head).

    DATA/transforms_{train,val,test}.json   "frames": file_path, transform_matrix, fl_x, fl_y,
                                            cx, cy, w, h, timestep_index, camera_index,
                                            flame_param_path
    DATA/canonical_flame_param.npz          the head's shape (rest pose)
    DATA/flame_param/{t:05d}.npz            per-timestep head parameters
    DATA/images/{t:05d}_{c:02d}.png         white background, as in the guide
    DATA/head.json                          {"head": "synthetic"} (ours; absent = FLAME)

`transform_matrix` is camera-to-world with OpenGL axes (x right, y up, z back), as in
NeRF-style files; the renderer wants world-to-camera with OpenCV axes (y down, z forward).
Splits as in the paper: train = training cameras at training timesteps; val = the held-out
cameras at training timesteps (novel view); test = the held-out timesteps from every camera
(self-reenactment).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from fresnel.avatars.binding import BoundGaussians
from fresnel.avatars.head_params import HeadParams, save_param_dir
from fresnel.avatars.synthetic_head import SyntheticHead
from fresnel.io import write_json
from fresnel.render import Camera, TileBasedRenderer, sh

SPLITS = ("train", "val", "test")
WHITE = torch.ones(3)
OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


class DatasetError(ValueError):
    """A dataset folder that does not follow the layout (the message names the file)."""


@dataclass(frozen=True)
class Frame:
    image: Path
    camera: Camera
    viewmat: Tensor  # (4, 4) world-to-camera, OpenCV axes
    timestep: int
    camera_index: int
    params_file: Path


def viewmat_from_c2w(c2w: Tensor) -> Tensor:
    """World-to-camera (OpenCV axes) from an OpenGL camera-to-world matrix."""
    return torch.linalg.inv(c2w.double() @ OPENGL_TO_OPENCV.double()).float()


def c2w_from_viewmat(viewmat: Tensor) -> Tensor:
    return torch.linalg.inv(viewmat.double()).float() @ OPENGL_TO_OPENCV


def look_at(centre: Tensor, target: Tensor, up=(0.0, 1.0, 0.0)) -> Tensor:
    """World-to-camera (OpenCV axes) of a camera at `centre` looking at `target`, `up` up."""
    forward = torch.nn.functional.normalize(target - centre, dim=0)
    right = torch.nn.functional.normalize(torch.linalg.cross(forward, torch.tensor(up)), dim=0)
    down = torch.linalg.cross(forward, right)
    rot = torch.stack((right, down, forward))  # rows: the camera's axes in world space
    viewmat = torch.eye(4)
    viewmat[:3, :3], viewmat[:3, 3] = rot, -rot @ centre
    return viewmat


def read_split(root, split: str) -> list[Frame]:
    """The frames of `transforms_<split>.json` under `root`, each camera checked (`_frame`)."""
    root = Path(root)
    path = root / f"transforms_{split}.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: a GaussianAvatars dataset folder holds "
                           "transforms_{train,val,test}.json, images/ and flame_param/")  # fmt: skip
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise DatasetError(f"{path}: expected an object with a 'frames' list")
    frames = []
    for index, frame in enumerate(meta["frames"]):
        try:
            frames.append(_frame(root, {**meta, **frame}))
        except KeyError as exc:
            raise DatasetError(f"{path}: frame {index} lacks the key {exc}") from None
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{path}: frame {index} ({frame.get('file_path')}): {exc}") from None
    return frames


def _frame(root: Path, f: dict) -> Frame:
    """One frame; ValueError for a camera that cannot be rendered (non-finite or non-numeric
    values, focal lengths <= 0, a size below one pixel, a matrix that is not a pose)."""
    intrinsics = [f[key] for key in ("fl_x", "fl_y", "cx", "cy", "w", "h")]
    if not all(_finite_number(value) for value in intrinsics):
        raise ValueError(f"fl_x, fl_y, cx, cy, w, h must be finite numbers, got {intrinsics}")
    if not (intrinsics[0] > 0 and intrinsics[1] > 0):
        raise ValueError(f"fl_x and fl_y must be > 0, got {intrinsics[:2]}")
    if intrinsics[4] < 1 or intrinsics[5] < 1:
        raise ValueError(f"w and h must be >= 1 pixel, got {intrinsics[4:]}")
    camera = Camera(*(float(v) for v in intrinsics[:4]), int(intrinsics[4]), int(intrinsics[5]))
    return Frame(root / f["file_path"], camera, viewmat_from_c2w(_pose(f["transform_matrix"])),
                 int(f["timestep_index"]), int(f["camera_index"]),
                 root / f["flame_param_path"])  # fmt: skip


def _finite_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _pose(matrix) -> Tensor:
    """A camera-to-world matrix, checked: finite 4x4, rotation part a rotation, last row 0 0 0 1."""
    try:
        c2w = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        c2w = np.empty(0)
    if c2w.shape != (4, 4) or not np.isfinite(c2w).all():
        raise ValueError(f"transform_matrix must be a finite 4x4 matrix, got {str(matrix)[:60]}")
    rotation = c2w[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-4) or np.linalg.det(rotation) < 0:
        raise ValueError("transform_matrix: its rotation part is not a rotation")
    if not np.allclose(c2w[3], [0, 0, 0, 1]):
        raise ValueError("transform_matrix: its last row is not 0 0 0 1")
    return torch.from_numpy(c2w).float()


def check_images(frames: list[Frame]) -> None:
    """DatasetError naming the first image that is missing, unreadable, or not the size its
    camera says (every image, before any training step)."""
    for frame in frames:
        try:
            with Image.open(frame.image) as image:
                size = image.size
                image.verify()
        except FileNotFoundError:
            raise DatasetError(
                f"{frame.image} not found: the dataset's transforms_*.json names it"
            ) from None
        except (OSError, SyntaxError) as exc:
            raise DatasetError(f"{frame.image}: unreadable image ({exc})") from None
        expected = (frame.camera.width, frame.camera.height)
        if size != expected:
            raise DatasetError(
                f"{frame.image}: {size[0]}x{size[1]} pixels, but its transforms_*.json camera "
                f"says w x h = {expected[0]}x{expected[1]}"
            )


@dataclass
class SyntheticConfig:
    """A multi-view, multi-timestep capture of a teacher avatar (cameras on an arc)."""

    image_size: int = 64
    cameras: int = 6
    arc_degrees: float = 100.0  # the cameras' spread around the head, centred on the face
    distance: float = 0.45  # metres from the head's centre
    val_cameras: list[int] = field(default_factory=lambda: [2])  # novel views
    timesteps: int = 8
    test_timesteps: int = 2  # the last ones, held out (self-reenactment)
    gaussians_per_face: int = 2
    seed: int = 0


def arc_viewmats(config: SyntheticConfig) -> list[Tensor]:
    angles = np.linspace(-0.5, 0.5, config.cameras) * math.radians(config.arc_degrees)
    centres = [torch.tensor([config.distance * math.sin(a), 0.02, config.distance * math.cos(a)])
               for a in angles]  # fmt: skip
    return [look_at(c, torch.zeros(3)) for c in centres]


def animation(head: SyntheticHead, timesteps: int) -> HeadParams:
    """Talking-head motion: the jaw opens and closes, expressions and gaze change, the head
    turns a little; deterministic, so the held-out timesteps are new poses of the same motion."""
    params = head.zero_params(timesteps)
    t = torch.linspace(0, 1, timesteps)
    params.jaw_pose[:, 0] = 0.25 * (0.5 - 0.5 * torch.cos(2 * math.pi * 1.5 * t))
    params.expr[:, 0] = 0.8 * torch.sin(2 * math.pi * t)  # smile
    params.expr[:, 1] = 0.6 * torch.sin(2 * math.pi * 2 * t)  # brows
    params.eyes_pose[:, 1] = params.eyes_pose[:, 4] = 0.3 * torch.sin(2 * math.pi * t)
    params.rotation[:, 1] = 0.15 * torch.sin(2 * math.pi * t)
    return params


# skin, eyes, nose, mouth: colours a viewer can tell apart
REGION_COLOURS = torch.tensor([[0.86, 0.67, 0.55], [0.15, 0.25, 0.45], [0.80, 0.52, 0.45],
                               [0.70, 0.15, 0.20]])  # fmt: skip


def teacher_avatar(head: SyntheticHead, config: SyntheticConfig) -> BoundGaussians:
    """Opaque Gaussians on every face, coloured by region with a seeded speckle."""
    g = torch.Generator().manual_seed(config.seed)
    avatar = BoundGaussians.on_mesh(head.rest_vertices(), head.faces, config.gaussians_per_face,
                                    generator=g, sh_degree=0, init_scale=0.6)  # fmt: skip
    colours = REGION_COLOURS[head.face_regions[avatar.face_ids]]
    colours = (colours + 0.08 * torch.randn(colours.shape, generator=g)).clamp(0, 1)
    with torch.no_grad():
        avatar.sh[:, 0] = sh.rgb_to_sh0(colours)
        avatar.opacity_logits.fill_(4.0)
    return avatar


def render_avatar(avatar, vertices, faces, camera, viewmat, renderer=None) -> Tensor:
    """(3, H, W) image of the avatar on one posed mesh, white background."""
    means, scales, quats = avatar.world(vertices, faces)
    colours = sh.view_colors(means, avatar.sh, avatar.sh_degree, viewmat)
    render = renderer or TileBasedRenderer()
    return render(means, scales, quats, avatar.opacities, colours, camera, viewmat, WHITE).image


def write_synthetic(root, config: SyntheticConfig) -> dict:
    """Render the teacher on the synthetic head into the layout above; returns counts."""
    root, head = Path(root), SyntheticHead()
    params = animation(head, config.timesteps)
    param_files = save_param_dir(root, params)
    avatar, viewmats = teacher_avatar(head, config), arc_viewmats(config)
    size = config.image_size
    camera = Camera(1.7 * size, 1.7 * size, size / 2, size / 2, size, size)
    frames = {split: [] for split in SPLITS}
    with torch.no_grad():
        vertices = head.vertices(params)
        for t in range(config.timesteps):
            for c, viewmat in enumerate(viewmats):
                name = f"images/{t:05d}_{c:02d}.png"
                image = render_avatar(avatar, vertices[t], head.faces, camera, viewmat)
                save_image(image, root / name)
                frames[_split(t, c, config)].append(
                    _frame_record(name, camera, viewmat, t, c, param_files[t])
                )
    for split, items in frames.items():
        write_json(root / f"transforms_{split}.json", {"frames": items})
    write_json(root / "head.json", {"head": "synthetic"})  # the trainer drives the same head
    return {split: len(items) for split, items in frames.items()} | {"gaussians": len(avatar)}


def _split(t: int, c: int, config: SyntheticConfig) -> str:
    if t >= config.timesteps - config.test_timesteps:
        return "test"
    return "val" if c in config.val_cameras else "train"


def _frame_record(name, camera: Camera, viewmat, t: int, c: int, params_file: str) -> dict:
    return {"file_path": name, "transform_matrix": c2w_from_viewmat(viewmat).tolist(),
            "fl_x": camera.fx, "fl_y": camera.fy, "cx": camera.cx, "cy": camera.cy,
            "w": camera.width, "h": camera.height, "timestep_index": t, "camera_index": c,
            "flame_param_path": params_file}  # fmt: skip


def save_image(image: Tensor, path: Path) -> None:
    """A (3, H, W) image in [0, 1] as an 8-bit PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels).save(path)


def load_image(path: Path) -> Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1) / 255.0
