"""Priors on the W+ latent ``w`` (..., L, d).

A :class:`Prior` owns the latent sample site ``w``. A :class:`Factor` adds an unnormalised
log-density term on ``w`` through ``pyro.factor`` (the colinearity term of the paper is one).
:class:`ProductPrior` multiplies a prior by factors: p(w) ∝ p_0(w) prod_k exp(phi_k(w)).

Each site has a *term* name used in loss histories (e.g. site ``w`` -> term ``prior``).
"""

from __future__ import annotations

from typing import Sequence

import pyro
import torch
from torch import Tensor


class Factor:
    """An unnormalised log-density term phi(w) added as ``pyro.factor(site, phi(w))``."""

    site: str = "w_factor"
    term: str = "factor"

    def log_factor(self, w: Tensor) -> Tensor:
        """phi(w): (..., L, d) -> (...)."""
        raise NotImplementedError

    def add(self, w: Tensor) -> None:
        pyro.factor(self.site, self.log_factor(w))

    def config(self) -> dict:
        return {}


class Prior:
    """A distribution over ``w`` that contributes the site ``w`` (event shape (L, d))."""

    site: str = "w"
    term: str = "prior"
    num_ws: int
    w_dim: int

    def distribution(self) -> pyro.distributions.TorchDistribution:
        """The distribution of one image's latent, event shape (L, d)."""
        raise NotImplementedError

    def sample(self, name: str = "w") -> Tensor:
        """Add the latent site (call inside the ``images`` plate) and return w (..., L, d)."""
        return pyro.sample(name, self.distribution())

    def log_prob(self, w: Tensor) -> Tensor:
        """Total log density of w up to a constant: (..., L, d) -> (...)."""
        return self.distribution().log_prob(w)

    def sites(self) -> dict[str, str]:
        """Site name -> term name for every site this prior adds."""
        return {self.site: self.term}

    def init_value(self) -> Tensor:
        """A sensible starting latent (L, d): the prior mean."""
        return self.distribution().mean

    def config(self) -> dict:
        return {}


class ProductPrior(Prior):
    """p(w) ∝ base(w) * prod_k exp(factor_k(w))."""

    def __init__(self, base: Prior, factors: Sequence[Factor]) -> None:
        self.base = base
        self.factors = list(factors)
        self.num_ws, self.w_dim = base.num_ws, base.w_dim

    def distribution(self):
        return self.base.distribution()

    def sample(self, name: str = "w") -> Tensor:
        w = self.base.sample(name)
        for f in self.factors:
            f.add(w)
        return w

    def log_prob(self, w: Tensor) -> Tensor:
        out = self.base.log_prob(w)
        for f in self.factors:
            out = out + f.log_factor(w)
        return out

    def sites(self) -> dict[str, str]:
        out = self.base.sites()
        for f in self.factors:
            out[f.site] = f.term
        return out

    def init_value(self) -> Tensor:
        return self.base.init_value()

    def config(self) -> dict:
        return {"base": type(self.base).__name__, **self.base.config(),
                **{k: v for f in self.factors for k, v in f.config().items()},
                "factors": [type(f).__name__ for f in self.factors]}


def pairwise_cosines(w: Tensor, eps: float = 1e-12) -> Tensor:
    """Cosine similarity of every pair (w_i, w_j), i < j: (..., L, d) -> (..., L (L - 1) / 2).

    Computed from normalised vectors (never through an angle), so the gradient is finite even
    for exactly colinear latents.
    """
    norm = w.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = w / norm
    gram = u @ u.transpose(-1, -2)
    L = w.shape[-2]
    iu = torch.triu_indices(L, L, offset=1, device=w.device)
    return gram[..., iu[0], iu[1]]
