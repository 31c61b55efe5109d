"""Gaussians bound to mesh faces: frames, equivariance under rigid motion and scaling, and
densify / prune ops that keep the binding and the Adam state aligned."""

import math

import pytest
import torch

from fresnel.avatars.binding import (
    PARAM_NAMES,
    BoundGaussians,
    face_frames,
    quat_multiply,
    rotmat_to_quat,
)
from fresnel.render.projection import covariance_3d, quat_to_rotmat

F64 = torch.float64


def random_mesh(seed=0, num_vertices=30, num_faces=40, dtype=F64):
    """Random vertices and faces with three distinct corners each (every face non-degenerate
    with probability 1)."""
    g = torch.Generator().manual_seed(seed)
    vertices = torch.randn(num_vertices, 3, generator=g, dtype=dtype)
    faces = torch.stack([torch.randperm(num_vertices, generator=g)[:3] for _ in range(num_faces)])
    return vertices, faces


def random_rotation(seed=1, n=None):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(*(() if n is None else (n,)), 4, generator=g, dtype=F64)
    return quat_to_rotmat(q)


def perturbed_model(vertices, faces, per_face=3, seed=2):
    """A model whose local parameters are all non-trivial, so equivariance is not vacuous."""
    g = torch.Generator().manual_seed(seed)
    model = BoundGaussians.on_mesh(vertices, faces, per_face, generator=g)
    with torch.no_grad():
        for name in PARAM_NAMES:
            p = getattr(model, name)
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def make_adam(model):
    return torch.optim.Adam(model.optimizer_groups(dict.fromkeys(PARAM_NAMES, 1e-2)))


def adam_step(model, optimizer, vertices, faces):
    """One step on a loss touching every parameter; leaves non-zero exp_avg rows."""
    optimizer.zero_grad()
    means, scales, quats = model.world(vertices, faces)
    weights = torch.linspace(0.5, 1.5, means.shape[0], dtype=means.dtype)
    loss = (weights[:, None] * means).sum() + scales.sum() + (quats * weights[:, None]).sum()
    loss = loss + (model.opacities * weights).sum() + model.sh.sum(dim=(1, 2)).mul(weights).sum()
    loss.backward()
    optimizer.step()


def assert_in_sync(model, optimizer):
    for group in optimizer.param_groups:
        (param,) = group["params"]
        assert param is getattr(model, group["name"])
        for key in ("exp_avg", "exp_avg_sq"):
            assert optimizer.state[param][key].shape == param.shape


# --- frames -------------------------------------------------------------------------------


def test_face_frames_orthonormal_right_handed():
    vertices, faces = random_mesh()
    rot, centers, scales = face_frames(vertices, faces)
    eye = torch.eye(3, dtype=F64).expand_as(rot)
    torch.testing.assert_close(rot.transpose(-1, -2) @ rot, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(len(faces), dtype=F64))
    tri = vertices[faces]
    torch.testing.assert_close(centers, tri.mean(1))
    normals = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    # GaussianAvatars' frame: columns (edge, normal, edge x normal)
    torch.testing.assert_close(rot[..., 1], normals / normals.norm(dim=-1, keepdim=True))
    edges = tri[:, 1] - tri[:, 0]
    torch.testing.assert_close(rot[..., 0], edges / edges.norm(dim=-1, keepdim=True))
    assert (scales > 0).all()


def test_face_frame_known_triangle():
    """Edge (2, 0, 0), height 1 in the xy plane: columns x, the normal z and x cross z = -y;
    scale = (2 + 1) / 2."""
    vertices = torch.tensor([[0.0, 0, 0], [2, 0, 0], [0.5, 1, 0]], dtype=F64)
    rot, center, scale = face_frames(vertices, torch.tensor([[0, 1, 2]]))
    expected = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=F64)
    torch.testing.assert_close(rot[0], expected)
    torch.testing.assert_close(center[0], torch.tensor([2.5 / 3, 1 / 3, 0], dtype=F64))
    torch.testing.assert_close(scale[0], torch.tensor(1.5, dtype=F64))


def test_face_frames_batched_over_timesteps():
    vertices, faces = random_mesh()
    seq = torch.stack((vertices, 2 * vertices + 1, vertices.flip(-1)))
    batched = face_frames(seq, faces)
    for t in range(3):
        for got, want in zip(batched, face_frames(seq[t], faces), strict=True):
            torch.testing.assert_close(got[t], want)


# --- quaternions --------------------------------------------------------------------------


def test_rotmat_to_quat_round_trip_including_half_turns():
    g = torch.Generator().manual_seed(3)
    quats = torch.nn.functional.normalize(torch.randn(500, 4, generator=g, dtype=F64), dim=-1)
    special = torch.tensor(
        [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 1, 0], [1e-9, 0, 0.6, 0.8]],
        dtype=F64,
    )
    quats = torch.cat((quats, torch.nn.functional.normalize(special, dim=-1)))
    got = rotmat_to_quat(quat_to_rotmat(quats))
    torch.testing.assert_close(quat_to_rotmat(got), quat_to_rotmat(quats), atol=1e-12, rtol=0)
    same = (got * quats).sum(-1).abs()  # q and -q are the same rotation
    torch.testing.assert_close(same, torch.ones_like(same), atol=1e-12, rtol=0)
    assert (got[:, 0] >= 0).all()


def test_rotmat_to_quat_gradient_finite_at_identity():
    rot = torch.eye(3, dtype=F64).requires_grad_()
    rotmat_to_quat(rot).sum().backward()
    assert torch.isfinite(rot.grad).all()


def test_quat_multiply_composes_rotations():
    a, b = random_rotation(4, 10), random_rotation(5, 10)
    qa, qb = rotmat_to_quat(a), rotmat_to_quat(b)
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(qa, qb)), a @ b)


# --- binding ------------------------------------------------------------------------------


def test_on_mesh_places_gaussians_inside_their_faces():
    vertices, faces = random_mesh()
    model = BoundGaussians.on_mesh(vertices, faces, 4, generator=torch.Generator().manual_seed(0))
    assert len(model) == 4 * len(faces)
    assert model.sh.shape == (len(model), 16, 3)
    assert (model.per_face_counts() == 4).all()
    # on the face: no offset along the normal, which is the local y axis
    torch.testing.assert_close(model.local_means[:, 1], torch.zeros(len(model), dtype=F64))
    means, _, quats = model.world(vertices, faces)
    tri = vertices[faces[model.face_ids]]
    # barycentric coordinates of each mean in its own triangle: all in [0, 1]
    basis = torch.stack((tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), -1)
    uv = torch.linalg.lstsq(basis, (means - tri[:, 0]).unsqueeze(-1)).solution.squeeze(-1)
    torch.testing.assert_close(torch.einsum("nij,nj->ni", basis, uv) + tri[:, 0], means)
    assert (uv >= -1e-9).all() and (uv.sum(-1) <= 1 + 1e-9).all()
    frames = face_frames(vertices, faces).rotations[model.face_ids]
    torch.testing.assert_close(quat_to_rotmat(quats), frames)  # identity local rotation


def test_world_rotation_is_face_rotation_times_local():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces)
    means, scales, quats = model.world(vertices, faces)
    rot, centers, face_scale = (t[model.face_ids] for t in face_frames(vertices, faces))
    want = rot @ quat_to_rotmat(model.local_quats.detach())
    torch.testing.assert_close(quat_to_rotmat(quats.detach()), want)
    local = model.local_means.detach()
    want_means = torch.einsum("nij,nj->ni", rot, local) * face_scale[:, None] + centers
    torch.testing.assert_close(means.detach(), want_means)
    torch.testing.assert_close(
        scales.detach(), model.log_scales.exp().detach() * face_scale[:, None]
    )


def test_rigid_motion_moves_every_gaussian_rigidly():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces)
    rotation = random_rotation(7)
    translation = torch.tensor([0.3, -1.2, 2.5], dtype=F64)
    with torch.no_grad():
        means, scales, quats = model.world(vertices, faces)
        moved_means, moved_scales, moved_quats = model.world(
            vertices @ rotation.T + translation, faces
        )
    torch.testing.assert_close(moved_means, means @ rotation.T + translation, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        covariance_3d(moved_scales, moved_quats),
        rotation @ covariance_3d(scales, quats) @ rotation.T,
        atol=1e-5,
        rtol=0,
    )


def test_uniform_mesh_scale_scales_gaussians():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces)
    k = 2.7
    with torch.no_grad():
        means, scales, quats = model.world(vertices, faces)
        big_means, big_scales, big_quats = model.world(k * vertices, faces)
    torch.testing.assert_close(big_means, k * means, atol=1e-5, rtol=0)
    torch.testing.assert_close(big_scales, k * scales, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        covariance_3d(big_scales, big_quats),
        k * k * covariance_3d(scales, quats),
        atol=1e-5,
        rtol=0,
    )


def test_world_batched_over_timesteps():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces)
    seq = torch.stack((vertices, vertices @ random_rotation(8).T, 0.5 * vertices))
    with torch.no_grad():
        batched = model.world(seq, faces)
        for t in range(3):
            for got, want in zip(batched, model.world(seq[t], faces), strict=True):
                torch.testing.assert_close(got[t], want)


def test_gradients_reach_local_params_and_vertices():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces)
    vertices = vertices.clone().requires_grad_()
    means, scales, quats = model.world(vertices, faces)
    (means.square().sum() + scales.sum() + quats[:, 1:].sum()).backward()
    for name in ("local_means", "log_scales", "local_quats"):
        grad = getattr(model, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert torch.isfinite(vertices.grad).all() and vertices.grad.abs().sum() > 0


def test_wrong_face_count_is_an_error():
    vertices, faces = random_mesh()
    model = BoundGaussians.on_mesh(vertices, faces, 1)
    with pytest.raises(ValueError, match="40 faces"):
        model.world(vertices, faces[:-1])


# --- densify / prune ----------------------------------------------------------------------


def setup_trained(per_face=3):
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces, per_face)
    optimizer = make_adam(model)
    adam_step(model, optimizer, vertices, faces)
    return vertices, faces, model, optimizer


def snapshot(model, optimizer):
    params = {k: getattr(model, k).detach().clone() for k in PARAM_NAMES}
    state = {k: optimizer.state[getattr(model, k)]["exp_avg"].clone() for k in PARAM_NAMES}
    return params, state, model.face_ids.clone(), model.per_face_counts()


def test_clone_inherits_binding_and_zero_state():
    vertices, faces, model, optimizer = setup_trained()
    n = len(model)
    mask = torch.arange(n) % 4 == 1
    params, state, face_ids, counts = snapshot(model, optimizer)
    assert model.clone(mask, optimizer) == int(mask.sum())
    assert len(model) == n + int(mask.sum())
    torch.testing.assert_close(model.face_ids, torch.cat((face_ids, face_ids[mask])))
    torch.testing.assert_close(
        model.per_face_counts(), counts + torch.bincount(face_ids[mask], minlength=len(faces))
    )
    assert_in_sync(model, optimizer)
    for k in PARAM_NAMES:
        torch.testing.assert_close(
            getattr(model, k).detach(), torch.cat((params[k], params[k][mask]))
        )
        exp_avg = optimizer.state[getattr(model, k)]["exp_avg"]
        torch.testing.assert_close(exp_avg[:n], state[k])
        assert (exp_avg[n:] == 0).all()
    adam_step(model, optimizer, vertices, faces)


def test_split_children_stay_bound_and_near_parent():
    vertices, faces, model, optimizer = setup_trained()
    n, splits = len(model), 3
    mask = torch.arange(n) % 5 == 2
    parents = int(mask.sum())
    params, state, face_ids, counts = snapshot(model, optimizer)
    with torch.no_grad():
        parent_means, parent_scales, _ = model.world(vertices, faces)
    g = torch.Generator().manual_seed(9)
    assert model.split(mask, n=splits, generator=g, optimizer=optimizer) == splits * parents
    assert len(model) == n - parents + splits * parents
    survivors = n - parents
    torch.testing.assert_close(model.face_ids[:survivors], face_ids[~mask])
    torch.testing.assert_close(model.face_ids[survivors:], face_ids[mask].repeat(splits))
    torch.testing.assert_close(
        model.per_face_counts(),
        counts + (splits - 1) * torch.bincount(face_ids[mask], minlength=len(faces)),
    )
    children = slice(survivors, None)
    torch.testing.assert_close(
        model.log_scales[children].detach(),
        params["log_scales"][mask].repeat(splits, 1) - math.log(0.8 * splits),
    )
    torch.testing.assert_close(model.sh[children].detach(), params["sh"][mask].repeat(splits, 1, 1))
    with torch.no_grad():
        child_means, _, _ = model.world(vertices, faces)
    offset = (child_means[children] - parent_means[mask].repeat(splits, 1)).norm(dim=-1)
    assert (offset > 0).all()
    assert (offset <= 5 * parent_scales[mask].max(-1).values.repeat(splits)).all()
    assert_in_sync(model, optimizer)
    for k in PARAM_NAMES:
        exp_avg = optimizer.state[getattr(model, k)]["exp_avg"]
        torch.testing.assert_close(exp_avg[:survivors], state[k][~mask])
        assert (exp_avg[survivors:] == 0).all()
    adam_step(model, optimizer, vertices, faces)


def test_split_samples_follow_the_parent_gaussian():
    """Many children of one parent: their world mean and covariance match the parent's."""
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces, per_face=1)
    with torch.no_grad():
        means, scales, quats = model.world(vertices, faces)
    mask = torch.zeros(len(model), dtype=torch.bool)
    mask[5] = True
    model.split(mask, n=20000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        children = model.world(vertices, faces)[0][len(faces) - 1 :]
    cov = covariance_3d(scales[5:6], quats[5:6])[0]
    torch.testing.assert_close(children.mean(0), means[5], atol=0.05 * cov.trace().sqrt(), rtol=0)
    torch.testing.assert_close(children.T.cov(), cov, atol=0.05 * cov.trace(), rtol=0)


def test_prune_never_empties_a_face():
    vertices, faces, model, optimizer = setup_trained(per_face=2)
    n = len(model)
    params, state, face_ids, counts = snapshot(model, optimizer)
    # faces 0-9 lose everything, faces 10-19 lose one of two, the rest nothing
    mask = face_ids < 10
    mask |= (face_ids >= 10) & (face_ids < 20) & (torch.arange(n) % 2 == 0)
    spared = model.prune(mask, optimizer)
    assert spared == 10
    want_counts = counts.clone()
    want_counts[:20] = 1
    torch.testing.assert_close(model.per_face_counts(), want_counts)
    kept = ~mask
    for f in range(10):  # the most opaque of the face's Gaussians is the one kept
        rows = (face_ids == f).nonzero().squeeze(-1)
        kept[rows[params["opacity_logits"][rows].argmax()]] = True
    torch.testing.assert_close(model.face_ids, face_ids[kept])
    assert_in_sync(model, optimizer)
    for k in PARAM_NAMES:
        torch.testing.assert_close(getattr(model, k).detach(), params[k][kept])
        torch.testing.assert_close(optimizer.state[getattr(model, k)]["exp_avg"], state[k][kept])
    adam_step(model, optimizer, vertices, faces)
    assert model.prune(torch.ones(len(model), dtype=torch.bool), optimizer) == len(faces)
    assert (model.per_face_counts() == 1).all()
    adam_step(model, optimizer, vertices, faces)


def test_ops_without_optimizer_and_bad_masks():
    vertices, faces = random_mesh()
    model = perturbed_model(vertices, faces, per_face=1)
    model.clone(torch.ones(len(model), dtype=torch.bool))
    model.split(torch.ones(len(model), dtype=torch.bool), generator=torch.Generator())
    assert (model.per_face_counts() == 4).all()
    with pytest.raises(ValueError, match="bool of shape"):
        model.prune(torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="bool of shape"):
        model.prune(torch.ones(len(model)))


def test_state_dict_round_trip_after_densification():
    vertices, faces, model, optimizer = setup_trained()
    model.clone(torch.arange(len(model)) % 3 == 0, optimizer)
    restored = BoundGaussians.from_state_dict(model.state_dict(), num_faces=len(faces))
    assert restored.sh_degree == 3
    for got, want in zip(
        restored.world(vertices, faces), model.world(vertices, faces), strict=True
    ):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(restored.face_ids, model.face_ids)
