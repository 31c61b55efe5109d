"""Condition embeddings and the orthogonality loss: known values, gradients, and its effect."""

import pytest
import torch

from fresnel.gaze.embeddings import ConditionEmbeddings, mean_abs_cosine, orthogonality_loss

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_known_values():
    e1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    e2 = torch.tensor([[0.0, 3.0, 0.0], [0.0, 0.0, -1.0]])
    e3 = torch.tensor([[0.0, 0.0, 0.5], [1.0, 0.0, 0.0]])
    assert orthogonality_loss([e1, e2, e3]).item() == pytest.approx(0.0)
    assert mean_abs_cosine([e1, e2, e3]).item() == pytest.approx(0.0)
    assert orthogonality_loss([e1, 5 * e1, -e1]).item() == pytest.approx(1.0)
    assert mean_abs_cosine([e1, -2 * e1]).item() == pytest.approx(1.0)
    # 45 degrees: cos^2 = 0.5; one orthogonal sample and one at 45 degrees average to 0.25.
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert orthogonality_loss([a, b]).item() == pytest.approx(0.25)
    assert mean_abs_cosine([a, b]).item() == pytest.approx(0.5**0.5 / 2)


def test_mismatched_shapes_raise():
    with pytest.raises(ValueError, match="same B and D"):
        orthogonality_loss([torch.randn(4, 2), torch.randn(4, 3), torch.randn(4, 64)])
    with pytest.raises(ValueError, match="at least 2"):
        orthogonality_loss([torch.randn(4, 8)])


def _inputs(batch: int, expression_dim: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 2, generator=gen),
        torch.randn(batch, 3, generator=gen),
        torch.randn(batch, expression_dim, generator=gen),
    )


def test_shapes_and_gradient_reaches_every_network():
    torch.manual_seed(0)
    model = ConditionEmbeddings(expression_dim=10, width=16, hidden=32)
    embeddings = model(*_inputs(8, 10, seed=1))
    assert [tuple(e.shape) for e in embeddings] == [(8, 16)] * 3
    orthogonality_loss(embeddings).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def _train(with_orthogonality: bool, seed: int = 0) -> float:
    """100 Adam steps: each embedding must linearly predict its own input (task loss)."""
    torch.manual_seed(seed)
    dims = (2, 3, 10)
    model = ConditionEmbeddings(expression_dim=10, width=16, hidden=32)
    heads = torch.nn.ModuleList(torch.nn.Linear(16, d) for d in dims)
    opt = torch.optim.Adam([*model.parameters(), *heads.parameters()], lr=3e-3)
    inputs = _inputs(64, 10, seed=seed + 1)
    for _ in range(100):
        embeddings = model(*inputs)
        task = sum(
            torch.nn.functional.mse_loss(h(e), x)
            for h, e, x in zip(heads, embeddings, inputs, strict=True)
        )
        loss = task + (orthogonality_loss(embeddings) if with_orthogonality else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return mean_abs_cosine(model(*_inputs(256, 10, seed=2))).item()


def test_orthogonality_loss_lowers_mean_abs_cosine():
    without, with_ = _train(False), _train(True)
    assert with_ < 0.75 * without, (with_, without)
