r"""The model's log density, term by term: the one computation behind the ELBO, the direct log
joint (MCMC checks, curvature) and the ArviZ ``sample_stats``.

For a trace of the model with every latent site's value fixed,

.. math::

    \log p(\theta, w, y) = \sum_{\text{sites } s} \text{scale}_s \cdot \text{mask}_s \cdot \log p_s(v_s \mid \text{parents}),

grouped by the *term* each site belongs to (``prior``, ``colinearity``, ``sigma_pixel_prior``,
``pixel``, ``perceptual``, ...: :meth:`BRGMModel.site_terms`). Likelihood sites carry the
tempering 1/T as their scale, factor sites their unnormalised log factor.

Layouts of latent values with S leading sample dims. *Natural*: ``(*S, *value_shape)`` (what
MCMC returns; ``value_shape`` is (B, L, d) for w, () for a shared scalar, (B,) for a per-image
one). *Plate*: the same with a unit dim where the images plate would be for shared sites,
``(*S, 1)``: what Pyro's vectorised plates (particles, draws at dim -2) produce and what the
components broadcast against. :func:`plate_layout` converts.
"""

from __future__ import annotations

from typing import Optional

import pyro
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from torch import Tensor


def trace_terms(trace, site_terms: dict[str, str], keep_dims: int = 0) -> dict[str, Tensor]:
    """Sum the log densities of a model trace by term: term -> tensor of shape ``lp.shape[:keep_dims]``.

    ``keep_dims``: how many leading (sample) dims of each site's log density to keep (0: totals).
    """
    out: dict[str, Tensor] = {}
    for name, site in trace.nodes.items():
        term = site_terms.get(name)
        if term is None or site["type"] != "sample":
            continue
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
        lp = lp.reshape(*lp.shape[:keep_dims], -1).sum(-1) if keep_dims else lp.sum()
        out[term] = out[term] + lp if term in out else lp
    return out


def sample_ndim(model, latents: dict) -> int:
    """How many leading sample dims ``latents`` (natural or plate layout) carry, read from w."""
    site = model.latent_sites()[model.image_site]
    return latents[model.image_site].ndim - 1 - len(site.event_shape)


def _relayout(model, latents: dict, ndim: int, to_plate: bool) -> dict:
    """Add (``to_plate``) or drop the unit images dim of shared sites that carry ``ndim`` sample dims."""
    if ndim == 0:
        return dict(latents)
    sites = model.latent_sites()
    out = {}
    for k, v in latents.items():
        s = sites.get(k)
        if s is not None and not s.per_image:
            if to_plate and v.ndim == ndim + len(s.event_shape):
                v = v.unsqueeze(ndim)
            elif not to_plate and v.ndim == ndim + 1 + len(s.event_shape):
                v = v.squeeze(ndim)
        out[k] = v
    return out


def plate_layout(model, latents: dict, ndim: Optional[int] = None) -> dict:
    """Natural -> plate layout: shared sites with sample dims get a unit images dim."""
    return _relayout(model, latents, sample_ndim(model, latents) if ndim is None else ndim, True)


def natural_layout(model, latents: dict, ndim: int) -> dict:
    """Plate -> natural layout (drops the unit images dim of shared sites)."""
    return _relayout(model, latents, ndim, False)


def scalar_params(model, latents: dict) -> dict:
    """The scalar latents' values (for ``model.predict`` and the likelihoods)."""
    return {lat.name: latents[lat.name] for lat in model.scalar_latents}


def log_density_terms(model, y: Tensor, latents: dict,
                      site_terms: Optional[dict[str, str]] = None) -> dict[str, Tensor]:
    """log p by term for fixed latent values: term -> (S,) with one leading sample dim, () without.

    ``latents``: site -> value in natural or plate layout, with 0 or 1 leading sample dims
    (flatten more first). Every latent site of the model must be given. ``site_terms``: site ->
    term grouping (default :meth:`BRGMModel.site_terms`; SMC splits reference and tempered sites).
    """
    missing = [k for k in model.latent_sites() if k not in latents]
    if missing:
        from brgm_pyro.errors import BRGMError

        raise BRGMError(f"log density: no value for the latent site(s) {missing}")
    nd = sample_ndim(model, latents)
    if nd > 1:
        raise ValueError("log_density_terms takes at most one leading sample dim; flatten the others")
    values = plate_layout(model, latents, nd)
    fn = poutine.condition(model, data=values)
    if nd == 1:
        S = values[model.image_site].shape[0]
        inner = fn

        def fn(*args):  # noqa: F811 - the draws as a vectorised plate left of the images plate
            with pyro.plate("draws", S, dim=-2):
                return inner(*args)

    with poutine.block(hide_types=["param"]):
        tr = poutine.trace(fn).get_trace(y)
    return trace_terms(tr, site_terms or model.site_terms(), keep_dims=nd)


__all__ = ["trace_terms", "log_density_terms", "plate_layout", "natural_layout", "scalar_params", "sample_ndim"]
