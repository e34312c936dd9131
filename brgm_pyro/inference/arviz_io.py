r"""ArviZ ``InferenceData`` from any inference result (MAP, VI, SGLD, pSGLD, MALA, HMC, NUTS).

Built with ``from_dict`` (through :mod:`brgm_pyro.azcompat`: ArviZ 0.23's InferenceData or ArviZ
1.x's DataTree, the same NetCDF either way) from arrays we compute ourselves (``az.from_pyro`` is slow at
10^4 latent dimensions and gets per-pixel log-likelihoods wrong; see docs/mcmc.md). Groups:

* ``posterior``: every latent site of the model: ``w`` (chain, draw, image, layer, w_dim), each
  learned scalar (``sigma_pixel`` (chain, draw), or (chain, draw, image) per image;
  ``kernel_width``, ...), and the reconstruction ``x`` = G(w) (chain, draw, image, channel, row,
  col), a deterministic of ``w``. ``attrs["latent_sites"]`` lists the sites.
* ``sample_stats``: ``lp`` = log p(latents, y) (up to a constant), the per-term log densities
  ``log_prior``, ``log_colinearity``, ``log_sigma_pixel_prior``, ``log_lik_pixel``,
  ``log_lik_perceptual`` (one per model term present; summed over images), and for samplers ``step_size``, ``acceptance_rate``,
  ``diverging``, ``n_steps`` (gradient evaluations per draw), ``tree_depth`` (NUTS).
* ``log_likelihood``: ``y`` (chain, draw, image, pixel) per *observed* pixel (in-painting: the
  missing pixels are dropped when all images share the mask, NaN otherwise) and ``y_percept``
  (chain, draw, image, feature) when there is a perceptual term.
* ``observed_data``: ``y`` (image, channel, obs_row, obs_col).
* ``constant_data``: ``mask`` (in-painting), ``factor`` (super-resolution), ``sigma_pixel``,
  ``sigma_percept``, ``kappa``, ``temperature``.
* ``optimization`` (MAP, VI): the loss-term histories (step).

MAP is one chain with one draw; VI is one chain of independent draws; MCMC keeps its chains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.density import log_density_terms, plate_layout, scalar_params

STAT_NAMES = {"accept_prob": "acceptance_rate", "step_size": "step_size", "diverging": "diverging",
              "tree_depth": "tree_depth", "n_steps": "n_steps", "log_weight": "log_weight"}
SMC_STAGE_STATS = ("beta", "log_increment", "ess", "resampled", "acceptance", "step_size", "log_evidence_var")


def _np(x: Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _chains(result) -> tuple[dict[str, Tensor], int, int]:
    """site -> (C S, ...) draws and (C, S) for any result (a point estimate is one draw)."""
    if result.draws is None:
        return {k: v.detach()[None] for k, v in result.latents.items()}, 1, 1
    draws = {k: v.detach() for k, v in result.draws.items()}
    n = next(iter(draws.values())).shape[0]
    C = int(result.extra.get("num_chains", 1))
    if n % C:
        raise BRGMError(f"{n} draws do not split into {C} chains")
    return draws, C, n // C


@torch.no_grad()
def draw_quantities(model, y: Tensor, draws, images: Optional[Tensor] = None,
                    chunk: int = 32) -> dict[str, np.ndarray]:
    """Per-draw quantities for ``draws`` (site -> (S, ...) natural layout; or w (S, B, L, d) alone).

    Returns numpy arrays: ``x`` (S, B, C, H, W); ``ll_<site>`` (S, B, N) per element; ``term_<name>``
    (S,) per-term log densities (:func:`~brgm_pyro.models.density.log_density_terms`: prior
    terms, hyperpriors of the scalar latents, tempered likelihood terms), summed over images.
    """
    draws = draws if isinstance(draws, dict) else {model.image_site: draws}
    n = draws[model.image_site].shape[0]
    out: dict[str, list] = {}
    for i in range(0, n, chunk):
        part = plate_layout(model, {k: v[i:i + chunk].to(y.device) for k, v in draws.items()}, 1)
        w = part[model.image_site]
        gw = model.render(w) if images is None or model.discrepancy is not None else None
        x = gw if images is None else images[i:i + chunk].to(y.device)
        params = scalar_params(model, part)
        # the likelihood is of f(G(w)) (a discrepancy e is integrated out in it, not drawn into it)
        pred = model.corruption(x if gw is None else gw, params)
        out.setdefault("x", []).append(_np(x.float()))
        for term, v in log_density_terms(model, y, part).items():
            out.setdefault(f"term_{term}", []).append(_np(v))
        for lik in model.likelihoods:
            out.setdefault(f"ll_{lik.site}", []).append(_np(lik.pointwise_log_prob(pred, y, model.mask, params).float()))
    return {k: np.concatenate(v) for k, v in out.items()}


def _posterior_dims(model) -> dict[str, list[str]]:
    """ArviZ dims of every latent site: per-image sites start with ``image``."""
    out = {}
    for name, site in model.latent_sites().items():
        extra = list(site.dims) if site.dims else [f"{name}_dim_{i}" for i in range(len(site.event_shape))]
        out[name] = (["image"] if site.per_image else []) + extra
    return out


def _constant_data(model) -> dict[str, np.ndarray]:
    const: dict[str, np.ndarray] = {}
    if model.mask is not None:
        m = _np(model.mask).astype(np.int8)
        const["mask"] = m
    cfg = model.corruption.config()
    if "factor" in cfg:
        const["factor"] = np.asarray(cfg["factor"])
    for lik in model.likelihoods:
        for k, v in lik.config().items():
            if isinstance(v, (int, float)):
                const[k] = np.asarray(v)
    for f in getattr(model.prior, "factors", []):
        for k, v in f.config().items():
            if isinstance(v, (int, float)):
                const[k] = np.asarray(v)
    const["temperature"] = np.asarray(model.temperature)
    return const


def _jsonable(obj):
    try:
        return json.dumps(obj, default=lambda o: repr(o) if not isinstance(o, (np.generic,)) else o.item())
    except (TypeError, ValueError):
        return repr(obj)


def _sample_stats(result, model, q: dict, cs) -> dict[str, np.ndarray]:
    """sample_stats: each log-density term (log_lik_* / log_*) per draw, their sum ``lp``, and the
    sampler's own statistics (ArviZ names); ``cs`` reshapes (C S, ...) to (C, S, ...)."""
    sample_stats: dict[str, np.ndarray] = {}
    lp = 0.0
    for k, v in q.items():
        if k.startswith("term_"):
            name = k[5:]
            label = f"log_lik_{name}" if name in model.likelihood_terms() else f"log_{name}"
            sample_stats[label] = cs(v)
            lp = lp + sample_stats[label]
    sample_stats["lp"] = lp
    for k, v in (result.extra.get("sample_stats") or {}).items():
        if k in STAT_NAMES:
            a = np.asarray(v)
            sample_stats[STAT_NAMES[k]] = a.astype(bool) if k == "diverging" else a
    return sample_stats


def _log_likelihood(model, q: dict, cs, coords: dict, dims: dict) -> dict[str, np.ndarray]:
    """log_likelihood per likelihood site (pixels: the observed ones only, their indices in
    ``coords["pixel"]``); fills ``coords`` and ``dims``."""
    log_lik: dict[str, np.ndarray] = {}
    for lik in model.likelihoods:
        ll = q[f"ll_{lik.site}"]
        if ll.ndim == 2:
            ll = ll[:, None]
        if lik.site == "y":
            keep = ~np.all(np.isnan(ll), axis=(0, 1))
            ll = ll[..., keep]
            coords["pixel"] = np.flatnonzero(keep)
            dims["y"] = ["image", "pixel"]
        else:
            dims[lik.site] = ["image", "feature"]
        log_lik[lik.site] = cs(ll)
    return log_lik


def to_inference_data(result, model, y: Tensor):
    """ArviZ InferenceData of ``result`` (an :class:`InferenceResult`) for ``model`` and ``y``.

    Args:
        result: from any registered method; MCMC results carry ``extra['num_chains']`` and
            ``extra['sample_stats']`` ({name: (C, S)}).
        model: the :class:`~brgm_pyro.models.brgm.BRGMModel` the result was computed with.
        y: (B, C, h, w) observation.
    """
    from brgm_pyro import azcompat

    draws, C, S = _chains(result)
    imgs = result.samples if (result.samples is not None and result.draws is not None) else None
    q = draw_quantities(model, y, draws, imgs)
    B = y.shape[0]

    def cs(a: np.ndarray) -> np.ndarray:  # (C S, ...) -> (C, S, ...)
        return a.reshape(C, S, *a.shape[1:])

    posterior = {k: cs(_np(v.float())) for k, v in draws.items()}
    posterior["x"] = cs(q["x"])
    dims = {**_posterior_dims(model), "x": ["image", "channel", "row", "col"]}
    coords: dict[str, np.ndarray] = {"image": np.arange(B)}

    sample_stats = _sample_stats(result, model, q, cs)
    log_lik = _log_likelihood(model, q, cs, coords, dims)
    const = _constant_data(model)
    attrs = {"method": result.method, "inference_library": "brgm_pyro",
             "num_chains": C, "num_draws": S,
             "model_config": _jsonable(model.config()), "timing": _jsonable(result.timing),
             "stopped": str(result.stopped)}
    attrs["latent_sites"] = _jsonable(list(model.latent_sites()))
    attrs["image_site"] = model.image_site
    for k in ("grad_evals", "divergences", "warmup", "thin", "init", "seed", "kernel", "log_evidence_runs",
              "kernel_settings"):
        if k in result.extra:
            attrs[k] = _jsonable(result.extra[k])
    for k in ("log_evidence", "log_evidence_se", "log_evidence_se_genealogy"):
        if k in result.extra:
            attrs[k] = float("nan") if result.extra[k] is None else float(result.extra[k])
    idata = azcompat.from_dict({"posterior": posterior, "sample_stats": sample_stats, "log_likelihood": log_lik},
                               coords=coords, dims=dims)
    azcompat.update_attrs(idata, attrs)
    import xarray as xr

    if "stages" in result.extra:
        _add_stage_stats(idata, result.extra["stages"])
    cvars = {k: ((tuple(f"mask_dim_{i}" for i in range(v.ndim)) if k == "mask" else ()), v)
             for k, v in const.items()}
    azcompat.add_group(idata, "constant_data", xr.Dataset(cvars, attrs=dict(attrs)))

    obs = xr.Dataset({"y": (("image", "obs_channel", "obs_row", "obs_col"), _np(y.float()))},
                     coords={"image": np.arange(B)}, attrs=dict(attrs))
    azcompat.add_group(idata, "observed_data", obs)
    if result.history and result.method in ("map", "vi"):

        n = max(len(v) for v in result.history.values())
        hist = {k: ("step", np.pad(np.asarray(v, dtype=float), (0, n - len(v)), constant_values=np.nan))
                for k, v in result.history.items()}
        azcompat.add_group(idata, "optimization", xr.Dataset(hist, coords={"step": np.arange(n)}))
    return idata


def _add_stage_stats(idata, stages: list[dict]) -> None:
    """SMC: each run's (= chain's) stage table into ``sample_stats`` as ``smc_<name>`` (chain, smc_stage),
    padded with NaN (False for ``resampled``) where a run took fewer stages."""
    from brgm_pyro import azcompat

    K = max(len(s["beta"]) for s in stages)
    ds = azcompat.group(idata, "sample_stats")
    new = {}
    for name in SMC_STAGE_STATS:
        fill = False if name == "resampled" else np.nan
        a = np.full((len(stages), K), fill, dtype=bool if name == "resampled" else float)
        for c, s in enumerate(stages):
            a[c, :len(s[name])] = s[name]
        new[f"smc_{name}"] = (("chain", "smc_stage"), a)
    azcompat.replace_group(idata, "sample_stats", ds.assign(new).assign_coords(smc_stage=np.arange(K)))


def write_inference_data(idata, path: str | os.PathLike, compress: bool = False) -> Path:
    """Write ``idata`` to NetCDF (h5netcdf) atomically (:func:`brgm_pyro.io.atomic_path`).

    ``compress=False`` by default: zlib barely shrinks float posterior draws and costs several
    times the write time at 10^4 dimensions (see benchmarks/bench_arviz_10k.py).
    """
    from brgm_pyro import azcompat
    from brgm_pyro.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        azcompat.to_netcdf(idata, tmp, compress=compress)
    return path


def read_inference_data(path: str | os.PathLike):
    """Load a posterior.nc (written by either ArviZ line, or by an earlier release); BRGMError when it
    is missing or not an InferenceData file."""
    from brgm_pyro import azcompat

    p = Path(path)
    if not p.is_file():
        raise BRGMError(f"no such file: {p}")
    try:
        return azcompat.from_netcdf(p)
    except Exception as e:  # noqa: BLE001 - any read failure is a bad input file
        raise BRGMError(f"cannot read {p} as ArviZ InferenceData ({type(e).__name__}: {e})") from None


__all__ = ["to_inference_data", "write_inference_data", "read_inference_data", "draw_quantities"]
