"""GaussianAvatars PLY files: exact round trip, the 3DGS header and column layout (checked with
an independent reader), and a clear error for files that are not such a PLY."""

import numpy as np
import pytest
import torch

from fresnel.avatars.binding import BoundGaussians
from fresnel.avatars.ply import load_ply, property_names, save_ply

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
    loaded = load_ply(path)
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
    assert "comment num_faces 5" in header
    props = [line.split()[1:] for line in header if line.startswith("property")]
    names = [name for _, name in props]
    assert names == [
        *("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"),
        *(f"f_rest_{i}" for i in range(9)),
        *("opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"),
        "binding",
    ]
    assert names == property_names(3, 9)
    assert {kind for kind, name in props if name != "binding"} == {"float"}
    assert dict((name, kind) for kind, name in props)["binding"] == "int"
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
    np.testing.assert_array_equal(table["binding"], model.face_ids.numpy())


def test_densified_model_round_trips(tmp_path):
    model = random_gaussians(n=5)
    model.split(torch.tensor([True, False, True, False, False]), generator=torch.Generator())
    loaded = load_ply(save_ply(tmp_path / "a.ply", model))
    assert len(loaded) == len(model) == 7
    assert torch.equal(loaded.face_ids, model.face_ids)
    assert torch.equal(loaded.local_means, model.local_means)


def test_empty_model_round_trips(tmp_path):
    loaded = load_ply(save_ply(tmp_path / "a.ply", random_gaussians(n=0)))
    assert len(loaded) == 0
    assert loaded.sh.shape == (0, 16, 3)


def test_truncated_file_is_a_clear_error(tmp_path):
    path = save_ply(tmp_path / "a.ply", random_gaussians())
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"a\.ply: truncated"):
        load_ply(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b"garbage" + b[3:], "not a PLY file"),
        (lambda b: b.replace(b"end_header\n", b"end_heading\n"), "end_header"),
        (lambda b: b.replace(b"binary_little_endian", b"binary_big_endian"), "little_endian"),
        (lambda b: b.replace(b"comment num_faces 5\n", b""), "num_faces"),
        (lambda b: b.replace(b"element vertex 7", b"element vertex x"), "malformed"),
        (lambda b: b.replace(b"property int binding", b"property int bounding"), "binding"),
        (lambda b: b.replace(b"property float rot_3", b"property float rot_9"), "rot_3"),
        (lambda b: b.replace(b"float f_rest_44", b"float f_rest_99"), "f_rest_44"),
        (lambda b: b.replace(b"property float x", b"property quad x"), "unsupported"),
    ],
)
def test_garbled_header_names_what_is_missing(tmp_path, edit, message):
    path = save_ply(tmp_path / "bad.ply", random_gaussians())
    path.write_bytes(edit(path.read_bytes()))
    with pytest.raises(ValueError, match=message) as info:
        load_ply(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_binding_outside_the_mesh_is_an_error(tmp_path):
    path = save_ply(tmp_path / "a.ply", random_gaussians())
    path.write_bytes(path.read_bytes().replace(b"num_faces 5", b"num_faces 1"))
    with pytest.raises(ValueError, match="binding outside"):
        load_ply(path)
