"""ArviZ 0.23 (``InferenceData``) and ArviZ 1.x (``xarray.DataTree``) behind one small API.

Python < 3.12 installs ArviZ 0.23, Python >= 3.12 ArviZ 1.x (arviz-base/-stats/-plots all need
3.12); see pyproject.toml. Everything in brgm-pyro that touches ArviZ goes through these
functions, so both lines write and read the same NetCDF files (groups ``posterior``,
``sample_stats``, ... as NetCDF groups; a file written by one opens in the other). What differs:

======================  =========================================  ==========================================
                        0.23                                       1.x
======================  =========================================  ==========================================
container               ``az.InferenceData``                       ``xarray.DataTree``
``from_dict``           one keyword per group                      one nested dict ``{group: {var: array}}``
group names             ``idata.groups()``                         ``list(dt.children)``
adding a group          ``idata.add_groups({name: ds})``           ``dt[name] = xr.DataTree(ds)``
NetCDF compression      ``to_netcdf(compress=)``                   per-variable ``encoding``
tail ESS quantiles      5 % / 95 % by default                      11 % / 89 % by default (we pass 5/95)
trace / rank plots      axes arrays                                ``PlotCollection`` (``plot_trace_dist``)
======================  =========================================  ==========================================

This module imports no torch, so the compatibility tests run in a venv with only ArviZ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

TAIL_PROB = (0.05, 0.95)  # the quantiles of tail ESS (Vehtari et al. 2021), stated for both lines


def arviz():
    import arviz as az

    return az


def major() -> int:
    """ArviZ's major version (0 or 1)."""
    return int(str(arviz().__version__).split(".")[0])


def is_v1() -> bool:
    return major() >= 1


def from_dict(groups: dict[str, dict], coords: Optional[dict] = None, dims: Optional[dict] = None):
    """An InferenceData (0.23) / DataTree (1.x) from ``{group: {name: array (chain, draw, ...)}}``."""
    az = arviz()
    groups = {k: v for k, v in groups.items() if v}
    if is_v1():
        return az.from_dict(groups, coords=coords, dims=dims)
    return az.from_dict(**groups, coords=coords, dims=dims)


def group_names(idata) -> list[str]:
    """The groups of a posterior file (``posterior``, ``sample_stats``, ...)."""
    if hasattr(idata, "groups") and callable(idata.groups):
        return [g.lstrip("/") for g in idata.groups()]
    return [str(k) for k in idata.children]


def has_group(idata, name: str) -> bool:
    return name in group_names(idata)


def group(idata, name: str):
    """The ``xarray.Dataset`` of one group (1.x: the DataTree node's dataset, coordinates included)."""
    g = idata[name]
    return g.to_dataset() if hasattr(g, "to_dataset") else g


def add_group(idata, name: str, ds) -> Any:
    """Add the ``xarray.Dataset`` ``ds`` as group ``name`` (in place; also returned)."""
    if is_v1():
        import xarray as xr

        idata[name] = xr.DataTree(ds)
    else:
        idata.add_groups({name: ds}, warn_on_custom_groups=False)
    return idata


def replace_group(idata, name: str, ds) -> Any:
    """Replace the existing group ``name`` by the ``xarray.Dataset`` ``ds`` (in place; also returned)."""
    if is_v1():
        import xarray as xr

        idata[name] = xr.DataTree(ds)
    else:
        setattr(idata, name, ds)
    return idata


def update_attrs(idata, attrs: dict) -> None:
    """Put ``attrs`` on every group."""
    for g in group_names(idata):
        idata[g].attrs.update(attrs)


def to_netcdf(idata, path: str | os.PathLike, compress: bool = False) -> None:
    """Write NetCDF4 with h5netcdf (the one engine both lines read)."""
    if is_v1():
        encoding = None
        if compress:
            encoding = {f"/{g}": {v: {"zlib": True} for v in group(idata, g).data_vars} for g in group_names(idata)}
        idata.to_netcdf(str(path), engine="h5netcdf", encoding=encoding)
    else:
        idata.to_netcdf(str(path), compress=compress, engine="h5netcdf")


def from_netcdf(path: str | os.PathLike):
    """Open a posterior file written by either line (values loaded, file closed)."""
    az = arviz()
    if is_v1():
        import xarray as xr

        with xr.open_datatree(str(path), engine="h5netcdf") as dt:
            return dt.load()
    return az.from_netcdf(str(path), engine="h5netcdf")


def rhat(ds):
    """Split rank-normalised R-hat of every variable of a (chain, draw, ...) Dataset."""
    return arviz().rhat(ds)


def ess(ds, method: str = "bulk"):
    """Bulk or tail ESS (tail at the 5 % / 95 % quantiles on both lines)."""
    if method == "tail":
        return arviz().ess(ds, method="tail", prob=TAIL_PROB)
    return arviz().ess(ds, method=method)


def mcse(ds, method: str = "mean"):
    return arviz().mcse(ds, method=method)


def psislw(log_ratios, r_eff: float = 1.0):
    """Pareto-smoothed importance sampling along the last axis (Vehtari et al. 2024).

    ``log_ratios``: (..., S) log importance ratios log p - log q. Returns (log weights (..., S),
    normalised so that each row's weights sum to 1; k-hat (...), the fitted Pareto shape of the
    largest ratios). 0.23: ``az.psislw`` takes the ratios; 1.x: ``arviz_stats``' array function takes
    a log-likelihood and negates it, so the ratios go in negated.
    """
    import numpy as np
    from scipy.special import logsumexp

    lr = np.asarray(log_ratios, dtype=float)
    if is_v1():
        from arviz_stats.base import array_stats

        lw, k = array_stats.psislw(-lr, r_eff, axis=-1)
    else:
        lw, k = arviz().psislw(lr, reff=r_eff)
    lw = np.asarray(lw, dtype=float)
    lw = lw - logsumexp(lw, axis=-1, keepdims=True)
    return lw, np.asarray(k, dtype=float)


def plot_to_png(kind: str, ds, path: Path, title: str, fallback) -> None:
    """``trace`` or ``rank`` plot of a (chain, draw[, image]) Dataset, saved to ``path`` (a
    temporary name the caller renames). ``fallback(ds, plt)`` draws a plain figure when ArviZ cannot
    (its KDE / rank histograms fail on a constant chain)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    az = arviz()
    with warnings.catch_warnings():  # deprecation noise of ArviZ vs matplotlib
        warnings.simplefilter("ignore")
        try:
            if is_v1():
                fn = az.plot_trace_dist if kind == "trace" else az.plot_rank
                fn(ds)  # a PlotCollection on the matplotlib backend: its figure is the current one
                fig = plt.gcf()
            else:
                axes = az.plot_trace(ds, compact=False) if kind == "trace" else az.plot_rank(ds)
                fig = np.asarray(axes).ravel()[0].figure
        except (ValueError, np.linalg.LinAlgError):
            plt.close("all")
            fig = fallback(ds, plt)
        fig.suptitle(title)
        try:
            fig.tight_layout()
        except Exception:  # noqa: BLE001 - layout is cosmetic
            pass
        fig.savefig(path, dpi=80)
    plt.close("all")


__all__ = ["from_dict", "group_names", "has_group", "group", "add_group", "update_attrs", "to_netcdf",
           "from_netcdf", "rhat", "ess", "mcse", "psislw", "plot_to_png", "is_v1", "major", "TAIL_PROB"]
