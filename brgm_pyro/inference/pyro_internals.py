"""The one place that reads what Pyro keeps private.

Pyro's public API has no accessor for a few things the library records: the draw counter, running
mean acceptance probability, divergences and step-size adapter of HMC/NUTS (per-draw statistics for
ArviZ's ``sample_stats``), the per-site loc/scale of an ``AutoNormal`` guide (VI's marginal
standard deviations), the packed-latent shapes of an ``AutoContinuous`` guide, and the naming of
guide parameters (``AutoNormal.locs.<site>``, ``AutoDelta.<site>``; MAP holds some sites' parameters
while the others move). Every such read goes through a function here, and
``tests/test_pyro_internals.py`` fails as soon as a Pyro release renames or drops one of them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


# --- HMC / NUTS kernels --------------------------------------------------------------------------

def draws_made(kernel) -> int:
    """Draws (warm-up included) the kernel has made: Pyro's ``_t``."""
    return int(kernel._t)


def warmup_steps(kernel) -> int:
    """The kernel's warm-up length: Pyro's ``_warmup_steps``."""
    return int(kernel._warmup_steps)


def mean_accept_prob(kernel) -> float:
    """Pyro's running mean of the acceptance statistic (reset after warm-up): ``_mean_accept_prob``."""
    return float(kernel._mean_accept_prob)


def divergence_count(kernel) -> int:
    """Divergent draws so far: ``len(_divergences)``."""
    return len(kernel._divergences)


def step_size_adapter(kernel):
    """The kernel's step-size/mass adapter (``_adapter``): ``adapt_step_size``,
    ``reset_step_size_adaptation(z)``."""
    return kernel._adapter


def initial_params(kernel) -> dict:
    """The unconstrained start the kernel set up with (``_initial_params``)."""
    return kernel._initial_params


def potential_energy_like(kernel) -> Tensor:
    """A tensor of the potential's dtype and device (``_potential_energy_last``)."""
    return kernel._potential_energy_last


def cached_potential_energy(kernel) -> Any:
    """The potential energy of the current draw from the kernel's cache (``_fetch_from_cache``), or None."""
    _, pe, _ = kernel._fetch_from_cache()
    return pe


#: the NUTS method that builds one subtree (overridden to record the tree depth reached)
BUILD_TREE = "_build_tree"


# --- autoguides ----------------------------------------------------------------------------------

def autonormal_sites(guide) -> list[str]:
    """The sites of an ``AutoNormal`` guide, in its parameter order (``locs._pyro_params``)."""
    return list(guide.locs._pyro_params)


def autonormal_scale(guide, site: str) -> Tensor:
    """sigma of ``site`` in an ``AutoNormal`` guide (``_get_loc_and_scale(site)[1]``)."""
    return guide._get_loc_and_scale(site)[1]


def autocontinuous_shapes(guide) -> dict:
    """Unconstrained shape of every site of an ``AutoContinuous`` guide (``_unconstrained_shapes``)."""
    return guide._unconstrained_shapes


def param_site(name: str) -> str:
    """The model site a guide parameter belongs to, from its name: ``AutoNormal.locs.w`` -> ``w``,
    ``AutoDelta.sigma_pixel_unconstrained`` -> ``sigma_pixel`` (Pyro names parameters by site)."""
    return name.rsplit(".", 1)[-1].removesuffix("_unconstrained")


__all__ = ["draws_made", "warmup_steps", "mean_accept_prob", "divergence_count", "step_size_adapter",
           "initial_params", "potential_energy_like", "cached_potential_energy", "BUILD_TREE",
           "autonormal_sites", "autonormal_scale", "autocontinuous_shapes", "param_site"]
