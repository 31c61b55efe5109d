"""GaussianAvatars PLY files: exact round trip, upstream's header and column layout (checked
with an independent reader; tests/avatars/test_avatars_upstream.py has upstream's own writer
and frame), files of this package's earlier layout, and a clear error for files that are not
such a PLY."""

import numpy as np
import pytest
import torch

from fresnel.avatars.binding import BoundGaussians
from fresnel.avatars.ply import load_ply, property_names, save_ply
from fresnel.render.projection import quat_multiply

PLY_TO_NUMPY = {"float": "<f4", "int": "<i4"}


def random_gaussians(n=7, sh_degree=3, channels=3, num_faces=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = (sh_degree + 1) ** 2
    return BoundGaussians(
        local_means=torch.randn(n, 3, generator=g),
        log_scales=torch.randn(n, 3, generator=g),
        local_quats=torch.randn(n, 4, generator=g),
        opacity_logits=torch.randn(n, generator=g),
        sh=torch.randn(n, k, channels, generator=g),
        face_ids=torch.randint(0, num_faces, (n,), generator=g),
        num_faces=num_faces,
    )


def read_3dgs(path):
    """A minimal reader in the style of 3DGS viewers: header lines -> numpy dtype -> columns."""
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode().splitlines()
    count = next(int(line.split()[2]) for line in header if line.startswith("element vertex"))
    props = [line.split()[1:] for line in header if line.startswith("property")]
    dtype = np.dtype([(name, PLY_TO_NUMPY[kind]) for kind, name in props])
    return header, np.frombuffer(data[end:], dtype=dtype, count=count)


@pytest.mark.parametrize(("sh_degree", "channels"), [(0, 3), (3, 3), (3, 1), (1, 1)])
def test_round_trip_is_exact(tmp_path, sh_degree, channels):
    model = random_gaussians(sh_degree=sh_degree, channels=channels)
    path = save_ply(tmp_path / "point_cloud" / "iteration_3" / "point_cloud.ply", model)
    loaded = load_ply(path, model.num_faces)
    assert loaded.num_faces == model.num_faces
    assert loaded.sh_degree == sh_degree
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert loaded.face_ids.dtype == torch.long
    assert not list(path.parent.glob(".tmp-*"))


def test_header_has_the_3dgs_layout(tmp_path):
    model = random_gaussians(n=4, sh_degree=1, channels=3)
    header, _ = read_3dgs(save_ply(tmp_path / "a.ply", model))
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "element vertex 4" in header
    assert not [line for line in header if line.startswith("comment")]
    props = [line.split()[1:] for line in header if line.startswith("property")]
    names = [name for _, name in props]
    assert names == [
        *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
        *(f"f_rest_{i}" for i in range(9)),
        *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
        "binding_0",
    ]
    assert names == property_names(3, 9)
    assert {kind for kind, _ in props} == {"float"}
    assert header[-1] == "end_header"


def test_columns_match_an_independent_reader(tmp_path):
    model = random_gaussians(n=6, sh_degree=2, channels=3)
    _, table = read_3dgs(save_ply(tmp_path / "a.ply", model))
    np.testing.assert_array_equal(
        np.stack([table[c] for c in "xyz"], -1), model.local_means.detach().numpy()
    )
    np.testing.assert_array_equal(np.stack([table[f"n{c}"] for c in "xyz"], -1), 0)
    sh = model.sh.detach().numpy()  # (N, 9, 3)
    for c in range(3):
        np.testing.assert_array_equal(table[f"f_dc_{c}"], sh[:, 0, c])
        for k in range(1, 9):  # 3DGS: channel-major, then coefficient
            np.testing.assert_array_equal(table[f"f_rest_{c * 8 + k - 1}"], sh[:, k, c])
    np.testing.assert_array_equal(table["opacity"], model.opacity_logits.detach().numpy())
    for i in range(3):
        np.testing.assert_array_equal(table[f"scale_{i}"], model.log_scales.detach()[:, i])
    for i in range(4):  # w first
        np.testing.assert_array_equal(table[f"rot_{i}"], model.local_quats.detach()[:, i])
    np.testing.assert_array_equal(table["binding_0"], model.face_ids.numpy())


def test_densified_model_round_trips(tmp_path):
    model = random_gaussians(n=5)
    model.split(torch.tensor([True, False, True, False, False]), generator=torch.Generator())
    loaded = load_ply(save_ply(tmp_path / "a.ply", model), model.num_faces)
    assert len(loaded) == len(model) == 7
    assert torch.equal(loaded.face_ids, model.face_ids)
    assert torch.equal(loaded.local_means, model.local_means)


def test_empty_model_round_trips(tmp_path):
    loaded = load_ply(save_ply(tmp_path / "a.ply", random_gaussians(n=0)), 5)
    assert len(loaded) == 0
    assert loaded.sh.shape == (0, 16, 3)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_ply(tmp_path / "a.ply", random_gaussians())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"a\.ply: truncated"):
        load_ply(path, 5)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b"garbage" + b[3:], "not a PLY file"),
        (lambda b: b.replace(b"end_header\n", b"end_heading\n"), "end_header"),
        (lambda b: b.replace(b"binary_little_endian", b"binary_big_endian"), "little_endian"),
        (lambda b: b.replace(b"element vertex 7", b"element vertex x"), "malformed"),
        (lambda b: b.replace(b"float binding_0", b"float bounding_0"), "binding_0"),
        (lambda b: b.replace(b"property float rot_3", b"property float rot_9"), "rot_3"),
        (lambda b: b.replace(b"float f_rest_44", b"float f_rest_99"), "f_rest_44"),
        (lambda b: b.replace(b"property float x", b"property quad x"), "unsupported"),
    ],
)
def test_garbled_header_names_what_is_missing(tmp_path, edit, message):
    path = save_ply(tmp_path / "bad.ply", random_gaussians())
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        load_ply(path, 5)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_binding_outside_the_mesh_is_an_error(tmp_path):
    path = save_ply(tmp_path / "a.ply", random_gaussians())
    with pytest.raises(ValueError, match="binding outside"):
        load_ply(path, 1)
    with pytest.raises(ValueError, match="face count is needed"):
        load_ply(path)


def test_a_file_of_the_earlier_layout_loads_to_the_same_world_gaussians(tmp_path):
    """Before upstream's layout: an int `binding`, `comment num_faces F`, and local parameters
    in the frame (e, n x e, n), that is upstream's frame turned by -90 degrees about local x."""
    vertices = torch.tensor([[0.0, 0, 0], [2, 0.3, 0], [0.5, 1, 0.4], [1, 1, 1.5]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3], [1, 3, 2], [0, 3, 1], [1, 2, 0]])
    model = random_gaussians(n=6, num_faces=5)
    turn = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # current frame = legacy @ turn
    old_means = model.local_means.detach() @ turn.T
    old_quats = quat_multiply(torch.tensor([0.5**0.5, 0.5**0.5, 0, 0]).expand(6, 4),
                              model.local_quats.detach())  # fmt: skip
    sh = model.sh.detach()
    rest = sh[:, 1:, :].transpose(1, 2).reshape(6, -1)
    floats = torch.cat([old_means, torch.zeros(6, 3), sh[:, 0], rest,
                        model.opacity_logits.detach()[:, None], model.log_scales.detach(),
                        old_quats], dim=1).numpy().astype("<f4")  # fmt: skip
    names = property_names(3, rest.shape[1])[:-1]
    table = np.empty(6, dtype=[*((n, "<f4") for n in names), ("binding", "<i4")])
    for i, name in enumerate(names):
        table[name] = floats[:, i]
    table["binding"] = model.face_ids.numpy()
    header = ["ply", "format binary_little_endian 1.0", "comment num_faces 5", "element vertex 6",
              *(f"property float {n}" for n in names), "property int binding", "end_header"]  # fmt: skip
    path = tmp_path / "legacy.ply"
    path.write_bytes(("\n".join(header) + "\n").encode() + table.tobytes())
    loaded = load_ply(path)
    with torch.no_grad():
        for got, want in zip(loaded.world(vertices, faces), model.world(vertices, faces),
                             strict=True):  # fmt: skip
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
