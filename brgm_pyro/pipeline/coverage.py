"""Interval coverage of the true clean image by the posterior draws, for metrics.json and the console.

For each central interval (50, 90, 95 %) of every pixel's posterior draws: the fraction of true pixel
values (each channel) inside it and its mean width, over all pixels and, for a corruption whose mask
lives on the image grid (in-painting, or a composition ending in in-painting at full resolution),
separately over observed and missing pixels. Numbers come from :mod:`brgm_pyro.calibration`;
images are in [0, 1] (clipped, as the PNGs and metrics.json's other scores), so widths are in
[0, 1] image units. Only methods with at least two posterior draws get a report (a MAP has none).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

LEVELS = (0.5, 0.9, 0.95)  # brgm_pyro.calibration.DEFAULT_LEVELS (not imported here: it imports torch)

COVERAGE_WHAT = ("fraction of true clean pixel values (every channel) inside each pixel's central posterior "
                 "interval (quantiles of the draws), and the interval's mean width; images in [0, 1]")
OFF_GRID = ("the mask is on the observation grid ({obs}), not the image grid ({img}): observed and missing "
            "pixels of the image are not separated; 'all' only")


def missing_pixels(corruption, image_shape: tuple, batch: int):
    """``(missing, note)``: a bool tensor (B, 1|C, H, W), True where the corruption hides the pixel,
    or None (no mask, or a mask on another grid than the image's; then ``note`` says why, else None).

    ``corruption.mask`` is True where observed and broadcastable to the observation; it is used when
    its grid is the image's (C, H, W) = ``image_shape``, e.g. in-painting or deblurring + in-painting.
    """
    import torch

    m = getattr(corruption, "mask", None)
    if m is None:
        return None, None
    m = torch.as_tensor(m).to(torch.bool)
    while m.dim() < 4:
        m = m.unsqueeze(0)
    C, H, W = (int(s) for s in image_shape)
    if tuple(m.shape[-2:]) != (H, W) or m.shape[-3] not in (1, C) or m.shape[0] not in (1, batch):
        obs = "x".join(str(int(s)) for s in m.shape[-2:])
        return None, OFF_GRID.format(obs=obs, img=f"{H}x{W}")
    return ~m.expand(batch, m.shape[-3], H, W).cpu(), None


def image_coverage(samples, truth: np.ndarray, corruption, b: int, levels=LEVELS, weights=None) -> Optional[dict]:
    """Coverage of clean image ``b`` by its draws; None with fewer than 2 draws.

    Args:
        samples: (S, B, C, H, W) posterior draws of the images in [-1, 1] (an InferenceResult's ``samples``).
        truth: (B, H, W, C) clean images in [0, 1].
        corruption: the observation's corruption (its ``mask``, True = observed, gives the regions).
        b: the image.
        weights: (S, B) normalised importance weights of the draws (PSIS), or None (equal weights).
    Returns:
        :func:`brgm_pyro.calibration.coverage_report`'s ``{region: {"0.9": {"coverage", "width"}, ...}}``
        (regions ``all``, and ``observed``/``missing`` for a mask on the image grid) plus ``counted``:
        the number of pixel values (pixels x channels) in each region, and ``note`` if the mask is not
        on the image grid.
    """
    import torch

    from brgm_pyro.calibration import coverage_report

    if samples is None or samples.shape[0] < 2:
        return None
    draws = ((samples[:, b:b + 1].detach().cpu().double() + 1.0) / 2.0).clamp(0.0, 1.0)  # as the PNGs
    t = torch.from_numpy(np.ascontiguousarray(np.asarray(truth[b:b + 1], dtype=np.float64).transpose(0, 3, 1, 2)))
    _, _, C, H, W = draws.shape
    missing, note = missing_pixels(corruption, (C, H, W), int(samples.shape[1]))
    mb = None if missing is None else missing[b:b + 1]
    wb = None if weights is None else weights[:, b:b + 1].detach().cpu().double().reshape(-1, 1, 1, 1, 1)
    out = coverage_report(draws, t, mb, levels, weights=wb)
    n_miss = 0 if mb is None else int(mb.expand(1, C, H, W).sum())
    out["counted"] = {"all": C * H * W, **({"observed": C * H * W - n_miss, "missing": n_miss} if mb is not None
                                           else {})}
    if note:
        out["note"] = note
    return out


def pooled_coverage(reports: list[dict], num_draws: int) -> dict:
    """The report over all images' pixel values together (the count-weighted mean of
    :func:`image_coverage` reports), with what it means: metrics.json's ``coverage``."""
    regions = [k for k in reports[0] if k not in ("counted", "note")]
    pooled: dict = {}
    for region in regions:
        pooled[region] = {}
        for lev in reports[0][region]:
            row = {}
            for key in ("coverage", "width"):
                pairs = [(r[region][lev][key], r["counted"][region]) for r in reports
                         if r["counted"][region] > 0 and not np.isnan(r[region][lev][key])]
                n = sum(c for _, c in pairs)
                row[key] = float(sum(v * c for v, c in pairs) / n) if n else float("nan")
            pooled[region][lev] = row
    from brgm_pyro.calibration import exact_sampler_coverage

    levels = [float(lev) for lev in reports[0]["all"]]
    out = {"what": COVERAGE_WHAT, "units": "width in [0, 1] image units", "num_draws": int(num_draws),
           "levels": levels, "regions": regions,
           # a perfect sampler's intervals from this many draws cover less than their level
           "exact_sampler_reference": {f"{lev:g}": exact_sampler_coverage(lev, num_draws) for lev in levels}}
    if "note" in reports[0]:
        out["note"] = reports[0]["note"]
    out["counted"] = {region: sum(r["counted"][region] for r in reports) for region in regions}
    out["all_images"] = pooled
    return out


def interval_dataset(samples, level: float = 0.9, weights=None):
    """posterior.nc's group ``intervals``: ``interval90_width`` (image, channel, row, col), the per-pixel
    width of the central ``level`` interval of the draws ``samples`` (S, B, C, H, W), in the file's
    [-1, 1] image units (as ``posterior.x``; half that in the PNGs' [0, 1] units). ``weights``: (S, B)
    importance weights of the draws (weighted quantiles), or None."""
    import xarray as xr

    from brgm_pyro.calibration import interval_bounds

    wb = None if weights is None else weights.detach().cpu().double().reshape(*weights.shape, 1, 1, 1)
    lo, hi = interval_bounds(samples.detach().cpu().double(), level, wb)
    width = (hi - lo).numpy()
    name = f"interval{100 * level:g}_width"
    attrs = {"definition": f"{name} = upper - lower {100 * level:g} % central quantile of the draws of x = G(w) "
                           "(+ e with a discrepancy term) per pixel and channel", "units": "[-1, 1] image units, as posterior.x",
             "level": float(level), "num_draws": int(samples.shape[0]), "weighted": int(weights is not None)}
    return xr.Dataset({name: (("image", "channel", "row", "col"), width)},
                      coords={"image": np.arange(width.shape[0])}, attrs=attrs)


def coverage_line(report: Optional[dict], level: float = 0.9) -> Optional[str]:
    """One console line, e.g. ``90% interval coverage 0.87 (observed 0.91, missing 0.62), mean width 0.12``."""
    if not report:
        return None
    key = f"{level:g}"
    pooled = report["all_images"]
    line = f"{100 * level:g}% interval coverage {pooled['all'][key]['coverage']:.2f}"
    if "missing" in pooled:
        line += f" (observed {pooled['observed'][key]['coverage']:.2f}, missing {pooled['missing'][key]['coverage']:.2f})"
    line += f", mean width {pooled['all'][key]['width']:.3f}"
    ref = report.get("exact_sampler_reference", {}).get(key)
    if ref is not None and report.get("num_draws", 0) < 100:  # few draws: say what "calibrated" reads as
        line += f" (an exact sampler with {report['num_draws']} draws: ~{ref:.2f})"
    return line + (" (mask not on the image grid: all pixels only)" if "note" in report else "")


__all__ = ["COVERAGE_WHAT", "missing_pixels", "image_coverage", "pooled_coverage", "interval_dataset", "psis_dataset",
           "coverage_line"]


def psis_dataset(result):
    """posterior.nc's group ``psis`` for a VI run: ``log_weight`` (chain, draw, image), the smoothed
    normalised PSIS log weights of the draws (each image's sum to 1 in exp), and ``khat`` (image), the
    Pareto k-hat of each image's importance ratios log p(w, y) - log q(w) (:mod:`brgm_pyro.inference.psis`;
    > 0.7: the guide misses posterior mass). Whether the run's mean and intervals used the weights is
    the attribute ``reweight``."""
    import xarray as xr

    lw = result.extra["psis_log_weights"].detach().cpu().double().numpy()
    info = result.extra["psis"]
    attrs = {"definition": "log_weight: PSIS-smoothed log importance weights log p(w, y) - log q(w), normalised per "
                           "image; khat: Pareto k-hat per image (> 0.7: unreliable, the guide is too narrow)",
             "threshold": float(info["threshold"]), "joint": int(bool(info["joint"])),
             "reweight": str(result.extra.get("reweight", "none"))}
    return xr.Dataset({"log_weight": (("chain", "draw", "image"), lw[None]),
                       "khat": (("image",), np.asarray(info["khat"], dtype=np.float64))},
                      coords={"chain": [0], "draw": np.arange(lw.shape[0]), "image": np.arange(lw.shape[1])}, attrs=attrs)

