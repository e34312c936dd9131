r"""RLS's prior terms (seed 004, Eq. 3) as factors, and the two registered flow priors.

RLS's MAP objective is :math:`\lVert y - D(G(w))\rVert_1 - \log p_w(w)` with

.. math::

    \log p_w(w) = \lambda_w P_w + \lambda_g P_{gaussian} + \lambda_c P_{cross}, \quad
    P_w = \tfrac1L \sum_i \log p_F(w_i), \quad
    P_{gaussian} = -\tfrac1L \sum_i (\lVert F(w_i)\rVert - \sqrt d)^2, \quad
    P_{cross} = -\sum_{i<j} \lVert w_i - w_j\rVert^2

(their Eq. 3 as printed; weights 1e-4, 2e-4, 1e-2). The L1 fidelity is the log density of a
Laplace likelihood with scale b = 1 in their image units, so their lambdas are log-density
weights relative to that likelihood. With our Laplace noise of scale b (``noise="laplace"``,
``sigma_pixel=b``) the same balance is lambda / b: ``fidelity_scale=b`` divides every weight by b,
so MAP minimises exactly RLS's objective (times 1/b) and VI / MCMC see the posterior it implies.

Registered priors (``--prior NAME``):

* ``flow``: the Bayesian form, prod_i p_F(w_i) (a normalised density, weight 1), times the
  colinearity factor (``kappa``, on by default) and, optionally, the Gaussianization and cross
  factors with weights in log-density units (``gaussianization``, ``cross``; 0 = off);
* ``rls``: RLS's three terms with their weights, ``lambda_w``, ``lambda_g``, ``lambda_c``.

Both find the fitted flow beside the generator's weights
(:func:`~brgm_pyro.models.generators.loading.flow_prior_path`), or take ``path=``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.priors.base import Factor, Prior, ProductPrior
from brgm_pyro.models.priors.colinearity import ColinearityFactor
from brgm_pyro.models.priors.flow import FlowConfig, FlowPrior, WFlow, load_flow

#: Generators this small get a flow fitted in memory (seconds) when no file is found (tests, examples).
QUICK_FIT_MAX_DIM = 16
RLS_WEIGHTS = {"lambda_w": 1e-4, "lambda_g": 2e-4, "lambda_c": 1e-2}


class GaussianizationFactor(Factor):
    """log phi(w) = -weight * sum_i (||F(w_i)|| - sqrt(d))^2: keeps the Gaussianised latents near
    the sphere where a d-dimensional standard normal has its mass (RLS's P_gaussian times L * weight)."""

    site = "w_gaussianization"
    term = "gaussianization"

    def __init__(self, wflow: WFlow, weight: float) -> None:
        self.wflow, self.weight = wflow, float(weight)

    def log_factor(self, w: Tensor) -> Tensor:
        r = self.wflow.gaussianise(w).norm(dim=-1)
        return -self.weight * (r - math.sqrt(self.wflow.w_dim)).pow(2).sum(-1)

    def config(self) -> dict:
        return {"gaussianization_weight": self.weight}


class CrossFactor(Factor):
    """log phi(w) = -weight * sum_{i<j} ||w_i - w_j||^2 (RLS's P_cross times weight), in W's units."""

    site = "w_cross"
    term = "cross"

    def __init__(self, weight: float) -> None:
        self.weight = float(weight)

    def log_factor(self, w: Tensor) -> Tensor:
        L = w.shape[-2]
        # sum_{i<j} |w_i - w_j|^2 = L sum_i |w_i|^2 - |sum_i w_i|^2: O(L d) instead of O(L^2 d)
        return -self.weight * (L * w.pow(2).sum((-2, -1)) - w.sum(-2).pow(2).sum(-1))

    def config(self) -> dict:
        return {"cross_weight": self.weight}


def flow_for(generator, path: Optional[str] = None) -> WFlow:
    """The fitted flow of ``generator``: ``path``, else the file beside its weights, else (tiny
    generators only) a quick fit in memory. Cached on the generator."""
    from brgm_pyro.models.generators.loading import flow_prior_path

    cache = getattr(generator, "_brgm_flow_prior", None)
    if cache is None:
        cache = {}
        object.__setattr__(generator, "_brgm_flow_prior", cache)
    found = Path(path) if path is not None else flow_prior_path(generator)
    key = (str(found) if found is not None and found.is_file() else None, getattr(generator, "class_index", None))
    if key in cache:
        return cache[key]
    if key[0] is not None or path is not None:
        wflow = load_flow(found, generator)
    elif generator.w_dim <= QUICK_FIT_MAX_DIM:
        wflow = _quick_fit(generator)
    else:
        where = f" (looked for {found})" if found is not None else ""
        raise BRGMError(f"no flow prior for this generator{where}; fit one with `brgm train-prior --generator "
                        "SPEC` (it is written where --prior flow finds it), or pass prior_options path=")
    cache[key] = wflow
    return wflow


def _quick_fit(generator) -> WFlow:
    """A small flow fitted in seconds (tiny generators without a prior file: tests, examples)."""
    from brgm_pyro.models.priors.flow_fit import train_prior

    cfg = FlowConfig(w_dim=generator.w_dim, transforms=3, hidden=(32, 32), noise=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quick.flow_prior.safetensors"
        train_prior(generator, out, cfg=cfg, num_train=4000, num_val=1000, steps=300, batch_size=256,
                    lr=3e-3, eval_every=100, patience=3, ckpt_every=10_000, log=lambda _: None)
        wflow = load_flow(out, generator)
    wflow.summary["path"] = None
    return wflow


def make_flow_prior(generator, stats=None, kappa: float = 2.0, colinearity: bool = True,
                    gaussianization: float = 0.0, cross: float = 0.0, path: Optional[str] = None, **_) -> Prior:
    """``flow``: prod_i p_F(w_i) x [colinearity(kappa)] x [Gaussianization] x [cross] (log-density weights)."""
    wflow = flow_for(generator, path)
    factors: list[Factor] = [ColinearityFactor(kappa)] if colinearity else []
    if gaussianization:
        factors.append(GaussianizationFactor(wflow, gaussianization))
    if cross:
        factors.append(CrossFactor(cross))
    base = FlowPrior(wflow, generator.num_ws)
    return ProductPrior(base, factors) if factors else base


def make_rls_prior(generator, stats=None, lambda_w: float = RLS_WEIGHTS["lambda_w"],
                   lambda_g: float = RLS_WEIGHTS["lambda_g"], lambda_c: float = RLS_WEIGHTS["lambda_c"],
                   fidelity_scale: float = 1.0, path: Optional[str] = None, **_) -> Prior:
    """``rls``: lambda_w P_w + lambda_g P_gaussian + lambda_c P_cross, each divided by ``fidelity_scale`` b.

    In log-density units the site ``w`` carries lambda_w / (L b) * sum_i log p_F(w_i), the
    Gaussianization factor lambda_g / (L b), the cross factor lambda_c / b. ``lambda_g = 0`` or
    ``lambda_c = 0`` drops that factor (the ablation of seed 004's appendix); ``lambda_w`` must stay
    positive (it is the site's density; use ``lambda_w=1e-12`` to remove P_w in effect).
    """
    if not fidelity_scale > 0:
        raise BRGMError(f"fidelity_scale must be positive, got {fidelity_scale}")
    if not lambda_w > 0 or lambda_g < 0 or lambda_c < 0:
        raise BRGMError(f"RLS needs lambda_w > 0 and lambda_g, lambda_c >= 0; got {lambda_w}, {lambda_g}, {lambda_c}")
    wflow = flow_for(generator, path)
    L, b = generator.num_ws, float(fidelity_scale)
    factors: list[Factor] = []
    if lambda_g:
        factors.append(GaussianizationFactor(wflow, lambda_g / (L * b)))
    if lambda_c:
        factors.append(CrossFactor(lambda_c / b))
    return ProductPrior(FlowPrior(wflow, L, weight=lambda_w / (L * b)), factors)


__all__ = ["GaussianizationFactor", "CrossFactor", "flow_for", "make_flow_prior", "make_rls_prior",
           "RLS_WEIGHTS", "QUICK_FIT_MAX_DIM"]
