"""A linear generator, G(w) = A vec(w) + b, for closed-form posteriors in tests.

With a Gaussian prior on w and a Gaussian pixel likelihood the posterior of w is Gaussian and
known exactly, which lets the tests check MAP, VI and MCMC against the truth. The mapping network
is linear too (``w = M z + c``), so the latent statistics are known: mu = c, sigma^2 = diag(M M^T).
Images are not confined to [-1, 1] (a linear map cannot be); keep A small.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from brgm_pyro.models.generators.base import Generator


class LinearGenerator(Generator):
    """G(w) = A vec(w) + b.

    Args:
        num_ws: L. w_dim: d. img_channels: C. img_resolution: H = W.
        z_dim: mapping input size (default d).
        scale: entries of A are N(0, scale^2 / (L d)).
        seed: initialisation seed.
    """

    linear = True

    def __init__(self, num_ws: int = 2, w_dim: int = 4, img_channels: int = 1,
                 img_resolution: int = 8, z_dim: int | None = None, scale: float = 1.0,
                 seed: int = 0) -> None:
        super().__init__()
        self.num_ws, self.w_dim = num_ws, w_dim
        self.z_dim = z_dim or w_dim
        self.img_channels, self.img_resolution = img_channels, img_resolution
        self._cfg = dict(num_ws=num_ws, w_dim=w_dim, img_channels=img_channels,
                         img_resolution=img_resolution, z_dim=self.z_dim, scale=scale, seed=seed)
        g = torch.Generator().manual_seed(seed)
        D = num_ws * w_dim
        P = img_channels * img_resolution ** 2
        self.A = nn.Parameter(torch.randn(P, D, generator=g) * scale / D ** 0.5, requires_grad=False)
        self.b = nn.Parameter(0.1 * torch.randn(P, generator=g), requires_grad=False)
        self.M = nn.Parameter(0.5 * torch.randn(w_dim, self.z_dim, generator=g) / self.z_dim ** 0.5,
                              requires_grad=False)
        self.c = nn.Parameter(0.1 * torch.randn(w_dim, generator=g), requires_grad=False)

    def synthesis(self, ws: Tensor) -> Tensor:
        x = ws.reshape(ws.shape[0], -1) @ self.A.T + self.b
        return x.reshape(ws.shape[0], *self.image_shape)

    def mapping(self, z: Tensor) -> Tensor:
        return z @ self.M.T + self.c

    def config(self) -> dict:
        return dict(self._cfg)
