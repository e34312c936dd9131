r"""Prior-reliance map: for each pixel of the reconstruction, how much of it the prior decides.

Definition (per image b, channel c, pixel k of the clean image x = G(w)):

.. math::

    r_{bck} = \frac{\mathrm{Var}[x_{ck} \mid y_b]}{\mathrm{Var}[x_{ck}]}
    \qquad\text{(posterior over prior variance; data reliance } 1 - r\text{)}

The numerator is the variance of the pixel over posterior draws of w (VI, MCMC); the denominator
its variance under the model's prior on w alone (the same for every image). r = 0: the
observation pins the pixel down; r = 1: the observation says nothing about it and the value is the
prior's. In the linear-Gaussian model it is exact and in [0, 1]:
r_k = (J S J^T)_kk / (J S_0 J^T)_kk with J = dG/dw, S_0 and S the prior and posterior covariances
of w. For a per-pixel Gaussian prior N(m_k, s_k^2) observed in Gaussian noise of std s_n
(denoising) it is r_k = 1 / (1 + s_k^2 / s_n^2), which is BIGPrior's fusion factor phi (its Eq. 8),
and the posterior mean is then exactly BIGPrior's fusion (1 - r) y + r m (its Eq. 5/6). Beyond that
case BIGPrior learns phi with a network; here it follows from the model, so it also covers
super-resolution, deblurring, compressed sensing and the correlations a generator induces (a
missing pixel next to observed ones is partly decided by the data). See docs/corruptions.md.

Estimators: the posterior variance from the S draws a method returns (unbiased sample variance);
the prior variance from ``num_prior`` seeded prior draws of w rendered by G, once per generator and
prior setting: it is cached beside the weights (or in the user cache for builtins), so later runs
render nothing for it. A prior with factors
(the BRGM colinearity term) is sampled from its base distribution and the draws are weighted by
exp(sum of factors) (self-normalised importance sampling; the effective sample size is reported).
Outside the linear-Gaussian case r can exceed 1 (a posterior wider than the prior in a pixel,
e.g. between two modes, or Monte-Carlo error); it is reported as computed and clipped to [0, 1]
only for the picture.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError

DEFAULT_PRIOR_DRAWS = 512


@dataclass
class RelianceMap:
    """The prior-reliance map of a batch of reconstructions.

    Attributes:
        prior_reliance: (B, C, H, W) r = posterior / prior variance (dimensionless, >= 0).
        posterior_var: (B, C, H, W) and prior_var: (C, H, W) pixel variances ([-1, 1] units^2).
        num_posterior, num_prior: draws behind each; prior_ess: effective number of prior draws.
    """

    prior_reliance: Tensor
    posterior_var: Tensor
    prior_var: Tensor
    num_posterior: int
    num_prior: int
    prior_ess: float

    @property
    def data_reliance(self) -> Tensor:
        """1 - r, clipped to [0, 1]: (B, C, H, W)."""
        return 1.0 - self.prior_reliance.clamp(0.0, 1.0)

    def channel_mean(self) -> Tensor:
        """r averaged over channels, clipped to [0, 1] (BIGPrior shows this): (B, H, W)."""
        return self.prior_reliance.clamp(0.0, 1.0).mean(-3)

    def summary(self) -> dict:
        """Per-image mean r, and how often r > 1, as floats (for metrics.json)."""
        r = self.prior_reliance.double()
        return {"mean_prior_reliance": r.clamp(0, 1).flatten(1).mean(1).tolist(),
                "fraction_above_1": (r > 1).double().flatten(1).mean(1).tolist(),
                "num_posterior_draws": self.num_posterior, "num_prior_draws": self.num_prior,
                "prior_ess": self.prior_ess}

    def to_dataset(self):
        """An xarray Dataset: ``prior_reliance``, ``posterior_var`` (image, channel, row, col), ``prior_var``."""
        import xarray as xr

        def a(t: Tensor) -> np.ndarray:
            return t.detach().cpu().double().numpy()

        dims = ("image", "channel", "row", "col")
        attrs = {"definition": "prior_reliance = Var[x | y] / Var[x] per pixel of x = G(w); data reliance = 1 - it",
                 "num_posterior_draws": self.num_posterior, "num_prior_draws": self.num_prior,
                 "prior_ess": float(self.prior_ess)}
        return xr.Dataset({"prior_reliance": (dims, a(self.prior_reliance)),
                           "posterior_var": (dims, a(self.posterior_var)),
                           "prior_var": (dims[1:], a(self.prior_var))},
                          coords={"image": np.arange(self.prior_reliance.shape[0])}, attrs=attrs)


def sample_prior_latents(prior, num: int, seed: int = 0) -> tuple[Tensor, Optional[Tensor]]:
    """``num`` seeded draws of w from ``prior`` (num, L, d) and their normalised weights (num,) or None.

    A :class:`~brgm_pyro.models.priors.ProductPrior` is drawn from its base and weighted by its
    factors (self-normalised importance sampling); other priors are drawn exactly.
    """
    base = getattr(prior, "base", prior)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            w = base.distribution().sample((num,))
        except NotImplementedError:
            raise BRGMError(f"the prior {type(base).__name__} cannot be sampled, which the reliance map "
                            "needs") from None
    factors = getattr(prior, "factors", [])
    if not factors:
        return w, None
    logw = sum(f.log_factor(w) for f in factors)
    return w, torch.softmax(logw.double(), 0)


def _moments(model, w: Tensor, wt: Optional[Tensor], chunk: Optional[int], progress: bool) -> tuple[Tensor, Tensor]:
    """Weighted mean and variance of G(w) over the draws w (num, L, d), float64 (C, H, W), streamed:
    ``chunk`` renders at a time (default: the memory budget's), never all images at once. Unweighted
    draws get the unbiased variance. Sums are shifted by the first render (no cancellation)."""
    from tqdm.auto import tqdm

    from brgm_pyro.memory import chunk_ranges, items_per_chunk

    num = w.shape[0]
    chunk = chunk or items_per_chunk(model, num, 1, grad=False)
    unbiased = wt is None
    wt = torch.full((num,), 1.0 / num, dtype=torch.float64, device=w.device) if wt is None else wt
    s1 = s2 = shift = None
    with torch.no_grad():
        for sl in tqdm(list(chunk_ranges(num, chunk)), desc="prior pixel variance (once per generator)",
                       disable=not progress, leave=False):
            x = model.render(w[sl]).double()
            shift = x[0].clone() if shift is None else shift
            d = x - shift
            c = wt[sl].to(d)[:, None, None, None]
            s1 = (c * d).sum(0) if s1 is None else s1 + (c * d).sum(0)
            s2 = (c * d * d).sum(0) if s2 is None else s2 + (c * d * d).sum(0)
    var = (s2 - s1 * s1).clamp_min(0.0)
    if num > 1 and unbiased:
        var = var * num / (num - 1)
    return shift + s1, var


def prior_image_moments(model, num: int = DEFAULT_PRIOR_DRAWS, seed: int = 0, chunk: Optional[int] = None,
                        cache: bool = False, progress: bool = False) -> tuple[Tensor, Tensor, float]:
    """Prior mean and variance of every pixel of x = G(w) (+ e, with the model's discrepancy term),
    w ~ the model's prior: ((C, H, W), (C, H, W), ESS). The discrepancy adds tau^2 to the variance.

    ``cache``: read the moments of G(w) from the per-generator cache (and write them there the first
    time, :mod:`brgm_pyro.models.generators.cache`), keyed by G's weights, the prior draws (so every
    prior setting) and their weights; a cached call renders nothing. ``progress``: a bar while
    rendering."""
    w, wt = sample_prior_latents(model.prior, num, seed)
    extra = 0.0 if getattr(model, "discrepancy", None) is None else model.discrepancy.tau ** 2
    ess = float(num) if wt is None else float(1.0 / (wt ** 2).sum())
    path = None
    if cache:
        from brgm_pyro.models.generators.cache import cache_key, per_generator_path

        path = per_generator_path(model.generator, "prior_pixel_moments",
                                  cache_key(model.generator, [w, wt], "prior_pixel_moments/1", num, seed))
        got = _read_moments(path, model.generator.image_shape)
        if got is not None:
            dev = model.generator.device()
            return got[0].to(dev), got[1].to(dev) + extra, ess
    mean, var = _moments(model, w.to(model.generator.device()), wt, chunk, progress)
    if path is not None:
        _write_moments(path, mean, var, num, seed)
    return mean, var + extra, ess


def _read_moments(path, shape: tuple) -> Optional[tuple[Tensor, Tensor]]:
    """(mean, var) float64 from a cache file, or None when it is missing, unreadable or another shape."""
    if not os.path.isfile(path):
        return None
    try:
        from safetensors.torch import load_file

        t = load_file(str(path))
        if tuple(t["var"].shape) != tuple(shape):
            return None
        return t["mean"].double(), t["var"].double()
    except Exception:  # a corrupt cache is recomputed, never fatal
        return None


def _write_moments(path, mean: Tensor, var: Tensor, num: int, seed: int) -> None:
    """Store (mean, var) as float64 atomically; a read-only place only loses the cache."""
    from safetensors.torch import save_file

    from brgm_pyro.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file({"mean": mean.detach().cpu().double().contiguous(), "var": var.detach().cpu().double().contiguous()},
                      tmp, metadata={"num_prior_draws": str(num), "seed": str(seed),
                                     "what": "per-pixel mean and variance of G(w), w ~ prior (brgm_pyro.reliance)"})
    except OSError:
        pass


def reliance_from_draws(post_images: Tensor, prior_var: Tensor, num_prior: int = 0,
                        prior_ess: float = float("nan")) -> RelianceMap:
    """The map from posterior image draws (S, B, C, H, W) and the prior pixel variance (C, H, W)."""
    if post_images is None or post_images.ndim != 5 or post_images.shape[0] < 2:
        raise BRGMError("the reliance map needs at least 2 posterior draws (use --method vi or an MCMC method, "
                        "with --num-samples >= 2)")
    pv = post_images.double().var(0)
    prior_var = prior_var.to(pv)
    tiny = torch.finfo(torch.float64).tiny
    r = torch.where(prior_var > tiny, pv / prior_var.clamp_min(tiny), torch.zeros_like(pv))  # a fixed pixel: no prior
    return RelianceMap(r.float(), pv.float(), prior_var.float(), int(post_images.shape[0]), int(num_prior),
                       float(prior_ess))


def prior_reliance(model, result, num_prior: int = DEFAULT_PRIOR_DRAWS, seed: int = 0, cache: bool = False,
                   progress: bool = False) -> RelianceMap:
    """The prior-reliance map of an :class:`~brgm_pyro.inference.InferenceResult` with draws.

    Args:
        model: the BRGMModel the result came from. result: its ``samples`` (S, B, C, H, W) are used.
        num_prior: prior draws for the denominator (512: ~6 % relative error of a variance).
        seed: seed of the prior draws.
        cache: take the prior variance from the per-generator cache (made the first time; then the
            map costs no generator pass: the posterior draws are already rendered).
        progress: a bar while the prior draws are rendered (the first time).
    """
    if result.samples is None or result.samples.ndim != 5 or result.samples.shape[0] < 2:
        return reliance_from_draws(result.samples, torch.zeros(()))  # its one-line error, before any render
    _, var, ess = prior_image_moments(model, num_prior, seed, cache=cache, progress=progress)
    return reliance_from_draws(result.samples, var, num_prior, ess)


def add_to_inference_data(idata, rel: RelianceMap):
    """Add the map to an ArviZ InferenceData as the group ``reliance`` (written to NetCDF with it)."""
    from brgm_pyro import azcompat

    return azcompat.add_group(idata, "reliance", rel.to_dataset())  # ArviZ 0.23 and 1.x


def reliance_image(rel: RelianceMap, cmap: str = "magma") -> np.ndarray:
    """An RGB picture (H, B W + B - 1, 3) in [0, 1] of the channel-mean map of each image, side by
    side (1-pixel white gaps); dark = decided by the data (r = 0), bright = by the prior (r = 1)."""
    from matplotlib import colormaps

    maps = rel.channel_mean().detach().cpu().numpy()
    cm = colormaps[cmap]
    tiles = [cm(m)[..., :3] for m in maps]
    gap = np.ones((maps.shape[1], 1, 3))
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [gap, t]
    return np.concatenate(out, axis=1)


def save_reliance_png(rel: RelianceMap, path: str | os.PathLike):
    """Write :func:`reliance_image` to ``path`` atomically; returns the path."""
    from brgm_pyro.io import save_png

    return save_png(path, reliance_image(rel))


__all__ = ["RelianceMap", "prior_reliance", "reliance_from_draws", "prior_image_moments", "sample_prior_latents",
           "add_to_inference_data", "reliance_image", "save_reliance_png", "DEFAULT_PRIOR_DRAWS"]
