"""The driving head meshes: the synthetic head's geometry and rig, HeadParams files, and
FLAME loading (a tiny FLAME-like pickle, the restricted unpickler, the missing-file error)."""

import pickle
import sys
import types

import numpy as np
import pytest
import torch

from fresnel.avatars.flame import FlameHead, read_model_pickle
from fresnel.avatars.head import REGION_INDEX, REGIONS, DrivingHead
from fresnel.avatars.head_params import PARAM_KEYS, HeadParams, load_param_dir, save_param_dir
from fresnel.avatars.synthetic_head import SyntheticHead
from fresnel.render.primitives import icosphere
from fresnel.render.projection import axis_angle_to_matrix

_L, _R, _NOSE, _MOUTH = 1, 2, 3, 4  # SyntheticHead.vertex_parts labels


@pytest.fixture(scope="module")
def head():
    return SyntheticHead()


def random_params(head, t=3, seed=0, scale=0.2):
    gen = torch.Generator().manual_seed(seed)
    p = head.zero_params(t)
    return p.map(lambda v: scale * torch.randn(v.shape, generator=gen))


def signed_volume(v, f):
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    return float((a * torch.cross(b, c, dim=1)).sum() / 6)


def pairwise(x):
    return torch.cdist(x.double(), x.double())


# --------------------------------------------------------------------------- geometry


def test_icosphere_counts_and_unit_radius():
    for level, (nv, nf) in enumerate([(12, 20), (42, 80), (162, 320), (642, 1280)]):
        v, f = icosphere(level)
        assert v.shape == (nv, 3) and f.shape == (nf, 3)
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-12)
        # closed manifold: every edge shared by exactly two faces, in opposite directions
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        assert len({tuple(e) for e in edges}) == len(edges)
        assert {tuple(e) for e in edges} == {(b, a) for a, b in edges}


def test_synthetic_head_rest_on_ellipsoid_and_regions(head):
    assert isinstance(head, DrivingHead)
    assert head.num_vertices == 642 and head.faces.shape == (1280, 3)
    assert head.faces.dtype == torch.long and head.face_regions.dtype == torch.long
    assert head.face_regions.shape == (1280,)
    rest = head.rest_vertices()
    radius = (rest / torch.tensor(head.axes)).norm(dim=1)
    off_nose = head.vertex_parts != _NOSE
    torch.testing.assert_close(radius[off_nose], torch.ones_like(radius[off_nose]))
    assert (radius[~off_nose] > 1.01).all()  # the nose bump stands out
    for name in REGIONS:  # every region labels some faces
        assert head.region_mask(name).sum() > 0
    for part in (_L, _R, _NOSE, _MOUTH):
        assert (head.vertex_parts == part).sum() >= 4
    # the left eye is at +x, on the front
    assert head.eye_centres[0, 0] > 0 > head.eye_centres[1, 0]
    assert (head.eye_centres[:, 2] > 0).all()


def test_faces_oriented_outward(head):
    v, f = icosphere(3)
    v, f = torch.as_tensor(v), torch.as_tensor(f)
    assert signed_volume(v, f) > 0
    normals = torch.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]], dim=1)
    assert ((normals * v[f].mean(1)).sum(1) > 0).all()
    rest = head.rest_vertices().double()
    expected = 4 / 3 * np.pi * np.prod(head.axes)
    assert 0.9 * expected < signed_volume(rest, head.faces) < 1.1 * expected


# --------------------------------------------------------------------------- rig


def test_zero_params_give_rest_mesh(head):
    v = head.vertices(head.zero_params(4))
    assert v.shape == (4, head.num_vertices, 3)
    for t in range(4):
        assert torch.equal(v[t], head.rest)


def test_jaw_moves_only_jaw_region_and_opens_mouth(head):
    p = head.zero_params(1)
    p.jaw_pose[:, 0] = 0.3
    delta = head.vertices(p)[0] - head.rest
    moved = delta.norm(dim=1) > 0
    jaw = head.jaw_weights > 0
    assert not moved[~jaw].any()
    assert moved[jaw].all()
    mouth = head.vertex_parts == _MOUTH
    lower, upper = mouth & jaw, mouth & ~jaw
    assert lower.sum() > 0 and upper.sum() > 0
    assert (delta[lower, 1] < 0).all()  # lower lip moves down
    assert (delta[upper] == 0).all()
    # a larger opening moves the lip further
    p.jaw_pose[:, 0] = 0.5
    assert (head.vertices(p)[0][lower, 1] < head.rest[lower, 1] + delta[lower, 1]).all()


def test_eye_rotation_is_rigid_about_eye_centre(head):
    p = head.zero_params(1)
    p.eyes_pose[0] = torch.tensor([0.2, -0.3, 0.1, -0.25, 0.15, 0.05])
    v = head.vertices(p)[0]
    rest = head.rest
    eyes = torch.zeros(head.num_vertices, dtype=torch.bool)
    for e, part in enumerate((_L, _R)):
        m = head.vertex_parts == part
        eyes |= m
        c = head.eye_centres[e]
        torch.testing.assert_close(
            (v[m] - c).norm(dim=1), (rest[m] - c).norm(dim=1), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(pairwise(v[m]), pairwise(rest[m]), atol=1e-5, rtol=0)
        rot = axis_angle_to_matrix(p.eyes_pose[0, 3 * e : 3 * e + 3])
        torch.testing.assert_close(v[m], (rest[m] - c) @ rot.T + c, atol=1e-6, rtol=0)
        assert (v[m] - rest[m]).norm(dim=1).max() > 1e-3
    assert torch.equal(v[~eyes], rest[~eyes])


def test_expression_blendshapes_are_linear(head):
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 2, head.num_expr, generator=gen)
    v0 = head.rest

    def with_expr(e):
        p = head.zero_params(2)
        p.expr = e
        return head.vertices(p)

    torch.testing.assert_close(
        with_expr(a + b) - v0, (with_expr(a) - v0) + (with_expr(b) - v0), atol=1e-6, rtol=0
    )
    for i, name in enumerate(SyntheticHead.EXPRESSIONS):
        e = torch.zeros(1, head.num_expr)
        e[0, i] = 1.0
        p = head.zero_params(1)
        p.expr = e
        assert (head.vertices(p)[0] - v0).norm(dim=1).max() > 3e-3, name


def test_global_rotation_and_translation_are_rigid(head):
    base = random_params(head, t=2, seed=2)
    base.rotation = torch.zeros(2, 3)
    base.translation = torch.zeros(2, 3)
    posed = base.clone()
    posed.rotation = torch.tensor([[0.3, -0.5, 0.2], [-1.0, 0.4, 2.0]])
    posed.translation = torch.tensor([[0.01, -0.02, 0.3], [1.0, 2.0, -3.0]])
    v0, v1 = head.vertices(base), head.vertices(posed)
    rot = axis_angle_to_matrix(posed.rotation)
    expected = torch.einsum("tij,tvj->tvi", rot, v0) + posed.translation[:, None]
    torch.testing.assert_close(v1, expected, atol=1e-5, rtol=0)
    for t in range(2):
        torch.testing.assert_close(pairwise(v1[t]), pairwise(v0[t]), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        rot @ rot.transpose(1, 2), torch.eye(3).expand(2, 3, 3), atol=1e-6, rtol=0
    )


def test_rotation_matches_matrix_exponential():
    r = torch.tensor([[0.0, 0.0, 0.0], [1e-5, -2e-5, 3e-6], [0.3, -0.2, 0.9], [2.0, 1.0, -1.5]])
    k = torch.zeros(4, 3, 3, dtype=torch.float64)
    x, y, z = r.double().unbind(1)
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -z, y, -x
    k = k - k.transpose(1, 2)
    torch.testing.assert_close(
        axis_angle_to_matrix(r).double(), torch.linalg.matrix_exp(k), atol=1e-6, rtol=0
    )
    assert torch.equal(axis_angle_to_matrix(torch.zeros(3)), torch.eye(3))


@pytest.mark.parametrize("at_zero", [False, True])
def test_gradients_reach_every_param_field(head, at_zero):
    p = head.zero_params(2) if at_zero else random_params(head, t=2, seed=3, scale=0.1)
    p = p.trainable(PARAM_KEYS)
    weights = torch.randn(2, head.num_vertices, 3, generator=torch.Generator().manual_seed(4))
    (head.vertices(p) * weights).sum().backward()
    for key, value in p.named_parameters():
        assert value.grad is not None and torch.isfinite(value.grad).all(), key
        assert value.grad.abs().sum() > 0, key
    assert [k for k, _ in p.named_parameters()] == list(PARAM_KEYS)


# --------------------------------------------------------------------------- params


def test_params_helpers(head):
    p = random_params(head, t=4, seed=5)
    assert p.num_timesteps == 4 and p.shape.shape == (3,)
    assert p.shape_per_timestep().shape == (4, 3)
    sel = p.select([1, 3])
    assert sel.num_timesteps == 2 and torch.equal(sel.expr, p.expr[[1, 3]])
    assert torch.equal(sel.shape, p.shape)
    again = HeadParams.cat([p.select(slice(0, 2)), p.select(slice(2, 4))])
    for key in PARAM_KEYS:
        assert torch.equal(getattr(again, key), getattr(p, key))
    train = p.trainable()
    assert "shape" not in dict(train.named_parameters())
    assert all(isinstance(v, torch.nn.Parameter) for v in train.parameters())
    assert len(train.parameters()) == len(PARAM_KEYS) - 1
    with pytest.raises(ValueError, match="eyes_pose"):
        HeadParams(**{**p.as_dict(), "eyes_pose": torch.zeros(4, 3)})
    unshared = HeadParams.zeros(2, 3, 4, shared_shape=False)
    assert head.vertices(unshared).shape == (2, head.num_vertices, 3)


def test_npz_round_trip(head, tmp_path):
    p = random_params(head, t=3, seed=6)
    p.save_npz(tmp_path / "a.npz")
    first = (tmp_path / "a.npz").read_bytes()
    p.save_npz(tmp_path / "a.npz")
    assert (tmp_path / "a.npz").read_bytes() == first  # deterministic bytes
    with np.load(tmp_path / "a.npz") as data:
        assert sorted(data.files) == sorted(PARAM_KEYS)
        assert data["eyes_pose"].shape == (3, 6) and data["eyes_pose"].dtype == np.float32
    q = HeadParams.load_npz(tmp_path / "a.npz")
    for key in PARAM_KEYS:
        assert torch.equal(getattr(q, key), getattr(p, key)), key

    names = save_param_dir(tmp_path / "subject", p)
    assert names == ["flame_param/00000.npz", "flame_param/00001.npz", "flame_param/00002.npz"]
    assert (tmp_path / "subject" / "canonical_flame_param.npz").is_file()
    with np.load(tmp_path / "subject" / names[1]) as data:
        assert data["expr"].shape == (1, 4) and data["shape"].shape == (3,)
    loaded, canonical = load_param_dir(tmp_path / "subject")
    for key in PARAM_KEYS:
        assert torch.equal(getattr(loaded, key), getattr(p, key)), key
    assert canonical.num_timesteps == 1 and torch.equal(canonical.shape, p.shape)
    assert not canonical.expr.any()
    with pytest.raises(ValueError, match="lack"):
        np.savez(tmp_path / "bad.npz", expr=np.zeros((1, 4)))
        HeadParams.load_npz(tmp_path / "bad.npz")


# --------------------------------------------------------------------------- FLAME

V_TINY = 12


def tiny_flame(seed=0):
    """A FLAME-shaped model: 12 vertices, 5 joints, random small blendshapes."""
    rng = np.random.default_rng(seed)
    v_template = rng.normal(size=(V_TINY, 3)) * 0.05
    faces = np.array([[0, 1, 2], [2, 3, 0], [4, 5, 6], [7, 8, 9], [9, 10, 11]], dtype=np.uint32)
    regressor = rng.random((5, V_TINY))
    regressor /= regressor.sum(1, keepdims=True)
    weights = rng.random((V_TINY, 5)) ** 3
    weights /= weights.sum(1, keepdims=True)
    kintree = np.array([[2**32 - 1, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64)
    return {
        "v_template": v_template,
        "f": faces,
        "shapedirs": rng.normal(size=(V_TINY, 3, 400)) * 1e-3,
        "posedirs": rng.normal(size=(V_TINY, 3, 36)) * 1e-3,
        "J_regressor": regressor,
        "kintree_table": kintree,
        "weights": weights,
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


def fake_module(monkeypatch, dotted, **attrs):
    """Put `dotted` (and missing parents) in sys.modules so pickle can name a fake class."""
    parts = dotted.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        if name not in sys.modules or i == len(parts):
            monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    for key, value in attrs.items():
        value.__module__, value.__qualname__ = dotted, key
        setattr(sys.modules[dotted], key, value)


def rodrigues_np(r):
    theta = np.linalg.norm(r)
    if theta < 1e-12:
        return np.eye(3)
    x, y, z = r / theta
    k = np.array([[0, -z, y], [z, 0, -x], [-y, x, 0]])
    return np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)


def reference_lbs(model, shape, expr, pose5, trans):
    """FLAME in plain float64 numpy, one timestep, written independently of FlameHead."""
    v = model["v_template"] + model["shapedirs"][:, :, : len(shape)] @ shape
    v = v + model["shapedirs"][:, :, 300 : 300 + len(expr)] @ expr
    joints = model["J_regressor"] @ v
    rots = [rodrigues_np(r) for r in pose5]
    v = v + model["posedirs"] @ np.concatenate([(r - np.eye(3)).ravel() for r in rots[1:]])
    world = []
    for j, parent in enumerate([-1, 0, 1, 1, 1]):
        local = np.eye(4)
        local[:3, :3] = rots[j]
        local[:3, 3] = joints[j] - (joints[parent] if parent >= 0 else 0)
        world.append(local if parent < 0 else world[parent] @ local)
    skinning = []  # joint transforms relative to the rest pose
    for j in range(5):
        unrest = np.eye(4)
        unrest[:3, 3] = -joints[j]
        skinning.append(world[j] @ unrest)
    out = np.stack(
        [
            (np.tensordot(model["weights"][i], skinning, 1) @ np.append(v[i], 1.0))[:3]
            for i in range(len(v))
        ]
    )
    return out + trans


def write_pickle(path, obj, protocol=2):
    with open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=protocol)
    return path


def test_flame_tiny_model_loads_and_poses(tmp_path):
    model = tiny_flame()
    flame = FlameHead(write_pickle(tmp_path / "generic_model.pkl", model), num_shape=10, num_expr=5)
    assert flame.num_vertices == V_TINY and flame.faces.dtype == torch.long
    assert flame.faces.shape == (5, 3) and not flame.face_regions.any()  # all "skin"

    zero = flame.vertices(flame.zero_params(2))
    for t in range(2):
        torch.testing.assert_close(
            zero[t], torch.as_tensor(model["v_template"], dtype=torch.float32)
        )

    p = flame.zero_params(1)
    p.translation = torch.tensor([[0.1, -0.2, 0.3]])
    torch.testing.assert_close(flame.vertices(p)[0], zero[0] + p.translation[0])

    p = random_params(flame, t=2, seed=7, scale=0.3)
    got = flame.vertices(p).double()
    for t in range(2):
        pose5 = torch.cat([p.rotation[t], p.neck_pose[t], p.jaw_pose[t], p.eyes_pose[t]])
        want = reference_lbs(
            model,
            p.shape.numpy(),
            p.expr[t].numpy(),
            pose5.reshape(5, 3).double().numpy(),
            p.translation[t].numpy(),
        )
        np.testing.assert_allclose(got[t].numpy(), want, atol=1e-5)

    p = p.trainable(PARAM_KEYS)
    flame.vertices(p).square().sum().backward()
    for key, value in p.named_parameters():
        assert value.grad is not None and value.grad.abs().sum() > 0, key


@pytest.mark.parametrize("protocol", [0, 2])
def test_flame_chumpy_and_sparse_wrappers(tmp_path, monkeypatch, protocol):
    """FLAME 2020 stores chumpy `Ch` arrays and a scipy csc `J_regressor` (Python 2 era)."""
    model = tiny_flame(seed=1)

    class Ch:
        def __init__(self, x):
            self.x, self._dirty_vars, self._status = x, {"x"}, "undefined"

    class Select:
        def __init__(self, a, idxs, shape):
            self.a, self.idxs, self.preferred_shape = a, idxs, shape

    class Csc:
        def __init__(self, dense):
            cols = [np.nonzero(dense[:, j])[0] for j in range(dense.shape[1])]
            self.indices = np.concatenate(cols).astype(np.int32)
            self.indptr = np.cumsum([0] + [len(c) for c in cols]).astype(np.int32)
            self.data = np.concatenate([dense[c, j] for j, c in enumerate(cols)])
            self._shape = dense.shape
            self.maxprint = 50

    fake_module(monkeypatch, "chumpy.ch", Ch=Ch)
    fake_module(monkeypatch, "chumpy.reordering", Select=Select)
    fake_module(monkeypatch, "scipy.sparse.csc", csc_matrix=Csc)
    regressor = model["J_regressor"].copy()
    regressor[:, ::3] = 0  # some structural zeros
    wrapped = {
        **model,
        "v_template": Ch(model["v_template"]),
        "shapedirs": Select(
            Ch(model["shapedirs"].ravel()),
            np.arange(model["shapedirs"].size),
            model["shapedirs"].shape,
        ),
        "J_regressor": Csc(regressor),
    }
    path = write_pickle(tmp_path / "flame2020.pkl", wrapped, protocol)
    monkeypatch.undo()  # loading needs neither chumpy nor scipy
    loaded = read_model_pickle(path)
    np.testing.assert_array_equal(loaded["v_template"], model["v_template"])
    np.testing.assert_array_equal(loaded["shapedirs"], model["shapedirs"])
    np.testing.assert_array_equal(loaded["J_regressor"], regressor)
    flame = FlameHead(path)
    torch.testing.assert_close(
        flame.rest_vertices(), torch.as_tensor(model["v_template"], dtype=torch.float32)
    )


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_flame_pickle_protocols(tmp_path, protocol):
    model = tiny_flame(seed=2)
    loaded = read_model_pickle(write_pickle(tmp_path / "m.pkl", model, protocol))
    for key, value in model.items():
        np.testing.assert_array_equal(loaded[key], value)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = write_pickle(
        tmp_path / "generic_model.pkl", {**tiny_flame(), "v_template": _Evil(marker)}
    )
    with pytest.raises(pickle.UnpicklingError, match=r"generic_model\.pkl.*refusing.*system"):
        FlameHead(path)
    assert not marker.exists()
    for evil in ((eval, ("1",)), (getattr, (object, "__subclasses__"))):

        class Thing:
            def __reduce__(self, evil=evil):
                return evil

        path = write_pickle(tmp_path / "other.pkl", {"x": Thing()})
        with pytest.raises(pickle.UnpicklingError, match="refusing"):
            read_model_pickle(path)


def test_missing_flame_file_error(tmp_path):
    for path in (tmp_path / "generic_model.pkl", None):
        with pytest.raises(FileNotFoundError) as info:
            FlameHead(path)
        message = str(info.value)
        assert "\n" not in message
        assert "avatars.train.flame_model_path" in message
        assert "https://flame.is.tue.mpg.de" in message
        assert "model file" in message
    with pytest.raises(FileNotFoundError, match=r"my\.key"):
        FlameHead(tmp_path / "x.pkl", model_key="my.key")


def test_flame_masks_give_regions(tmp_path):
    model = write_pickle(tmp_path / "generic_model.pkl", tiny_flame())
    masks = write_pickle(
        tmp_path / "FLAME_masks.pkl",
        {
            "left_eyeball": np.array([0, 1, 2]),
            "nose": np.array([2, 3, 0, 4]),
            "lips": np.arange(7, 12),
        },
    )
    flame = FlameHead(model, masks_path=masks)
    want = ["eyes", "nose", "skin", "mouth", "mouth"]
    assert flame.face_regions.tolist() == [REGION_INDEX[w] for w in want]
    with pytest.raises(FileNotFoundError, match=r"avatars\.train\.flame_masks_path"):
        FlameHead(model, masks_path=tmp_path / "none.pkl")
