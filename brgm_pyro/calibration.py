"""Calibration of per-pixel credible intervals, and simulation-based calibration (SBC) ranks.

A central ``level`` interval of a pixel is the [(1 - level) / 2, (1 + level) / 2] quantile range
of its posterior draws; its *coverage* over a set of pixels is the fraction of true values inside.
For a calibrated posterior, coverage equals ``level`` in expectation over data drawn from the
model (and, for a well-specified model, over real data). SBC (Talts et al. 2018): for data
simulated from the prior predictive, the rank of the true parameter among L posterior draws is
uniform on {0, ..., L} whenever the sampler draws from the exact posterior.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

DEFAULT_LEVELS = (0.5, 0.9, 0.95)


def interval_bounds(draws: Tensor, level: float, weights: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Per-element central interval of ``draws`` (S, ...): (lower, upper), each (...).

    ``weights``: normalised importance weights of the draws, (S, ...) broadcastable against them
    (e.g. PSIS weights (S, B, 1, 1, 1) per image), or None for equal weights: the weighted quantiles
    of :func:`brgm_pyro.inference.psis.weighted_quantile` (equal weights give the same bounds)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = draws.detach().double()
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=d.dtype, device=d.device)
    if weights is not None:
        from brgm_pyro.inference.psis import weighted_quantile

        lo, hi = weighted_quantile(d, weights.detach().double().to(d.device), q)
        return lo, hi
    lo, hi = torch.quantile(d.reshape(d.shape[0], -1), q, dim=0)
    return lo.reshape(d.shape[1:]), hi.reshape(d.shape[1:])


def interval_coverage(draws: Tensor, truth: Tensor, level: float = 0.9,
                      region: Optional[Tensor] = None) -> float:
    """Fraction of ``truth`` elements inside their central ``level`` interval.

    Args:
        draws: (S, *shape) posterior (predictive) draws, e.g. (S, B, C, H, W) images.
        truth: (*shape) true values (the same units as the draws).
        region: optional bool tensor broadcastable to ``shape``: count only those elements
            (e.g. the missing pixels of an in-painting mask). NaN if it selects nothing.
    """
    lo, hi = interval_bounds(draws, level)
    t = truth.detach().double().to(lo.device)
    inside = (t >= lo) & (t <= hi)
    if region is None:
        return float(inside.double().mean())
    sel = region.to(inside.device).expand_as(inside)
    return float(inside[sel].double().mean()) if bool(sel.any()) else float("nan")


def interval_width(draws: Tensor, level: float = 0.9) -> Tensor:
    """Per-element width (upper - lower) of the central ``level`` interval: (*shape)."""
    lo, hi = interval_bounds(draws, level)
    return (hi - lo).to(draws.dtype)


def exact_sampler_coverage(level: float, num_draws: int) -> float:
    """What an exact sampler's central ``level`` interval from ``num_draws`` independent draws covers,
    in expectation: about ``level (S - 1) / (S + 1)``.

    The interpolated quantiles sit at order-statistic positions 1 + q (S - 1) (1-based), and a new
    exchangeable value falls between order statistics i < j with probability (j - i) / (S + 1):
    0.79 for a 90 % interval from 16 draws, 0.89 from 256. Exact for uniform draws (interpolation
    linear in the CDF); Gaussian draws cover a little more (0.806 at S = 16, 0.874 at S = 64). Compare measured coverage with this,
    not with ``level``, when draws are few.
    """
    S = int(num_draws)
    return float(level * (S - 1) / (S + 1)) if S > 1 else float("nan")


def coverage_report(draws: Tensor, truth: Tensor, missing: Optional[Tensor] = None,
                    levels: Sequence[float] = DEFAULT_LEVELS, weights: Optional[Tensor] = None) -> dict:
    """Coverage and mean interval width per level, for all pixels and, given ``missing`` (a bool
    tensor broadcastable to the image, True where the corruption hides the pixel), separately for
    observed and missing ones. ``weights``: importance weights of the draws (:func:`interval_bounds`). Keys: ``"all"``, ``"observed"``, ``"missing"`` (the last two only
    with a mask), each ``{"0.9": {"coverage": c, "width": w}, ...}``.
    """
    regions: dict[str, Optional[Tensor]] = {"all": None}
    if missing is not None:
        m = missing.to(torch.bool)
        regions.update({"observed": ~m, "missing": m})
    out: dict[str, dict] = {name: {} for name in regions}
    t = truth.detach().double()
    for lev in levels:
        lo, hi = interval_bounds(draws, lev, weights)  # once per level, shared by the regions
        inside = ((t.to(lo.device) >= lo) & (t.to(lo.device) <= hi)).double()
        width = hi - lo
        for name, reg in regions.items():
            sel = None if reg is None else reg.to(lo.device).expand_as(width)
            cov = inside if sel is None else inside[sel]
            wid = width if sel is None else width[sel]
            out[name][f"{lev:g}"] = {"coverage": float(cov.mean()) if cov.numel() else float("nan"),
                                     "width": float(wid.mean()) if wid.numel() else float("nan")}
    return out


def sbc_ranks(draws: Tensor, truth: Tensor) -> Tensor:
    """SBC rank of each true value among its draws: #(draws < truth), (S, ...) and (...) -> (...) int.

    Ties (a discrete draw equal to the truth) are broken at random, as Talts et al. prescribe.
    """
    d, t = draws.detach(), truth.detach().to(draws.device)
    below = (d < t).sum(0)
    ties = (d == t).sum(0)
    if bool((ties > 0).any()):
        below = below + (torch.rand(ties.shape, device=d.device) * (ties + 1)).floor().long()
    return below


def sbc_uniformity(ranks: np.ndarray, num_draws: int, bins: int = 10) -> dict:
    """Chi-square test that ``ranks`` (any shape; values 0..num_draws) are uniform on
    {0, ..., num_draws}, in ``bins`` equal-width bins of the rank range.

    Returns ``{"chi2", "dof", "p_value", "counts", "expected"}``. For ``num_draws + 1`` not a
    multiple of ``bins`` the expected counts follow the number of rank values in each bin; with
    fewer rank values than ``bins`` there is one bin per value (else some bins could hold no value).
    """
    from scipy import stats

    bins = min(int(bins), int(num_draws) + 1)
    r = np.asarray(ranks).reshape(-1)
    edges = np.linspace(0, num_draws + 1, bins + 1)
    counts, _ = np.histogram(r, bins=edges)
    values = np.arange(num_draws + 1)
    per_bin, _ = np.histogram(values, bins=edges)
    expected = r.size * per_bin / per_bin.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    dof = bins - 1
    return {"chi2": chi2, "dof": dof, "p_value": float(stats.chi2.sf(chi2, dof)),
            "counts": counts.tolist(), "expected": expected.tolist()}


__all__ = ["DEFAULT_LEVELS", "exact_sampler_coverage", "interval_bounds", "interval_coverage", "interval_width", "coverage_report",
           "sbc_ranks", "sbc_uniformity"]
