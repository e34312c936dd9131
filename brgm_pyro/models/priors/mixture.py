"""A Gaussian mixture on W+: a prior with several modes and closed-form posteriors (with a linear G).

    p(w) = sum_k pi_k N(vec w | vec mu_k, diag(sigma^2))

With a linear generator and Gaussian pixel noise the posterior is again a mixture, with weights
pi_k N(y | A mu_k + b, A Sigma0 A^T + s^2 I) / p(y): a two-mode test problem whose answer is known
(tests/test_smc.py), where a single MCMC chain stays in the mode it starts in.
"""

from __future__ import annotations

from typing import Sequence, Union

import pyro.distributions as dist
import torch
from torch import Tensor
from torch.distributions import constraints

from brgm_pyro.models.priors.base import Prior


class _RealMixture(dist.MixtureSameFamily):
    """A mixture of Gaussians on R^(L x d): its support stated as such, so that samplers can map it
    (torch's MixtureSameFamilyConstraint has no bijection registered)."""

    @property
    def support(self):
        return constraints.independent(constraints.real, 2)


class GaussianMixturePrior(Prior):
    """sum_k pi_k prod_{i,j} N(w_ij | mu_k,ij, sigma_j^2).

    Args:
        locs: (K, L, d) component means.
        sigma: (d,) or scalar standard deviation shared by the components.
        weights: (K,) positive mixture weights (normalised here).
    """

    def __init__(self, locs: Tensor, sigma: Union[Tensor, float], weights: Sequence[float]) -> None:
        from brgm_pyro.errors import BRGMError

        self.locs = torch.as_tensor(locs, dtype=torch.float32)
        if self.locs.ndim != 3:
            raise BRGMError(f"mixture locs must be (K, L, d), got {tuple(self.locs.shape)}")
        K, self.num_ws, self.w_dim = self.locs.shape
        self.sigma = torch.as_tensor(sigma, dtype=torch.float32)
        w = torch.as_tensor(weights, dtype=torch.float32)
        if w.shape != (K,) or bool((w <= 0).any()) or bool((self.sigma <= 0).any()):
            raise BRGMError(f"mixture weights must be {K} positive numbers and sigma positive")
        self.weights = w / w.sum()
        self._dist = None

    def distribution(self):
        if self._dist is None:
            comp = dist.Normal(self.locs, self.sigma.expand(self.locs.shape)).to_event(2)
            self._dist = _RealMixture(dist.Categorical(probs=self.weights), comp)
        return self._dist

    def init_value(self) -> Tensor:
        return self.locs[int(self.weights.argmax())]

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights.cpu(), num, replacement=True, generator=generator)
        xi = torch.randn(num, self.num_ws, self.w_dim, generator=generator)
        return self.locs.cpu()[k] + self.sigma.cpu() * xi

    def reference_scale(self) -> Tensor:
        return self.sigma.expand(self.num_ws, self.w_dim)

    def curvature(self) -> Tensor:
        return self.sigma.expand(self.num_ws, self.w_dim) ** -2

    def to(self, device) -> "GaussianMixturePrior":
        self.locs, self.sigma, self.weights, self._dist = (self.locs.to(device), self.sigma.to(device),
                                                           self.weights.to(device), None)
        return self

    def config(self) -> dict:
        return {"components": int(self.locs.shape[0]), "weights": self.weights.tolist()}


def two_mode_prior(generator, stats, separation: float = 3.0, weight: float = 0.5) -> GaussianMixturePrior:
    """W's Gaussian split in two: means mu +- separation sigma / sqrt(L d) in every coordinate (the modes are
    2 ``separation`` prior standard deviations apart), weights (``weight``, 1 - ``weight``)."""
    L, d = generator.num_ws, generator.w_dim
    step = float(separation) * stats.sigma / (L * d) ** 0.5
    mu = stats.mu.expand(L, d)
    return GaussianMixturePrior(torch.stack([mu - step, mu + step]), stats.sigma, [weight, 1.0 - weight])


__all__ = ["GaussianMixturePrior", "two_mode_prior"]
