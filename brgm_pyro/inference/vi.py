"""Variational inference (paper Sec. 2.4) with any Pyro guide.

The default guide is ``AutoNormal``: q(w) = prod_k N(w_k | mu_v,k, sigma_v,k^2) with
sigma_v = softplus(rho_v) = log(1 + exp(rho_v)) (Pyro's ``softplus_positive`` constraint). The
objective is the full ELBO, entropy included (the reference code omits it), plus the paper's
optional inverse-gamma(alpha, beta) hyperprior on sigma_v:

    loss(mu_v, rho_v) = -E_q[log p(w, y)] - H[q] - sum_k log InvGamma(sigma_v,k | alpha, beta)

The hyperprior's density -(alpha + 1) log s - beta / s has its mode at s = beta / (alpha + 1)
(0.864 for the paper's 0.1, 0.95): it pushes every sigma_v below that towards it, i.e. it
*widens* q, and it does so much more for small sigma_v (the -beta/s term explodes as s -> 0).
By default s is sigma_v measured in units of the prior std of the same coordinate
(``hyperprior_units="prior"``), so the paper's values mean the same for every generator.
Set ``hyperprior=None`` for the plain ELBO (the true variational optimum).

Guides: ``"normal"`` (AutoNormal), ``"diagonal"`` (AutoDiagonalNormal), ``"lowrank"``
(per image: low-rank plus diagonal over w, the images independent; :mod:`brgm_pyro.inference.guides`),
``"lowrank_joint"`` (Pyro's AutoLowRankMultivariateNormal over the whole batch), ``"mvn"`` (AutoMultivariateNormal), or any callable
``factory(model, init_loc_fn, init_scale) -> guide`` (register more in ``GUIDES``). Every guide
covers every latent site of the model (w and the learned scalars), as Pyro's autoguides do.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import pyro
import torch
from pyro.infer.autoguide import (AutoDiagonalNormal, AutoLowRankMultivariateNormal, AutoMultivariateNormal,
                                  AutoNormal)
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.engine import ELBOTerms, _particles, guide_marginal_std, optimise, save_checkpoint
from brgm_pyro.inference.guides import images_lowrank_guide
from brgm_pyro.inference.psis import check_reweight
from brgm_pyro.inference.psis import reweight as reweight_draws
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.sites import init_loc_fn, initial_values
from brgm_pyro.models.brgm import BRGMModel
from brgm_pyro.models.density import natural_layout
from brgm_pyro.registry import Registry

DEFAULT_VI_STEPS = 300
DEFAULT_VI_LR = 0.05
DEFAULT_HYPERPRIOR = (0.1, 0.95)
DEFAULT_INIT_SCALE = 0.05

GUIDES: Registry = Registry("guide")


@GUIDES.register("normal")
def _normal(model, init_loc_fn, init_scale, **kw):
    return AutoNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, **kw)


@GUIDES.register("diagonal")
def _diagonal(model, init_loc_fn, init_scale, **kw):
    return AutoDiagonalNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, **kw)


@GUIDES.register("lowrank")
def _lowrank(model, init_loc_fn, init_scale, rank: int = 10, **kw):
    """Per image: low-rank (``rank``) plus diagonal over w; images independent (inference/guides.py)."""
    if kw:
        raise BRGMError(f"the lowrank guide takes rank only; got {sorted(kw)}")
    return images_lowrank_guide(model, init_loc_fn, init_scale, rank=rank)


@GUIDES.register("lowrank_joint")
def _lowrank_joint(model, init_loc_fn, init_scale, rank: int = 10, **kw):
    """Pyro's AutoLowRankMultivariateNormal: one low-rank factor over every latent of the batch
    (couples the images; its cost grows faster than the batch)."""
    return AutoLowRankMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, rank=rank, **kw)


@GUIDES.register("mvn")
def _mvn(model, init_loc_fn, init_scale, **kw):
    return AutoMultivariateNormal(model, init_loc_fn=init_loc_fn, init_scale=init_scale, **kw)


def _draw(model: BRGMModel, guide, y: Tensor, num: int, chunk: int = 64) -> dict[str, Tensor]:
    """num draws of every latent site from the guide: site -> (num, *value shape) (natural layout)."""
    out: dict[str, list] = {}
    done = 0
    while done < num:
        n = min(chunk, num - done)
        if n > 1:
            d = natural_layout(model, _particles(guide, n)(y), 1)
        else:
            d = {k: v[None] for k, v in guide(y).items()}
        for k, v in d.items():
            out.setdefault(k, []).append(v.detach())
        done += n
    return {k: torch.cat(v) for k, v in out.items()}


def render_samples(model: BRGMModel, draws: Union[dict, Tensor], y: Optional[Tensor] = None, seed: int = 0) -> Tensor:
    """The images of posterior draws, (S, B, C, H, W): G(w) (plus a draw of the discrepancy e given
    w and y when the model has one, which needs ``y``), in chunks to bound memory; see
    :meth:`BRGMModel.predictive_images`. ``draws``: site -> (S, ...) or the w draws (S, B, L, d) alone."""
    if not isinstance(draws, dict):
        draws = {model.image_site: draws}
    if y is None and model.discrepancy is not None:
        raise BRGMError("the model has a discrepancy term: its predictive images need the observation y")
    return model.predictive_images(draws, y, seed=seed)


def _make_guide(guide: Union[str, Callable], model: BRGMModel, loc_fn, init_scale: float,
                guide_options: Optional[dict]) -> tuple[Any, str]:
    """(guide, its name): a registered name (:data:`GUIDES`) or a factory ``(model, init_loc_fn, init_scale)``."""
    if callable(guide) and not isinstance(guide, str):
        q = guide(model, loc_fn, float(init_scale))
        return q, getattr(guide, "__name__", type(q).__name__)
    return GUIDES.build(guide, model, loc_fn, float(init_scale), **(guide_options or {})), guide


def _writing_estimate(step_s: float, particles: int, num_samples: int) -> tuple[float, str]:
    """Seconds to render ``num_samples`` draws after the fit: a forward of G is about a third of a
    forward + backward, and a step is ``particles`` of those (plus the reliance map's prior draws the
    first time a generator is used: cached after that, brgm_pyro.reliance)."""
    render = step_s / max(1, particles) / 3
    return num_samples * render, (f"rendering {num_samples} draws; the first run of a generator adds "
                                  f"~{512 * render / 60:.0f} min for the reliance map's prior variance")


def run_vi(
    model: BRGMModel,
    y: Tensor,
    *,
    guide: Union[str, Callable] = "normal",
    steps: Optional[int] = None,
    lr: float = DEFAULT_VI_LR,
    lr_decay: float = 0.1,
    num_particles: int = 4,
    hyperprior: Optional[tuple[float, float]] = DEFAULT_HYPERPRIOR,
    hyperprior_units: str = "prior",
    num_samples: int = 16,
    init_w: Optional[Tensor] = None,
    init: Optional[dict] = None,
    init_scale: float = DEFAULT_INIT_SCALE,
    seed: int = 0,
    progress: bool = True,
    callback: Optional[Callable] = None,
    guide_options: Optional[dict] = None,
    checkpoint_path: Optional[str] = None,
    checkpoint_every: int = 100,
    reweight: str = "none",
) -> InferenceResult:
    """Fit a variational posterior q over every latent site and draw ``num_samples`` reconstructions.

    Args:
        model, y: as in :func:`run_map`.
        guide: a registered name or ``factory(model, init_loc_fn, init_scale) -> guide``.
        steps, lr, lr_decay: Adam settings (lr decays to ``lr * lr_decay``).
        num_particles: reparameterised draws per step (vectorised).
        hyperprior: (alpha, beta) of the inverse-gamma on sigma_v of w, or None for the plain ELBO.
        hyperprior_units: ``"prior"`` (sigma_v / the prior's reference scale, default) or ``"absolute"``.
        num_samples: posterior draws returned (``draws``, ``samples``).
        init_w: (B, L, d) initial means of w (default: the prior's; pass a MAP to warm-start).
        init: initial means of any latent sites by name (e.g. ``map_result.latents``).
        init_scale: initial sigma_v (unconstrained units).
        reweight: ``"psis"``: mean, std, intervals use the draws' PSIS weights (``weights``); k-hat is in
            ``extra["psis"]`` either way (2+ draws; :mod:`brgm_pyro.inference.psis`).
    Returns:
        :class:`InferenceResult`: ``latents`` = the guide's medians (``.w`` its loc), ``image`` =
        posterior mean of G(w) over the draws, ``draws``/``samples`` the draws, ``extra['scale']``
        the marginal sigma_v of w reshaped like w when the guide has marginal scales.
    """
    steps = DEFAULT_VI_STEPS if steps is None else int(steps)
    check_reweight(reweight)
    model.check_observation(y)
    pyro.set_rng_seed(seed)
    loc_fn = init_loc_fn(initial_values(model, y, init, init_w))
    site = model.image_site
    with pyro.get_param_store().scope():
        q, guide_name = _make_guide(guide, model, loc_fn, init_scale, guide_options)
        q(y)  # creates the parameters
        elbo = ELBOTerms(model, q, num_particles=num_particles, entropy=True, hyperprior=hyperprior,
                         hyperprior_units=hyperprior_units)

        def snapshot() -> dict[str, Tensor]:
            med = q.median(y)
            out = {"loc": med[site], **{f"loc_{k}": v for k, v in med.items() if k != site}}
            s = guide_marginal_std(q, site)
            if s is not None:
                out["scale"] = s.reshape(out["loc"].shape)
            return out

        ckpt = None
        if checkpoint_path is not None:
            ckpt = lambda step: save_checkpoint(checkpoint_path, snapshot(), {"step": step, "method": "vi"})
        out = optimise(lambda: list(q.parameters()), lambda: elbo(y), elbo.names, steps=steps, lr=lr,
                       lr_decay=lr_decay, desc=f"VI ({guide_name})", progress=progress, callback=callback,
                       checkpoint=ckpt, checkpoint_every=checkpoint_every,
                       after=lambda t: _writing_estimate(t, num_particles, num_samples))
        with torch.no_grad():
            latents = {k: v.detach().clone() for k, v in q.median(y).items()}
            snap = {k: v.detach().clone() for k, v in snapshot().items()}
            draws, weights_info = _draws_and_weights(model, q, y, num_samples)
            if hasattr(q, "get_posterior") and not isinstance(q, AutoNormal):
                snap["posterior"] = q.get_posterior()
    samples = render_samples(model, draws, y, seed) if draws is not None else None
    extra = {"guide": guide_name, "lr": lr, "num_particles": num_particles, "hyperprior": hyperprior,
             "seed": seed, "reweight": reweight, **snap}
    return _vi_result(model, latents, draws, samples, weights_info, reweight, out, extra)


def _vi_result(model: BRGMModel, latents: dict, draws, samples, weights_info, reweight: str, out: dict,
               extra: dict) -> InferenceResult:
    """run_vi's result: PSIS's summary, log weights and warning in ``extra``, the weights when
    ``reweight == "psis"``, ``image`` the (weighted) mean of the draws (G at the guide's median without)."""
    site = model.image_site
    weights = weights_info.weights.to(samples.dtype) if (weights_info is not None and reweight == "psis") else None
    if weights_info is not None:
        extra["psis"] = weights_info.summary()
        extra["psis_log_weights"] = weights_info.log_weights
        if weights_info.warning():
            extra["warnings"] = [weights_info.warning()]
    with torch.no_grad():
        image = model.render(latents[site]).detach() if samples is None else samples.mean(0)
    result = InferenceResult(method="vi", latents=latents, image=image, draws=draws, samples=samples,
                             history=out["history"], timing=out["timing"], stopped=out["stopped"], extra=extra,
                             image_site=site, weights=weights)
    if weights is not None:
        result.image = result.mean_image().detach()
    return result


def _draws_and_weights(model: BRGMModel, q, y: Tensor, num: int):
    """(draws, PSIS of them against the model's log joint or None): the guide's ``num`` draws (site ->
    (num, ...)); PSIS for 2+ draws (:func:`brgm_pyro.inference.psis.reweight`)."""
    if num < 1:
        return None, None
    if num < 2:
        return _draw(model, q, y, num), None
    return reweight_draws(model, q, y, num)
