"""The differentiable mesh renderer against the z-buffer rasteriser, and its gradients."""

import torch
from torch.autograd import gradcheck

from fresnel.render.mesh import interpolate, rasterize
from fresnel.render.primitives import icosphere
from fresnel.render.projection import Camera
from fresnel.render.soft_mesh import render_attributes, soft_silhouette

CAM = Camera(200.0, 200.0, 32.0, 32.0, 64, 64)


def _view(z=0.6):
    viewmat = torch.eye(4, dtype=torch.float64)
    viewmat[2, 3] = z
    return viewmat


def _sphere():
    v, f = icosphere(3)
    return torch.tensor(v) * 0.1, torch.tensor(f)


def test_attributes_match_the_rasteriser():
    v, f = _sphere()
    colors = torch.rand(len(v), 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    raster = rasterize(v, f, CAM, _view())
    image, covered = render_attributes(v, f, colors, CAM, _view())
    assert torch.equal(covered, raster.mask)
    assert torch.allclose(image, interpolate(raster, colors, f), atol=1e-9)


def test_soft_silhouette_tends_to_the_hard_mask():
    v, f = _sphere()
    hard = rasterize(v, f, CAM, _view()).mask
    for sigma, floor in ((0.5, 0.95), (0.02, 0.995)):  # measured 0.959, 1.0: SoftRas
        # aggregation grows the silhouette by about a pixel at sigma 0.5
        soft = soft_silhouette(v, f, CAM, _view(), sigma=sigma) > 0.5
        assert (soft & hard).sum() / (soft | hard).sum() >= floor


def test_silhouette_gradient_moves_the_mesh_towards_the_target():
    v, f = _sphere()
    v = v.requires_grad_()
    target = torch.zeros(64, 64, dtype=torch.float64)
    target[:, 36:] = 1  # the target lies to the right of the sphere's centre
    (soft_silhouette(v, f, CAM, _view()) - target).square().sum().backward()
    assert v.grad[:, 0].sum() < 0  # descending the gradient moves x to the right


def test_attribute_gradients_are_exact():
    v = torch.tensor([[-0.05, -0.05, 0.0], [0.05, -0.04, 0.01], [0.0, 0.06, -0.01],
                      [0.06, 0.05, 0.02]], dtype=torch.float64)  # fmt: skip
    f = torch.tensor([[0, 1, 2], [1, 3, 2]])
    cam = Camera(60.0, 60.0, 8.0, 8.0, 16, 16)
    attrs = torch.rand(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def render(vertices, attributes):
        return render_attributes(vertices, f, attributes, cam, _view(0.5))[0]

    assert gradcheck(render, (v.requires_grad_(), attrs.requires_grad_()))
