"""GaussianAvatars' own files, both ways, with a writer and formulas written here from upstream's
code (ShenhanQian/GaussianAvatars), independent of fresnel.avatars.ply and .binding:

- `point_cloud.ply` (scene/gaussian_model.py `save_ply`, `construct_list_of_attributes`): one
  binary little-endian `element vertex N`, every property `float`, in the order x y z, nx ny nz,
  f_dc_0..2, f_rest_0..(3 (K - 1) - 1) (channel-major), opacity (logit), scale_0..2 (log),
  rot_0..3 (w x y z, unnormalised), binding_0 (the face id as a float); no comment line. The
  values are local to the face.
- `flame_param.npz` beside it (scene/flame_gaussian_model.py `save_ply`): float32 `shape`,
  `expr` (T, E), `rotation`, `neck_pose`, `jaw_pose`, `translation` (T, 3), `eyes_pose` (T, 6),
  `static_offset` (1, V, 3), `dynamic_offset` (T, V, 3).
- The face frame (utils/graphics_utils.py `compute_face_orientation`): a0 = n(v1 - v0),
  a1 = n(a0 x (v2 - v0)), a2 = -n(a1 x a0), R = [a0 a1 a2] (columns); scale = (|v1 - v0| +
  |a2 . (v2 - v0)|) / 2; centre = the corners' mean.
- World Gaussians (gaussian_model.py `get_xyz`, `get_scaling`, `get_rotation`): xyz =
  R local * scale + centre, scaling = exp(scale_i) * scale, rotation = q(R) * n(q_local).
"""

import math

import numpy as np
import pytest
import torch

from fresnel.avatars.binding import BoundGaussians
from fresnel.avatars.data import SyntheticConfig, write_synthetic
from fresnel.avatars.head_params import HeadParams
from fresnel.avatars.options import AvatarOptions
from fresnel.avatars.ply import load_ply, save_ply
from fresnel.avatars.scene import load_scene
from fresnel.avatars.synthetic_head import SyntheticHead
from fresnel.avatars.train import AvatarTraining
from fresnel.device import resolve


def upstream_attributes(sh_degree: int) -> list[str]:
    rest = 3 * ((sh_degree + 1) ** 2 - 1)
    return ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2",
            *(f"f_rest_{i}" for i in range(rest)), "opacity", "scale_0", "scale_1", "scale_2",
            "rot_0", "rot_1", "rot_2", "rot_3", "binding_0"]  # fmt: skip


def write_upstream_ply(path, local_xyz, f_dc, f_rest, opacity, scale, rot, binding) -> None:
    """Upstream's save_ply: the arrays as float32 columns in its attribute order."""
    columns = [local_xyz, np.zeros_like(local_xyz), f_dc, f_rest, opacity[:, None], scale, rot,
               binding[:, None]]  # fmt: skip
    table = np.concatenate([np.asarray(c, np.float32) for c in columns], axis=1)
    names = upstream_attributes(math.isqrt(f_rest.shape[1] // 3 + 1) - 1)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(table)}",
              *(f"property float {name}" for name in names), "end_header"]  # fmt: skip
    path.write_bytes(("\n".join(header) + "\n").encode() + table.astype("<f4").tobytes())


def read_upstream_ply(path) -> dict[str, np.ndarray]:
    """Upstream's load_ply, reduced to its columns: header names -> float32 arrays."""
    data = path.read_bytes()
    head, body = data.split(b"end_header\n", 1)
    lines = head.decode().splitlines()
    assert all(line.split()[1] == "float" for line in lines if line.startswith("property"))
    names = [line.split()[2] for line in lines if line.startswith("property")]
    table = np.frombuffer(body, "<f4").reshape(-1, len(names))
    return {name: table[:, i].astype(np.float64) for i, name in enumerate(names)}


def upstream_world(ply: dict, vertices: np.ndarray, faces: np.ndarray):
    """World means, scales and rotation matrices by upstream's formulas (module docstring)."""
    v0, v1, v2 = (vertices[faces[:, i]] for i in range(3))

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    a0 = unit(v1 - v0)
    a1 = unit(np.cross(a0, v2 - v0))
    a2 = -unit(np.cross(a1, a0))
    frames = np.stack([a0, a1, a2], axis=-1)
    scale = (np.linalg.norm(v1 - v0, axis=-1) + np.abs((a2 * (v2 - v0)).sum(-1))) / 2
    centre = (v0 + v1 + v2) / 3
    face = ply["binding_0"].astype(int)
    local = np.stack([ply["x"], ply["y"], ply["z"]], -1)
    means = np.einsum("nij,nj->ni", frames[face], local) * scale[face, None] + centre[face]
    scales = np.exp(np.stack([ply[f"scale_{i}"] for i in range(3)], -1)) * scale[face, None]
    rotations = frames[face] @ quat_matrix(np.stack([ply[f"rot_{i}"] for i in range(4)], -1))
    return means, scales, rotations


def quat_matrix(q: np.ndarray) -> np.ndarray:
    """Rotation matrices of (w, x, y, z) quaternions (normalised first, as upstream does)."""
    w, x, y, z = (q / np.linalg.norm(q, axis=-1, keepdims=True)).T
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], axis=-2)  # fmt: skip


def posed_head_model(sh_degree=3):
    head = SyntheticHead()
    params = head.zero_params(1)
    params.rotation[0] = torch.tensor([0.2, -0.4, 0.1])
    params.jaw_pose[0, 0] = 0.3
    params.expr[0] = torch.tensor([0.5, -0.3, 0.2, 0.1])
    params.translation[0] = torch.tensor([0.01, -0.02, 0.03])
    generator = torch.Generator().manual_seed(0)
    model = BoundGaussians.on_mesh(head.rest_vertices(), head.faces, 2, generator, sh_degree)
    with torch.no_grad():  # not the identity: rotations and offsets off the face's axes
        model.local_quats.add_(0.5 * torch.randn(model.local_quats.shape, generator=generator))
        model.local_means.add_(0.2 * torch.randn(model.local_means.shape, generator=generator))
        model.log_scales.add_(0.5 * torch.randn(model.log_scales.shape, generator=generator))
    return head, params, model


def test_a_ply_written_here_has_exactly_upstreams_header(tmp_path):
    _, _, model = posed_head_model(sh_degree=3)
    data = save_ply(tmp_path / "point_cloud.ply", model).read_bytes()
    header = data[: data.index(b"end_header\n")].decode().splitlines()
    assert header == ["ply", "format binary_little_endian 1.0", f"element vertex {len(model)}",
                      *(f"property float {name}" for name in upstream_attributes(3))]  # fmt: skip


def test_upstreams_formulas_on_our_file_give_our_world_gaussians_on_a_posed_head(tmp_path):
    head, params, model = posed_head_model()
    vertices = head.vertices(params)[0].detach()
    ply = read_upstream_ply(save_ply(tmp_path / "point_cloud.ply", model))
    means, scales, rotations = upstream_world(ply, vertices.double().numpy(), head.faces.numpy())
    with torch.no_grad():
        our_means, our_scales, our_quats = model.world(vertices, head.faces)
    np.testing.assert_allclose(means, our_means.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(scales, our_scales.numpy(), rtol=1e-5, atol=0)
    np.testing.assert_allclose(rotations, quat_matrix(our_quats.double().numpy()), atol=1e-5)


@pytest.fixture(scope="module")
def training(tmp_path_factory):
    root = tmp_path_factory.mktemp("avatars") / "subject"
    write_synthetic(root, SyntheticConfig(image_size=32, cameras=2, timesteps=2,
                                          test_timesteps=1, val_cameras=[1]))  # fmt: skip
    options = AvatarOptions(iterations=1, eval=True, white_background=True, sh_degree=1)
    return AvatarTraining(load_scene(root), options, resolve("cpu"))


def test_upstreams_files_load_here_and_render_what_they_hold(training, tmp_path):
    g, frame = training.gaussians, training.scene.frames["train"][0]
    with torch.no_grad():  # a model that is not the initial one
        g.local_quats.add_(0.3 * torch.randn(g.local_quats.shape))
        g.sh.add_(torch.randn(g.sh.shape))
        g.opacity_logits.add_(2.0)
        expected = training.render(frame, frame.camera)[0].image.clone()
    sh = g.sh.detach().numpy()
    f_rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(len(g), -1)  # channel-major
    write_upstream_ply(tmp_path / "point_cloud.ply", g.local_means.detach().numpy(), sh[:, 0, :],
                       f_rest, g.opacity_logits.detach().numpy(), g.log_scales.detach().numpy(),
                       g.local_quats.detach().numpy(), g.face_ids.numpy().astype(np.float32))  # fmt: skip
    arrays = {
        k: v.detach().numpy().astype(np.float32) for k, v in training.params.as_dict().items()
    }
    steps, count = arrays["expr"].shape[0], training.head.num_vertices
    np.savez(tmp_path / "flame_param.npz", **arrays,
             static_offset=np.zeros((1, count, 3), np.float32),
             dynamic_offset=np.zeros((steps, count, 3), np.float32))  # fmt: skip

    training.gaussians = load_ply(tmp_path / "point_cloud.ply", g.num_faces)
    training.params = HeadParams.load_npz(tmp_path / "flame_param.npz")
    with torch.no_grad():
        image = training.render(frame, frame.camera)[0].image
    assert image.std() > 0.01
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)


def test_our_flame_param_npz_has_upstreams_offset_keys(training, tmp_path):
    training.params.save_npz(tmp_path / "flame_param.npz", training.head.num_vertices)
    with np.load(tmp_path / "flame_param.npz") as data:
        steps, count = data["expr"].shape[0], training.head.num_vertices
        assert data["static_offset"].shape == (1, count, 3)
        assert data["dynamic_offset"].shape == (steps, count, 3)
        assert all(data[key].dtype == np.float32 for key in data.files)
