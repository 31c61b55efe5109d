"""Synthetic ETH-XGaze subjects: a parametric head with eyeballs at known gaze and head pose.

Each subject is an ellipsoid head (its size, skin and iris colours are the identity) with two
eyeballs, a nose, brows and a mouth; the expression (mouth opening, smile, brow raise) changes
the mouth and brow colours and the 3D landmarks that follow them. A frame draws a head pose and
an eye-in-head rotation; the eyeballs rotate rigidly to the gaze, the camera is fixed and the
head turns in front of it. Frames are rendered with `fresnel.render.mesh` (z-buffer, per-vertex
colours, Lambertian shading) and written in the ETH-XGaze HDF5 schema that `fresnel.gaze.data`
reads, plus the ground-truth canonical mesh and eyeball centres (synthetic-only keys).

Frames: the canonical head frame is the world frame (OpenCV axes: x right, y down, the face
looks toward -z); `w2c` = [R_head | t] with R_head = R_y(yaw) R_x(-pitch) so that the face's
forward axis R_head (0, 0, -1) has the head pose (pitch, yaw) in the gaze convention of
`fresnel.gaze.eyes` (a frontal face is (0, 0)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fresnel.gaze.eyes import pitchyaw_to_vector
from fresnel.io import atomic_path, write_json
from fresnel.render.mesh import interpolate, rasterize
from fresnel.render.primitives import icosphere
from fresnel.render.projection import Camera, rotation_between_directions

HEAD_RADII = (0.075, 0.095, 0.085)  # metres, x y z of the ellipsoid
EYE_RADIUS = 0.015
EYE_OFFSET = (0.033, -0.015)  # eyeball centre x (mirrored), y; z is set on the head surface
EYE_SINK = 0.6  # the eyeball centre lies EYE_SINK * radius behind the skin
IRIS_ANGLE, PUPIL_ANGLE = math.radians(35), math.radians(15)
CAMERA_DISTANCE = 0.6
FOCAL_AT_64 = 200.0  # pixels at 64 px: the whole head in the patch, so silhouettes bound it
MOUTH_Y, BROW_Y = 0.042, -0.040
# Direction towards the light in the camera frame: in front of the face, up and to the right.
LIGHT = np.array([0.3, -0.4, -1.0]) / np.linalg.norm([0.3, -0.4, -1.0])
IDEN_DIMS, EXPR_DIMS = 9, 3  # head scale xyz, skin rgb, iris rgb | mouth open, smile, brow
GAZE_IN_HEAD = (0.35, 0.45)  # max |pitch|, |yaw| of the eyes relative to the head, radians
HEAD_RANGE = (0.3, 0.5)  # max |pitch|, |yaw| of the head pose, radians
SKIN = np.array([[0.87, 0.68, 0.55], [0.62, 0.43, 0.32], [0.95, 0.80, 0.70], [0.45, 0.30, 0.22]])
IRIS = np.array([[0.35, 0.20, 0.10], [0.20, 0.40, 0.65], [0.25, 0.45, 0.25], [0.15, 0.10, 0.08]])
LEFT, RIGHT = 0, 1  # eye order: the subject's right eye (image left) first, as iBUG's 36-41


@dataclass(frozen=True)
class Subject:
    """Identity of one synthetic person: head scale (3,), skin colour, iris colour."""

    scale: np.ndarray
    skin: np.ndarray
    iris: np.ndarray

    @property
    def iden_code(self) -> np.ndarray:
        return np.concatenate([self.scale - 1.0, self.skin, self.iris]).astype(np.float32)

    @property
    def radii(self) -> np.ndarray:
        return np.asarray(HEAD_RADII) * self.scale

    def eye_centers(self) -> np.ndarray:
        """(2, 3) canonical eyeball centres, right eye (negative x) first."""
        rx, ry, rz = self.radii
        centres = []
        for sign in (-1.0, 1.0):
            x, y = sign * EYE_OFFSET[0] * self.scale[0], EYE_OFFSET[1] * self.scale[1]
            surface_z = -rz * math.sqrt(max(0.0, 1 - (x / rx) ** 2 - (y / ry) ** 2))
            centres.append([x, y, surface_z + EYE_SINK * EYE_RADIUS])
        return np.array(centres)


def random_subject(rng: np.random.Generator) -> Subject:
    pick = lambda palette: np.clip(  # noqa: E731
        palette[rng.integers(len(palette))] + rng.normal(0, 0.04, 3), 0.02, 1.0
    )
    return Subject(1.0 + rng.uniform(-0.06, 0.06, 3), pick(SKIN), pick(IRIS))


def head_rotation(head_pose: np.ndarray) -> np.ndarray:
    """(3, 3) R_head = R_y(yaw) R_x(-pitch): maps the face axis (0, 0, -1) to the pose's vector."""
    pitch, yaw = head_pose
    cp, sp, cy, sy = math.cos(-pitch), math.sin(-pitch), math.cos(yaw), math.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    return ry @ rx


def camera(image_size: int) -> Camera:
    f = FOCAL_AT_64 * image_size / 64
    return Camera(f, f, image_size / 2, image_size / 2, image_size, image_size)


def _surface_z(x: np.ndarray, y: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """z of the head's front surface above canonical (x, y)."""
    rx, ry, rz = radii
    return -rz * np.sqrt(np.clip(1 - (x / rx) ** 2 - (y / ry) ** 2, 0.0, None))


def _on_face(x, y, radii) -> np.ndarray:
    x, y = np.broadcast_arrays(np.asarray(x, float), np.asarray(y, float))
    return np.stack([x, y, _surface_z(x, y, radii)], -1)


def _mouth_shape(expr: np.ndarray, scale: np.ndarray) -> tuple[float, float, float]:
    """Centre y, half-width and half-height of the outer lip ellipse."""
    mouth_open, smile, _ = expr
    half_width = 0.022 * (1 + 0.25 * smile) * scale[0]
    return MOUTH_Y * scale[1], half_width, (0.005 + 0.012 * mouth_open) * scale[1]


def landmarks_3d(subject: Subject, expr: np.ndarray) -> np.ndarray:
    """(68, 3) canonical 3D landmarks in the iBUG 68-point order (jaw, brows, nose, eyes, lips)."""
    radii, s = subject.radii, subject.scale
    t = np.linspace(-math.pi / 2, math.pi / 2, 17)
    jaw = _on_face(0.8 * radii[0] * np.sin(t), -0.01 * s[1] + 0.07 * s[1] * np.cos(t), radii)
    brow_y = (BROW_Y - 0.008 * expr[2]) * s[1]
    brow_x = np.linspace(0.052, 0.014, 5) * s[0]
    brows = _on_face(np.concatenate([-brow_x, brow_x[::-1]]), np.full(10, brow_y), radii)
    bridge = _on_face(np.zeros(4), np.linspace(-0.02, 0.012, 4) * s[1], radii)
    bridge[:, 2] -= np.linspace(0.004, 0.016, 4)  # the ridge stands off the face
    nostrils = _on_face(np.linspace(-0.011, 0.011, 5) * s[0], np.full(5, 0.02 * s[1]), radii)
    nostrils[:, 2] -= 0.008
    eyes = []
    phi = np.linspace(math.pi, -math.pi, 6, endpoint=False)  # outer corner first, as iBUG
    for centre in subject.eye_centers():
        sign = np.sign(centre[0])
        x = centre[0] - sign * 0.014 * np.cos(phi)
        eyes.append(_on_face(x, centre[1] + 0.006 * np.sin(phi), radii))
    my, mw, mh = _mouth_shape(expr, s)
    outer = np.linspace(math.pi, -math.pi, 12, endpoint=False)
    inner = np.linspace(math.pi, -math.pi, 8, endpoint=False)
    lips = _on_face(-mw * np.cos(outer), my + mh * np.sin(outer), radii)
    inner_lips = _on_face(-0.7 * mw * np.cos(inner), my + 0.6 * mh * np.sin(inner), radii)
    return np.concatenate([jaw, brows, bridge, nostrils, *eyes, lips, inner_lips]).astype(
        np.float32
    )


@dataclass(frozen=True)
class HeadMesh:
    """A posed mesh: vertices (V, 3) canonical, faces (F, 3), per-vertex colours and normals,
    and per-face part labels (0 head, 1 right eye, 2 left eye)."""

    vertices: np.ndarray
    faces: np.ndarray
    colors: np.ndarray
    normals: np.ndarray
    parts: np.ndarray


def _head_colors(dirs: np.ndarray, verts: np.ndarray, subject: Subject, expr: np.ndarray):
    colors = np.repeat(subject.skin[None], len(verts), 0)
    x, y = verts[:, 0], verts[:, 1]
    s = subject.scale
    my, mw, mh = _mouth_shape(expr, s)
    lips = (x / mw) ** 2 + ((y - my) / mh) ** 2 < 1
    colors[lips] = [0.55, 0.18, 0.18]
    opening = (x / (0.7 * mw)) ** 2 + ((y - my) / (0.6 * mh * expr[0] + 1e-6)) ** 2 < 1
    colors[opening & (expr[0] > 0.15)] = [0.08, 0.03, 0.03]
    brow_y = (BROW_Y - 0.008 * expr[2]) * s[1]
    brow = (np.abs(y - brow_y) < 0.004 * s[1]) & (np.abs(np.abs(x) - 0.033 * s[0]) < 0.02 * s[0])
    colors[brow & (dirs[:, 2] < 0)] = subject.skin * 0.35
    return colors


def _eye_colors(rest_dirs: np.ndarray, subject: Subject) -> np.ndarray:
    """Sclera, iris and pupil from the angle to the eyeball's rest optical axis (0, 0, -1)."""
    angle = np.arccos(np.clip(-rest_dirs[:, 2], -1, 1))
    colors = np.tile([0.95, 0.95, 0.93], (len(rest_dirs), 1))
    colors[angle < IRIS_ANGLE] = subject.iris
    colors[angle < PUPIL_ANGLE] = [0.03, 0.03, 0.03]
    return colors


def build_head(subject: Subject, expr: np.ndarray, eye_rotation: np.ndarray | None = None,
               level: int = 4) -> HeadMesh:  # fmt: skip
    """The subject's mesh in the canonical frame with eyes rotated by `eye_rotation` (3, 3)."""
    dirs, faces = icosphere(level)
    radii = subject.radii
    head = dirs * radii
    head_normals = dirs / radii
    head_normals /= np.linalg.norm(head_normals, axis=1, keepdims=True)
    nose = 0.018 * np.exp(-((head[:, 0] / 0.012) ** 2 + ((head[:, 1] - 0.004) / 0.02) ** 2))
    head = head + nose[:, None] * (dirs[:, 2:3] < 0) * np.array([0.0, 0.0, -1.0])
    parts = [np.zeros(len(faces), np.int64)]
    verts, normals, colors = [head], [head_normals], [_head_colors(dirs, head, subject, expr)]
    all_faces = [faces]
    eye_dirs, eye_faces = icosphere(3)
    rot = np.eye(3) if eye_rotation is None else eye_rotation
    for part, centre in enumerate(subject.eye_centers(), start=1):
        offset = sum(len(v) for v in verts)
        moved = eye_dirs @ rot.T
        verts.append(centre + EYE_RADIUS * moved)
        normals.append(moved)
        colors.append(_eye_colors(eye_dirs, subject))
        all_faces.append(eye_faces + offset)
        parts.append(np.full(len(eye_faces), part, np.int64))
    return HeadMesh(np.concatenate(verts), np.concatenate(all_faces), np.concatenate(colors),
                    np.concatenate(normals), np.concatenate(parts))  # fmt: skip


def eye_rotation_for(gaze: np.ndarray, head_pose: np.ndarray) -> np.ndarray:
    """(3, 3) canonical-frame eyeball rotation that makes both eyes look along the camera-frame
    gaze (pitch, yaw) when the head has `head_pose`."""
    r_head = head_rotation(head_pose)
    g_cam = pitchyaw_to_vector(torch.as_tensor(gaze, dtype=torch.float64))
    g_head = torch.as_tensor(r_head.T) @ g_cam
    rest = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    return rotation_between_directions(rest, g_head).numpy()


def w2c_matrix(head_pose: np.ndarray) -> np.ndarray:
    w2c = np.eye(4)
    w2c[:3, :3] = head_rotation(head_pose)
    w2c[:3, 3] = [0.0, 0.0, CAMERA_DISTANCE]
    return w2c


def render_frame(subject: Subject, expr, gaze, head_pose, image_size: int) -> dict:
    """One frame: image (H, W, 3) float RGB, masks (H, W) bool, 2D/3D landmarks, K, w2c."""
    mesh = build_head(subject, np.asarray(expr), eye_rotation_for(gaze, head_pose))
    cam, w2c = camera(image_size), w2c_matrix(head_pose)
    verts, faces = torch.as_tensor(mesh.vertices), torch.as_tensor(mesh.faces)
    raster = rasterize(verts, faces, cam, torch.as_tensor(w2c))
    normals_cam = torch.as_tensor(mesh.normals @ w2c[:3, :3].T)
    shade = interpolate(raster, normals_cam, faces) @ torch.as_tensor(LIGHT)
    albedo = interpolate(raster, torch.as_tensor(mesh.colors), faces)
    image = albedo * (0.35 + 0.65 * shade.clamp(min=0))[..., None]
    image = torch.where(raster.mask[..., None], image, torch.ones_like(image)).clamp(0, 1)
    part = torch.as_tensor(mesh.parts)[raster.face_ids.clamp(min=0)]
    lmk3d = landmarks_3d(subject, np.asarray(expr))
    cam_pts = lmk3d @ w2c[:3, :3].T + w2c[:3, 3]
    lmk2d = np.stack([cam.fx * cam_pts[:, 0] / cam_pts[:, 2] + cam.cx,
                      cam.fy * cam_pts[:, 1] / cam_pts[:, 2] + cam.cy], -1)  # fmt: skip
    return {
        "image": image.numpy(),
        "head_mask": raster.mask.numpy(),
        "right_eye_mask": (raster.mask & (part == 1)).numpy(),
        "left_eye_mask": (raster.mask & (part == 2)).numpy(),
        "landmarks": lmk2d.astype(np.float32),
        "landmarks_3d": lmk3d,
        "K": np.array([[cam.fx, 0, cam.cx], [0, cam.fy, cam.cy], [0, 0, 1]]),
        "w2c": w2c,
    }


def sample_frame_params(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gaze, head_pose, expression) of one frame; gaze = head pose + an eye-in-head offset."""
    head_pose = rng.uniform(-1, 1, 2) * HEAD_RANGE
    gaze = head_pose + rng.uniform(-1, 1, 2) * GAZE_IN_HEAD
    expr = np.array([rng.uniform(0, 1), rng.uniform(-1, 1), rng.uniform(0, 1)])
    return gaze, head_pose, expr


def write_subject(path: Path, subject: Subject, frames: int, image_size: int,
                  rng: np.random.Generator) -> None:  # fmt: skip
    """Render `frames` frames of `subject` into one ETH-XGaze-style HDF5 file (atomically)."""
    import h5py

    rendered, params = [], []
    for _ in range(frames):
        gaze, head_pose, expr = sample_frame_params(rng)
        rendered.append(render_frame(subject, expr, gaze, head_pose, image_size))
        params.append((gaze, head_pose, expr))
    stack = lambda key: np.stack([r[key] for r in rendered])  # noqa: E731
    gaze = np.stack([p[0] for p in params]).astype(np.float32)
    head_pose = np.stack([p[1] for p in params]).astype(np.float32)
    codes = np.stack([np.concatenate([subject.iden_code, p[2]]) for p in params]).astype(np.float32)
    w2c = stack("w2c")
    rest = build_head(subject, np.zeros(EXPR_DIMS))
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        h5.attrs.update(iden_code_dims=IDEN_DIMS, expr_code_dims=EXPR_DIMS, synthetic=True,
                        eyeball_radius=EYE_RADIUS)  # fmt: skip
        rgb = (stack("image") * 255 + 0.5).astype(np.uint8)
        h5["face_patch"] = rgb[..., ::-1]  # ETH-XGaze stores BGR
        for key in ("head_mask", "left_eye_mask", "right_eye_mask"):
            h5[key] = stack(key).astype(np.uint8) * 255
        h5["facial_landmarks"] = stack("landmarks")
        h5["facial_landmarks_3d"] = stack("landmarks_3d")
        h5["pitchyaw_head"] = gaze
        h5["face_gaze"] = gaze
        h5["face_head_pose"] = head_pose
        h5["latent_codes"] = codes
        h5["cam_index"] = np.zeros((frames, 1), np.int64)
        h5["inmat"] = stack("K").astype(np.float32)
        h5["w2c_Rmat"] = w2c[:, :3, :3].astype(np.float32)
        h5["w2c_Tvec"] = w2c[:, :3, 3].astype(np.float32)
        h5["pose"] = np.zeros((frames, 6), np.float32)  # canonical = world: identity
        h5["scale"] = np.ones((frames, 1), np.float32)
        h5["gt_mesh_vertices"] = rest.vertices.astype(np.float32)
        h5["gt_mesh_faces"] = rest.faces.astype(np.int32)
        h5["eyeball_centers"] = subject.eye_centers().astype(np.float32)


def write_synthetic_xgaze(out_dir, num_subjects: int = 5, frames_per_subject: int = 48,
                          image_size: int = 64, num_test: int = 2, seed: int = 0,
                          progress: bool = False) -> dict:  # fmt: skip
    """Write subject0000.h5 ... and train_test_split.json (the last `num_test` subjects are the
    test split) under out_dir; returns a summary."""
    from tqdm import tqdm

    if not 0 <= num_test < num_subjects:
        raise ValueError(f"num_test must be in [0, {num_subjects}), got {num_test}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"subject{i:04d}.h5" for i in range(num_subjects)]
    for i, name in enumerate(tqdm(names, desc="synthetic subjects", disable=not progress)):
        rng = np.random.default_rng([seed, i])
        write_subject(out_dir / name, random_subject(rng), frames_per_subject, image_size, rng)
    split = {"train": names[: num_subjects - num_test], "test": names[num_subjects - num_test :]}
    write_json(out_dir / "train_test_split.json", split)
    return {"subjects": num_subjects, "frames": num_subjects * frames_per_subject, **split}
