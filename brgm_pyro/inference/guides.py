"""Structured guides that factor over the images plate: the images of a batch are independent in q.

``AutoImagesLowRank``: for each image b its own low-rank-plus-diagonal Gaussian over its latent
w_b (L x d, flattened to D = L d):

    q(w) = prod_b N(vec(w_b) | mu_b, F_b F_b^T + diag(s_b^2)),   F_b = C_b * s_b  (D x r)

(Pyro's parameterisation of AutoLowRankMultivariateNormal, one copy per image). Pyro's own
autoguide packs every latent of the batch into one vector: one low-rank factor shared by all
images couples them. Its 44x step time for 4x the faces (issue 28) was the engine's
``guide_marginal_std`` (the VI hyperprior needs sigma_v every step) reading the posterior's
``scale_tril``: a dense (B D) x (B D) Cholesky factor, cubic in the batch (faces64, D = 10 x 128 =
1,280: 0.40 s for one face, 16.7 s for four, one loaded thread). The engine now reads a low-rank
posterior's ``variance`` (O(B D r)), and here every per-image quantity (entropy, marginal
variances, draws) costs O(D r^2) per image. Measured (``benchmarks/guide_step_time.py --steps 2
--no-percept``, faces64 x8 SR, rank 10, 4 particles, one thread on the loaded 2-core VM): this guide
0.294 s per step for one face, 0.960 s for four (3.3x); Pyro's joint one with the engine's fix
0.279 / 1.091 s (3.9x).

:func:`images_lowrank_guide` builds it for the model's image site and puts any other latent site
(learned noise level, kernel width, discrepancy colour) in a mean-field ``AutoNormal`` beside it
(an ``AutoGuideList``).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoGuide, AutoGuideList, AutoNormal
from pyro.nn import PyroParam
from torch import Tensor, nn


class AutoImagesLowRank(AutoGuide):
    """Per-image low-rank-plus-diagonal Gaussian over one real-valued site inside the images plate.

    Args:
        model: a model whose only latent site is ``site`` (value (B, *event), support the reals);
            block the others (:func:`images_lowrank_guide` does).
        site: the site's name (the model's image site, ``w``).
        init_loc_fn: Pyro's init strategy (site dict -> initial value (B, *event)).
        init_scale: initial marginal std of every coordinate (unconstrained units).
        rank: r, the number of correlated directions per image.
    """

    def __init__(self, model: Callable, site: str, init_loc_fn: Callable, init_scale: float = 0.1,
                 rank: int = 10) -> None:
        if rank < 1 or init_scale <= 0:
            raise ValueError(f"rank must be >= 1 and init_scale > 0, got {rank}, {init_scale}")
        self.site, self.rank = site, int(rank)
        self._init_loc_fn, self._init_scale = init_loc_fn, float(init_scale)
        super().__init__(model)

    def _setup_prototype(self, *args, **kwargs) -> None:
        super()._setup_prototype(*args, **kwargs)
        node = self.prototype_trace.nodes[self.site]
        init = self._init_loc_fn(node).detach()
        self._event_shape = tuple(node["fn"].event_shape)
        B, D = init.shape[0], math.prod(self._event_shape)
        self.loc = nn.Parameter(init.reshape(B, D).clone())
        self.scale = PyroParam(init.new_full((B, D), 0.5 ** 0.5 * self._init_scale),
                               constraint=constraints.softplus_positive)
        self.cov_factor = nn.Parameter(init.new_empty(B, D, self.rank).normal_(0, 1 / self.rank ** 0.5))

    def get_posterior(self) -> dist.LowRankMultivariateNormal:
        """q over the flattened latent: batch (B,), event (D,)."""
        s = self.scale
        return dist.LowRankMultivariateNormal(self.loc, self.cov_factor * s.unsqueeze(-1), s * s)

    def forward(self, *args, **kwargs) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        node = self.prototype_trace.nodes[self.site]
        with ExitStack() as stack:
            for frame in node["cond_indep_stack"]:
                if frame.vectorized:
                    stack.enter_context(plates[frame.name])
            u = pyro.sample(f"{self.site}_unconstrained", self.get_posterior(), infer={"is_auxiliary": True})
            w = u.reshape(*u.shape[:-1], *self._event_shape)
            value = pyro.sample(self.site, dist.Delta(w, event_dim=len(self._event_shape)))
        return {self.site: value}

    @torch.no_grad()
    def median(self, *args, **kwargs) -> dict[str, Tensor]:
        """The mean (= median) of every image's latent: {site: (B, *event)}."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return {self.site: self.loc.reshape(-1, *self._event_shape).clone()}

    def marginal_std(self, site: Optional[str] = None) -> Optional[Tensor]:
        """sigma_v of every coordinate, flattened (B D): sqrt(diag(F F^T) + s^2), O(B D r)."""
        if site not in (None, self.site):
            return None
        s = self.scale
        return (s * s * (1.0 + self.cov_factor.pow(2).sum(-1))).sqrt().reshape(-1)

    def analytic_entropy(self) -> Tensor:
        """H[q], summed over the images (each image's Gaussian is independent)."""
        return self.get_posterior().entropy().sum()


def images_lowrank_guide(model, init_loc_fn: Callable, init_scale: float, rank: int = 10):
    """The per-image low-rank guide over ``model.image_site``; other latent sites (if any) mean-field."""
    site = model.image_site
    w_part = AutoImagesLowRank(poutine.block(model, expose=[site]), site, init_loc_fn, init_scale, rank)
    others = [name for name in model.latent_sites() if name != site]
    if not others:
        return w_part
    guide = AutoGuideList(model)
    guide.append(w_part)
    guide.append(AutoNormal(poutine.block(model, hide=[site]), init_loc_fn=init_loc_fn, init_scale=init_scale))
    return guide


__all__ = ["AutoImagesLowRank", "images_lowrank_guide"]
