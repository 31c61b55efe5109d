"""Colour calibration (--use_color_calibration, --color_net_hidden_dim, --lambda_color_reg): a
small per-pixel network between the rendered image and the loss, absorbing the capture's
colour differences (white balance, exposure, camera response) so the Gaussians need not.

    calibrated = x + A_e x + b_e + mlp([x, e])     per pixel, x the rendered RGB

A_e, b_e: a 3x3 matrix and a bias, global plus a linear function of the optional per-camera /
per-timestep embedding e; mlp: 1x1 convolutions (C + E -> H -> H -> C, SiLU). Every parameter
through which the output can leave x is zero at initialisation (the affine terms and the
mlp's last layer), so the module is exactly the identity at start (the fork's network is not).

It is one function, applied the same way in training and evaluation (no train-only branch).
Held-out cameras or timesteps have no learned embedding: `index=None` uses the zero
embedding, the value every embedding starts from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ColorCalibration(nn.Module):
    """Maps rendered images (B, C, H, W) to calibrated ones; the identity at initialisation.

    hidden_dim: width of the per-pixel mlp (the guide's --color_net_hidden_dim, 16).
    num_embeddings: number of cameras / timesteps with their own embedding (0 = none).
    embedding_dim: size of each embedding.
    """

    def __init__(
        self,
        hidden_dim: int = 16,
        num_embeddings: int = 0,
        embedding_dim: int = 8,
        channels: int = 3,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.embedding_dim = embedding_dim if num_embeddings > 0 else 0
        c, e = channels, self.embedding_dim
        self.affine = nn.Parameter(torch.zeros(c, c + 1))  # [A | b], zero = identity
        self.embeddings = nn.Embedding(num_embeddings, e) if e else None
        self.embedding_affine = nn.Linear(e, c * (c + 1), bias=False) if e else None
        self.hidden1 = nn.Conv2d(c + e, hidden_dim, 1)
        self.hidden2 = nn.Conv2d(hidden_dim, hidden_dim, 1)
        self.out = nn.Conv2d(hidden_dim, c, 1)
        for zero in (self.out.weight, self.out.bias):
            nn.init.zeros_(zero)
        if e:
            nn.init.zeros_(self.embeddings.weight)
            nn.init.zeros_(self.embedding_affine.weight)

    def forward(self, image: Tensor, index: Tensor | int | None = None) -> Tensor:
        """image (B, C, H, W) or (C, H, W); index: (B,) or int embedding ids, or None for the
        zero embedding (unseen cameras / timesteps). Same path at train and eval time."""
        single = image.dim() == 3
        x = image.unsqueeze(0) if single else image
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"expected ({self.channels}, H, W) images, got {tuple(image.shape)}")
        b, c = x.shape[:2]
        affine = self.affine.expand(b, c, c + 1)
        mlp_in = x
        if self.embeddings is not None:
            emb = self._embedding(index, b, x.device)
            affine = affine + self.embedding_affine(emb).reshape(b, c, c + 1)
            grid = emb[:, :, None, None].expand(b, emb.shape[1], *x.shape[2:])
            mlp_in = torch.cat((x, grid.to(x.dtype)), 1)
        elif index is not None:
            raise ValueError("index given but the module has no embeddings (num_embeddings=0)")
        linear = torch.einsum("bij,bjhw->bihw", affine[:, :, :c].to(x.dtype), x)
        residual = linear + affine[:, :, c, None, None].to(x.dtype)
        hidden = F.silu(self.hidden2(F.silu(self.hidden1(mlp_in))))
        y = x + (residual + self.out(hidden))
        return y[0] if single else y

    def _embedding(self, index, batch: int, device) -> Tensor:
        if index is None:
            return torch.zeros(batch, self.embedding_dim, device=device)
        index = torch.as_tensor(index, device=device).reshape(-1).expand(batch)
        return self.embeddings(index)

    def regularizer(self) -> Tensor:
        """For --lambda_color_reg: the sum of squares of the parameters that make the output
        differ from the input (affine terms and the mlp's last layer; all zero at
        initialisation), so it is 0 at identity and pulls the calibration towards it."""
        terms = [self.affine, self.out.weight, self.out.bias]
        if self.embedding_affine is not None:
            terms.append(self.embedding_affine.weight)
        return sum(t.square().sum() for t in terms)
