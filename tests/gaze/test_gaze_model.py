"""GazeGaussian's model: eyes turned to exactly the requested gaze, the guide's renderer with a
trained frozen VAE, and head-pose redirection."""

import math

import pytest
import torch

from fresnel.gaze import synthetic
from fresnel.gaze.eyes import pitchyaw_to_vector, vector_to_pitchyaw
from fresnel.gaze.model import GazeGaussian, GazeGaussianConfig
from fresnel.gaze.redirect import redirect_head
from fresnel.gaze.renderer import VAE, frozen_vae
from fresnel.render.primitives import icosphere

SUBJECT = synthetic.Subject(torch.ones(3).numpy(), torch.full((3,), 0.8).numpy(),
                            torch.full((3,), 0.3).numpy())  # fmt: skip
CENTRES = torch.tensor(SUBJECT.eye_centers(), dtype=torch.float32)


def _model(cfg=None, vae=None):
    head, _ = icosphere(2)
    points = torch.tensor(head, dtype=torch.float32) * torch.tensor(synthetic.HEAD_RADII)
    cfg = cfg or GazeGaussianConfig(dit_hidden=64, feature_channels=16, embedding_width=32,
                                    use_vae=False)  # fmt: skip
    return GazeGaussian(cfg, points, CENTRES, synthetic.EYE_RADIUS, vae=vae)


@pytest.mark.parametrize("gaze", [(0.0, 0.0), (0.3, -0.2), (-0.25, 0.4)])
def test_eye_gaussians_turn_to_exactly_the_requested_gaze(gaze):
    model = _model()
    target = torch.tensor(gaze)
    rest = model.eyes[0].rest
    front = torch.argmax(-(rest - CENTRES[0])[:, 2])  # the Gaussian on the rest optical axis
    means, *_ = model.eye_gaussians(0, torch.zeros(9), target)
    direction = (means[front] - CENTRES[0]) / synthetic.EYE_RADIUS
    assert torch.allclose(direction, pitchyaw_to_vector(target), atol=1e-6)
    # Rigid: every Gaussian keeps its distance to the centre and to the others.
    pairwise = lambda x: (x[:, None] - x[None]).norm(dim=-1)  # noqa: E731
    assert torch.allclose(pairwise(means), pairwise(rest), atol=1e-6)


def test_a_camera_frame_gaze_becomes_the_head_frame_gaze():
    """With the head turned, the eyes turn so that, seen from the camera, they look along
    the requested camera-frame gaze."""
    head_pose, gaze = torch.tensor([0.2, -0.4]), torch.tensor([-0.1, 0.3])
    w2c = torch.tensor(synthetic.w2c_matrix(head_pose.numpy()), dtype=torch.float32)
    g_head = w2c[:3, :3].T @ pitchyaw_to_vector(gaze)
    model = _model()
    means, *_ = model.eye_gaussians(1, torch.zeros(9), vector_to_pitchyaw(g_head))
    front = torch.argmax(-(model.eyes[1].rest - CENTRES[1])[:, 2])
    seen = w2c[:3, :3] @ (means[front] - CENTRES[1])
    assert torch.allclose(seen / synthetic.EYE_RADIUS, pitchyaw_to_vector(gaze), atol=1e-5)


def test_head_redirection_turns_the_face_to_the_target_pose():
    w2c = torch.tensor(synthetic.w2c_matrix([0.1, 0.3]), dtype=torch.float64)
    out = redirect_head(w2c, torch.tensor([0.1, 0.3]), torch.tensor([-0.2, -0.4]))
    facing = out[:3, :3] @ torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    expected = pitchyaw_to_vector(torch.tensor([-0.2, -0.4], dtype=torch.float64))
    assert torch.allclose(facing, expected, atol=1e-9)
    assert torch.equal(out[:3, 3], w2c[:3, 3])


def _batch(b=2):
    data = [synthetic.render_frame(SUBJECT, [0.2, 0.0, 0.1], [0.1 * k, 0.2], [0.0, 0.1 * k], 64)
            for k in range(b)]  # fmt: skip
    f32 = lambda key: torch.stack([torch.tensor(d[key], dtype=torch.float32) for d in data])  # noqa: E731
    return {"image": f32("image").permute(0, 3, 1, 2), "w2c": f32("w2c"), "K": f32("K"),
            "gaze": torch.tensor([[0.1 * k, 0.2] for k in range(b)]),
            "head_pose": torch.tensor([[0.0, 0.1 * k] for k in range(b)]),
            "iden_code": torch.zeros(b, 9), "expr_code": torch.zeros(b, 3)}  # fmt: skip


def test_the_guide_defaults_dit_with_a_trained_frozen_vae_train(tmp_path):
    """DiT depth 6, 8 heads, patch 8, VAE z_channels 4 frozen from a file: the fork's shapes
    crashed on the first forward; here a training step runs and moves the weights."""
    torch.manual_seed(0)
    torch.save(VAE().state_dict(), tmp_path / "vae.pth")
    vae = frozen_vae(tmp_path / "vae.pth")
    cfg = GazeGaussianConfig(dit_hidden=64, feature_channels=16, embedding_width=32)
    assert (cfg.neural_renderer_type, cfg.use_vae, cfg.dit_depth, cfg.dit_num_heads,
            cfg.dit_patch_size) == ("dit", True, 6, 8, 8)  # fmt: skip
    model = _model(cfg, vae)
    assert "VAE: Enabled (z_channels=4, frozen=True)" in model.describe()
    batch = _batch()
    out = model(batch)
    assert out["rgb"].shape == (2, 3, 64, 64) and len(out["embeddings"]) == 3
    before = model.renderer.head.weight.clone()
    vae_before = [p.clone() for p in model.renderer.vae.parameters()]
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    (out["rgb"] - batch["image"]).abs().mean().backward()
    opt.step()
    assert not torch.equal(before, model.renderer.head.weight)
    assert all(torch.equal(a, b) for a, b in zip(vae_before, model.renderer.vae.parameters(),
                                                  strict=True))  # fmt: skip
    assert math.isfinite(float(out["rgb"].sum()))
