r"""A heavy-tailed prior on W+: every coordinate Student-t, fitted to the generator's mapped latents.

.. math::

    w_{i,k} \sim \mathrm{StudentT}(\nu, \mu_k, s_k), \qquad s_k = \sigma_k \sqrt{(\nu - 2) / \nu}

so that each coordinate keeps the mapped latents' mean and standard deviation (for nu > 2) while
its tails are heavier than the Gaussian's; seed 004 (RLS) shows that StyleGAN's W is far from
Gaussian. ``nu`` is fitted by maximum likelihood on mapped latents (:func:`fit_student_df`).
It is a non-Gaussian prior through every method: MAP, VI (the hyperprior measures the guide in
units of sigma_k), NUTS/HMC (the Laplace metric uses the Fisher information of the location,
(nu + 1) / ((nu + 3) s_k^2)) and the Langevin samplers.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.priors.base import Prior


class StudentTPrior(Prior):
    """prod_{i,k} StudentT(w_{i,k} | nu, mu_k, s_k).

    Args:
        mu: (d,) mean of W. sigma: (d,) or scalar std of W. df: nu > 2. num_ws: L. w_dim: d.
    """

    def __init__(self, mu: Tensor, sigma: Tensor | float, df: float, num_ws: int, w_dim: int) -> None:
        if not df > 2:
            raise BRGMError(f"the Student-t prior needs df > 2 (a finite variance); got {df}")
        self.num_ws, self.w_dim, self.df = num_ws, w_dim, float(df)
        self.mu = torch.as_tensor(mu, dtype=torch.float32)
        self.sigma = torch.as_tensor(sigma, dtype=torch.float32)
        self._dist = None

    @property
    def scale(self) -> Tensor:
        return (self.sigma * math.sqrt((self.df - 2.0) / self.df)).expand(self.num_ws, self.w_dim)

    def distribution(self):
        if self._dist is None:
            loc = self.mu.expand(self.num_ws, self.w_dim)
            self._dist = dist.StudentT(torch.tensor(self.df, device=loc.device), loc, self.scale).to_event(2)
        return self._dist

    def init_value(self) -> Tensor:
        return self.mu.expand(self.num_ws, self.w_dim)

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        # t = z / sqrt(chi2_nu / nu), drawn with the caller's generator (chi2 with nu rounded: these are
        # only starting points, and torch's Gamma sampler takes no generator)
        z = torch.randn(num, self.num_ws, self.w_dim, generator=generator)
        g = torch.randn(num, self.num_ws, self.w_dim, int(round(self.df)), generator=generator)
        chi2 = g.pow(2).sum(-1).clamp_min(1e-6)
        return self.mu.cpu() + self.scale.cpu() * z / (chi2 / round(self.df)).sqrt()

    def reference_scale(self) -> Tensor:
        return self.sigma.expand(self.num_ws, self.w_dim)

    def curvature(self) -> Tensor:
        return (self.df + 1.0) / ((self.df + 3.0) * self.scale ** 2)

    def to(self, device) -> "StudentTPrior":
        self.mu, self.sigma, self._dist = self.mu.to(device), self.sigma.to(device), None
        return self

    def config(self) -> dict:
        return {"df": self.df, "sigma_form": "per-dimension" if self.sigma.numel() > 1 else "scalar"}


@torch.no_grad()
def fit_student_df(generator, mu: Tensor, sigma: Tensor, num: int = 2000, seed: int = 0,
                   grid: tuple = (2.5, 3, 4, 5, 6, 8, 10, 15, 20, 30, 50, 100)) -> float:
    """Maximum-likelihood nu on a grid, for ``num`` mapped latents (z from ``seed``).

    Each coordinate k is standardised with its own mu_k, sigma_k, so only the shape is fitted.
    """
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = torch.randn(num, generator.z_dim, generator=g)
    w = generator.mapping(z.to(generator.device()))
    w = w[:, 0] if w.ndim == 3 else w
    u = ((w.cpu().double() - mu.cpu().double()) / sigma.cpu().double()).reshape(-1)
    best, best_ll = None, -math.inf
    for nu in grid:
        s = math.sqrt((nu - 2.0) / nu)
        ll = float(dist.StudentT(torch.tensor(float(nu), dtype=torch.float64), 0.0, s).log_prob(u).sum())
        if ll > best_ll:
            best, best_ll = float(nu), ll
    return best


__all__ = ["StudentTPrior", "fit_student_df"]
