"""Priors on the W+ latent ``w`` (..., L, d).

A :class:`Prior` owns the latent sample site ``w``. A :class:`Factor` adds an unnormalised
log-density term on ``w`` through ``pyro.factor`` (the colinearity term of the paper is one).
:class:`ProductPrior` multiplies a prior by factors: p(w) ∝ p_0(w) prod_k exp(phi_k(w)).

Each site has a *term* name used in loss histories (e.g. site ``w`` -> term ``prior``).

A prior states what inference needs, and nothing is probed from its distribution:

* :meth:`Prior.init_value`: the starting latent (MAP, VI, the MCMC warm start);
* :meth:`Prior.draw_init`: independent starting points (MCMC ``init="prior"``);
* :meth:`Prior.reference_scale`: a per-coordinate scale (L, d) in which VI's inverse-gamma
  hyperprior measures the guide's std, or None when the prior has none;
* :meth:`Prior.curvature`: a positive diagonal of -d^2 log p / dw^2 (its expected Fisher
  information) for the Laplace metric, or None.

A method that needs one the prior lacks stops with one line naming the prior.
"""

from __future__ import annotations

from typing import Optional, Sequence

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
    dims: tuple[str, str] = ("layer", "w_dim")
    num_ws: int
    w_dim: int

    def _lacks(self, what: str, needed_by: str):
        from brgm_pyro.errors import BRGMError

        return BRGMError(f"the prior {type(self).__name__} does not state {what}, which {needed_by} needs; "
                         "use another prior or method, or implement it")

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
        """A sensible starting latent (L, d), e.g. the prior mean."""
        raise self._lacks("an initial value", "every inference method")

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        """``num`` independent starting latents (num, L, d) drawn with ``generator``."""
        raise self._lacks("how to draw starting points", "MCMC with init='prior'")

    def reference_scale(self) -> Optional[Tensor]:
        """Per-coordinate scale (L, d) of the prior (VI hyperprior units), or None if it has none."""
        return None

    def curvature(self) -> Optional[Tensor]:
        """A positive (L, d) diagonal curvature of -log p(w) for the Laplace metric, or None."""
        return None

    def latents(self) -> list:
        """Scalar latents the prior owns (hyperparameters it learns); none by default."""
        return []

    def config(self) -> dict:
        return {}


class ProductPrior(Prior):
    """p(w) ∝ base(w) * prod_k exp(factor_k(w))."""

    def __init__(self, base: Prior, factors: Sequence[Factor]) -> None:
        self.base = base
        self.factors = list(factors)
        self.num_ws, self.w_dim = base.num_ws, base.w_dim
        self.site, self.term, self.dims = base.site, base.term, base.dims

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

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        return self.base.draw_init(num, generator)

    def reference_scale(self) -> Optional[Tensor]:
        return self.base.reference_scale()

    def curvature(self) -> Optional[Tensor]:
        # the factors' curvature (colinearity: ~kappa / |w_i|^2) is orders of magnitude below the base's
        return self.base.curvature()

    def latents(self) -> list:
        return self.base.latents()

    def to(self, device) -> "ProductPrior":
        if hasattr(self.base, "to"):
            self.base.to(device)
        return self

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
