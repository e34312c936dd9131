r"""Convergence diagnostics for image posteriors: scalar summaries that mean something.

R-hat and ESS of 10^4 individual latent coordinates are slow to compute and unreadable; what a
user needs is whether the chains agree on quantities that describe the reconstruction. For each
image b we summarise the draws by

* ``lp``: log p(w, y) (sample_stats), and ``log_lik``: :math:`\sum_k \log p(y_k \mid w)` over the
  observed pixels (log_likelihood group);
* ``mean_intensity``: the mean of the reconstruction x = G(w) over channels and pixels;
* every small latent (a learned noise level, a kernel width: at most 16 numbers per image)
  directly;
* ``pc1 .. pcK``: for the rendered latent w (and any other large one, ``<name>_pc1..``), the projection :math:`\langle w - \bar w, v_k\rangle` of the latent on the K
  leading principal directions :math:`v_k` of the within-chain covariance (each chain centred on
  its own mean, so that the directions are the posterior's and not the offset between chain
  means, which the pooled draws' PCA would pick when there are few draws in many dimensions and
  which would bias R-hat upwards);

and report split rank-normalised R-hat, bulk and tail ESS and the MCSE of the mean (Vehtari et
al. 2021, via ArviZ 0.23 or 1.x: :mod:`brgm_pyro.azcompat`). Optionally (``all_coords``) the worst R-hat and smallest bulk ESS over every
coordinate of w. Trace and rank plots of the summaries go to PNG files.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np

from brgm_pyro.errors import BRGMError


def _leading_directions(X, k: int, oversample: int = 6, niter: int = 4, seed: int = 0):
    """(D, k) leading right singular vectors of X (N, D): randomised range finder with power
    iterations (Halko et al. 2011), float32 on the CPU; D = 10^4, N = 2000 takes ~0.2 s."""
    import torch

    A = X.float().contiguous()
    q = min(k + oversample, *A.shape)
    g = torch.Generator(device="cpu").manual_seed(seed)
    Q = torch.linalg.qr(A @ torch.randn(A.shape[1], q, generator=g))[0]
    for _ in range(niter):
        Q = torch.linalg.qr(A @ (Q.T @ A).T)[0]
    _, _, Vh = torch.linalg.svd(Q.T @ A, full_matrices=False)
    return Vh[:k].T.double()


SMALL_LATENT = 16  # latents with at most this many numbers per image are summarised directly


def _pcs(w: np.ndarray, k: int) -> np.ndarray:
    """(C, S, k) projections of draws w (C, S, D) on the k leading within-chain directions."""
    import torch

    C, S = w.shape[:2]
    per_chain = torch.from_numpy(w.reshape(C, S, -1))
    # directions from the within-chain covariance (each chain centred on its own mean): the
    # posterior's leading directions, not the offset between chain means, which PCA of the
    # pooled draws picks whenever draws are few and D is large (and R-hat along it is biased up)
    V = _leading_directions((per_chain - per_chain.mean(1, keepdim=True)).reshape(C * S, -1), k)
    flat = per_chain.reshape(C * S, -1)
    proj = ((flat - flat.mean(0)) @ V).numpy()
    # fix each direction's sign so that it is reproducible (largest |loading| positive)
    Vn = V[:, :k].numpy()
    sgn = np.sign(Vn[np.abs(Vn).argmax(0), np.arange(k)])
    return (proj * sgn).reshape(C, S, k)


def _latent_summaries(post, name: str, k: int, out: dict) -> None:
    """Summaries of one posterior latent: itself if small (and not the rendered w), else its k
    leading within-chain PCs (per image when it has an image dim)."""
    v = post[name]
    C, S = post.sizes["chain"], post.sizes["draw"]
    per_image = "image" in v.dims
    v = v.transpose("chain", "draw", *(["image"] if per_image else []), ...)
    a = np.asarray(v.values, dtype=np.float64)
    B = a.shape[2] if per_image else 1
    a = a.reshape(C, S, B, -1) if per_image else a.reshape(C, S, 1, -1)
    D = a.shape[-1]
    dims = ("chain", "draw", "image") if per_image else ("chain", "draw")
    pick = (lambda x: x) if per_image else (lambda x: x[..., 0])
    image_site = name == post.attrs.get("image_site", "w")
    if D <= SMALL_LATENT and not image_site:
        for j in range(D):
            out[name if D == 1 else f"{name}_{j}"] = (dims, pick(a[..., j]))
        return
    prefix = "pc" if image_site else f"{name}_pc"
    if k:
        pcs = np.stack([_pcs(a[:, :, b], k) for b in range(B)], axis=2)  # (C, S, B, k)
        for j in range(k):
            out[f"{prefix}{j + 1}"] = (dims, pick(pcs[..., j]))


def scalar_summaries(idata, num_components: int = 3):
    """xarray Dataset of (chain, draw[, image]) scalar summaries (see module doc)."""
    import xarray as xr

    from brgm_pyro import azcompat

    if not azcompat.has_group(idata, "posterior"):
        raise BRGMError("the file has no posterior group; write it with brgm reconstruct --method sgld|nuts|...")
    post = azcompat.group(idata, "posterior")
    latents = [v for v in post.data_vars if v != "x"]
    if not latents:
        raise BRGMError("the file has no posterior latents; write it with brgm reconstruct --method sgld|nuts|...")
    C, S = post.sizes["chain"], post.sizes["draw"]
    if C * S < 4:
        raise BRGMError(f"the posterior holds {C * S} draw(s) (a point estimate?): nothing to diagnose")
    out: dict[str, tuple] = {}
    stats = azcompat.group(idata, "sample_stats") if azcompat.has_group(idata, "sample_stats") else {}
    if "lp" in stats:
        out["lp"] = (("chain", "draw"), np.asarray(stats["lp"].values, dtype=float))
    loglik = azcompat.group(idata, "log_likelihood") if azcompat.has_group(idata, "log_likelihood") else {}
    if "y" in loglik:
        ll = np.asarray(loglik["y"].values, dtype=float)  # (C, S, B, N)
        out["log_lik"] = (("chain", "draw", "image"), np.nansum(ll, axis=-1))
    if "x" in post:
        x = np.asarray(post["x"].values, dtype=float)
        out["mean_intensity"] = (("chain", "draw", "image"), x.reshape(C, S, x.shape[2], -1).mean(-1))
    k = max(0, min(int(num_components), C * S - 1))
    for name in latents:
        _latent_summaries(post, name, k, out)
    coords = {"chain": np.arange(C), "draw": np.arange(S)}
    if "image" in post.dims:
        coords["image"] = np.arange(post.sizes["image"])
    return xr.Dataset(out, coords=coords)


def diagnose(idata, num_components: int = 3, all_coords: bool = False, summaries=None) -> dict:
    """R-hat, bulk/tail ESS, MCSE of the scalar summaries, sampler statistics and timing.

    Returns a JSON-serialisable dict: ``rows`` (one per summary and image: name, mean, sd, r_hat,
    ess_bulk, ess_tail, mcse_mean), ``max_r_hat``, ``min_ess_bulk``, ``num_chains``,
    ``num_draws``, ``divergences``, ``acceptance_rate``, ``method``, ``seconds`` and, with
    ``all_coords``, ``w_max_r_hat``/``w_min_ess_bulk`` over every latent coordinate.
    ``summaries``: the Dataset of :func:`scalar_summaries` if already computed.
    """
    from brgm_pyro import azcompat as az

    t0 = time.perf_counter()
    ds = scalar_summaries(idata, num_components) if summaries is None else summaries
    C, S = ds.sizes["chain"], ds.sizes["draw"]
    rhat = az.rhat(ds)
    ess_b = az.ess(ds, method="bulk")
    ess_t = az.ess(ds, method="tail")  # 5 % / 95 % quantiles on both ArviZ lines
    mcse = az.mcse(ds, method="mean")
    rows = []
    for name in ds.data_vars:
        v = ds[name]
        images = v["image"].values if "image" in v.dims else [None]
        for b in images:
            sel = (lambda a: a.sel(image=b)) if b is not None else (lambda a: a)
            vals = np.asarray(sel(v).values, dtype=float)
            label = name if b is None or ds.sizes.get("image", 1) == 1 else f"{name}[{int(b)}]"
            rows.append({"name": label, "mean": float(vals.mean()), "sd": float(vals.std(ddof=1)),
                         "r_hat": float(sel(rhat[name]).values), "ess_bulk": float(sel(ess_b[name]).values),
                         "ess_tail": float(sel(ess_t[name]).values), "mcse_mean": float(sel(mcse[name]).values)})
    fin = [r for r in rows if math.isfinite(r["r_hat"])]
    post = az.group(idata, "posterior")
    rep = {"method": str(post.attrs.get("method", "?")), "num_chains": int(C), "num_draws": int(S),
           "rows": rows,
           "max_r_hat": max((r["r_hat"] for r in fin), default=float("nan")),
           "min_ess_bulk": min((r["ess_bulk"] for r in rows), default=float("nan")),
           "min_ess_tail": min((r["ess_tail"] for r in rows), default=float("nan"))}
    if az.has_group(idata, "sample_stats"):
        st = az.group(idata, "sample_stats")
        if "diverging" in st:
            rep["divergences"] = int(np.asarray(st["diverging"].values).sum())
        if "acceptance_rate" in st:
            rep["acceptance_rate"] = float(np.nanmean(st["acceptance_rate"].values))
        if "step_size" in st:
            rep["step_size"] = float(np.nanmedian(st["step_size"].values))
        if "tree_depth" in st:
            rep["tree_depth"] = float(np.nanmean(st["tree_depth"].values))
            cap = _max_tree_depth(post.attrs)
            if cap is not None:
                rep["max_tree_depth"] = cap
                rep["tree_depth_saturated"] = float(np.mean(np.asarray(st["tree_depth"].values) >= cap))
    if all_coords:  # every coordinate of every latent site
        lat = post[[v for v in post.data_vars if v != "x"]]
        rh, es = az.rhat(lat), az.ess(lat, method="bulk")
        rep["w_max_r_hat"] = max(float(rh[v].max()) for v in rh.data_vars)
        rep["w_min_ess_bulk"] = min(float(es[v].min()) for v in es.data_vars)
    rep["warnings"] = warnings_of(rep)
    rep["seconds"] = time.perf_counter() - t0
    return rep


def _max_tree_depth(attrs) -> Optional[int]:
    """NUTS's tree-depth cap as the run recorded it (``attrs["kernel"]``, JSON), or None."""
    try:
        kernel = json.loads(attrs["kernel"]) if isinstance(attrs.get("kernel"), str) else attrs.get("kernel")
        return int(kernel["max_tree_depth"]) if kernel and kernel.get("max_tree_depth") is not None else None
    except (KeyError, TypeError, ValueError):
        return None


# Thresholds of the checks below: Vehtari et al. (2021) for R-hat and ESS (100 per chain, at
# least 400 in all, i.e. 4 chains), Stan's for divergences and tree-depth saturation.
R_HAT_MAX, ESS_PER_CHAIN, ESS_MIN = 1.01, 100, 400


def warnings_of(rep: dict) -> list[str]:
    """One line per failed check of a :func:`diagnose` report, saying what it means and what to do."""
    out = []
    C = rep["num_chains"]
    if C > 1 and rep["max_r_hat"] > R_HAT_MAX:
        worst = max((r for r in rep["rows"] if math.isfinite(r["r_hat"])), key=lambda r: r["r_hat"])
        out.append(f"R-hat {rep['max_r_hat']:.3f} > {R_HAT_MAX} ({worst['name']}): the chains disagree, so these "
                   "draws are not yet from one posterior; run longer, or see docs/mcmc.md for this model")
    need = max(ESS_MIN, ESS_PER_CHAIN * C)
    low = min(rep["min_ess_bulk"], rep["min_ess_tail"])
    if math.isfinite(low) and low < need:
        out.append(f"effective sample size {low:.0f} < {need}: means and intervals carry Monte Carlo error "
                   "(see mcse_mean); draw more")
    if rep.get("divergences"):
        out.append(f"{rep['divergences']} divergent transitions: the step size met curvature it cannot follow, "
                   "and the draws may be biased there; raise target_accept_prob or reparameterise")
    sat = rep.get("tree_depth_saturated")
    if sat is not None and sat > 0.1:
        out.append(f"{100 * sat:.0f} % of draws hit the maximum tree depth {rep['max_tree_depth']}: trajectories "
                   "were cut before a U-turn, so NUTS moved like a random walk; raise --max-tree-depth (each step "
                   "doubles the cost per draw) and compare ESS per gradient")
    if C < 2:
        out.append("one chain: R-hat is split-chain only; run several chains to check mixing")
    return out


def _simple_trace_figure(ds, plt):
    """Fallback figure: per summary, a histogram of all draws (left) and each chain's trace (right)."""
    names = []
    for name in ds.data_vars:
        extra = [d for d in ds[name].dims if d not in ("chain", "draw")]
        arr = ds[name].transpose("chain", "draw", *extra).values
        arr = arr.reshape(arr.shape[0], arr.shape[1], -1)
        names += [(f"{name}" + (f" [{k}]" if arr.shape[2] > 1 else ""), arr[:, :, k]) for k in range(arr.shape[2])]
    fig, axes = plt.subplots(len(names), 2, figsize=(10, 1.8 * len(names)), squeeze=False)
    for row, (label, v) in zip(axes, names):
        finite = v[np.isfinite(v)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            row[0].hist(finite, bins=max(1, min(30, finite.size // 2)) if hi > lo else 1)
        for c in range(v.shape[0]):
            row[1].plot(v[c], lw=0.8)
        row[0].set_title(label, fontsize=9)
        row[1].set_title(label, fontsize=9)
    return fig


def write_plots(idata, out_dir, num_components: int = 3, max_images: int = 4, summaries=None) -> list[Path]:
    """Trace and rank plots of the scalar summaries: ``trace.png`` and ``rank.png`` in ``out_dir``.

    ``summaries``: the Dataset of :func:`scalar_summaries` if already computed (else computed here).
    """
    from brgm_pyro import azcompat
    from brgm_pyro.io import atomic_path

    ds = scalar_summaries(idata, num_components) if summaries is None else summaries
    if ds.sizes.get("image", 1) > max_images:
        ds = ds.isel(image=slice(0, max_images))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    method = azcompat.group(idata, "posterior").attrs.get("method", "?")
    for kind in ("trace", "rank"):
        p = out_dir / f"{kind}.png"
        with atomic_path(p) as tmp:
            # ArviZ's KDE / rank histograms fail on a (nearly) constant chain, e.g. a stuck sampler or
            # a handful of draws: then plain traces and histograms are drawn instead
            azcompat.plot_to_png(kind, ds, Path(tmp), f"{kind} plots of scalar summaries ({method})",
                                 _simple_trace_figure)
        paths.append(p)
    return paths


def format_report(rep: dict) -> list[str]:
    """Plain-text lines of a :func:`diagnose` report."""
    lines = [f"method {rep['method']}: {rep['num_chains']} chain(s) x {rep['num_draws']} draws"]
    extras = [f"{k} {rep[k]:.3g}" if isinstance(rep[k], float) else f"{k} {rep[k]}"
              for k in ("divergences", "acceptance_rate", "step_size", "tree_depth") if k in rep]
    if extras:
        lines.append(", ".join(extras))
    lines.append(f"{'quantity':<20}{'mean':>12}{'sd':>11}{'r_hat':>8}{'ess_bulk':>10}{'ess_tail':>10}{'mcse_mean':>11}")
    for r in rep["rows"]:
        lines.append(f"{r['name']:<20}{r['mean']:>12.4g}{r['sd']:>11.3g}{r['r_hat']:>8.3f}{r['ess_bulk']:>10.0f}"
                     f"{r['ess_tail']:>10.0f}{r['mcse_mean']:>11.3g}")
    lines.append(f"max r_hat {rep['max_r_hat']:.3f}, min ess_bulk {rep['min_ess_bulk']:.0f}, "
                 f"min ess_tail {rep['min_ess_tail']:.0f}")
    if "w_max_r_hat" in rep:
        lines.append(f"over every latent coordinate: max r_hat {rep['w_max_r_hat']:.3f}, "
                     f"min ess_bulk {rep['w_min_ess_bulk']:.0f}")
    lines += [f"warning: {w}" for w in (rep["warnings"] if "warnings" in rep else warnings_of(rep))]
    return lines


__all__ = ["scalar_summaries", "diagnose", "write_plots", "format_report"]
