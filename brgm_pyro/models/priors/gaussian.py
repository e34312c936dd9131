"""Gaussian priors on each latent vector w_i."""

from __future__ import annotations

from typing import Union

import pyro.distributions as dist
import torch
from torch import Tensor

from brgm_pyro.models.priors.base import Prior


class GaussianPrior(Prior):
    """prod_i N(w_i | mu, diag(sigma^2)), i = 1..L  (paper Eq. 2, first factor).

    Args:
        mu: (d,) or scalar mean of W (from the mapping network).
        sigma: (d,) or scalar standard deviation.
        num_ws: L. w_dim: d.
    """

    def __init__(self, mu: Union[Tensor, float], sigma: Union[Tensor, float], num_ws: int, w_dim: int) -> None:
        self.num_ws, self.w_dim = num_ws, w_dim
        self.mu = torch.as_tensor(mu, dtype=torch.float32)
        self.sigma = torch.as_tensor(sigma, dtype=torch.float32)
        if (self.sigma <= 0).any():
            raise ValueError("prior standard deviation must be positive")
        self._dist = None

    def distribution(self):
        if self._dist is None:  # built once: per-step cost matters
            loc = self.mu.expand(self.num_ws, self.w_dim)
            scale = self.sigma.expand(self.num_ws, self.w_dim)
            self._dist = dist.Normal(loc, scale).to_event(2)
        return self._dist

    def init_value(self) -> Tensor:
        return self.mu.expand(self.num_ws, self.w_dim)

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        xi = torch.randn(num, self.num_ws, self.w_dim, generator=generator)
        return self.mu.cpu() + self.sigma.cpu() * xi

    def reference_scale(self) -> Tensor:
        return self.sigma.expand(self.num_ws, self.w_dim)

    def curvature(self) -> Tensor:
        return self.sigma.expand(self.num_ws, self.w_dim) ** -2

    def to(self, device) -> "GaussianPrior":
        self.mu, self.sigma, self._dist = self.mu.to(device), self.sigma.to(device), None
        return self

    def config(self) -> dict:
        return {"sigma_form": "per-dimension" if self.sigma.numel() > 1 else "scalar"}


class StandardNormalPrior(GaussianPrior):
    """An isotropic N(0, I) on every w_i: the 'no learned statistics' baseline."""

    def __init__(self, num_ws: int, w_dim: int) -> None:
        super().__init__(0.0, 1.0, num_ws, w_dim)
