"""MCMC for the BRGM posterior: Langevin kernels (SGLD, pSGLD, MALA), Pyro's HMC/NUTS, and runners.

Registered inference methods (``brgm reconstruct --method ...``): ``sgld``, ``psgld``, ``mala``,
``hmc``, ``nuts``; each is ``runner(model, y, *, steps=None, num_samples=200, seed=0,
progress=True, **options) -> InferenceResult`` (see :func:`run_mcmc`; ``steps`` = warm-up draws).
"""

from __future__ import annotations

from brgm_pyro.inference.mcmc.hmc import StatsHMC, StatsNUTS
from brgm_pyro.inference.mcmc.langevin import (Langevin, LangevinInfo, LangevinState, langevin_init,
                                               langevin_step, max_curvature)
from brgm_pyro.inference.mcmc.runner import SAMPLER_TRAITS, SAMPLERS, make_kernel, run_mcmc


def _runner(name: str):
    def runner(model, y, *, steps=None, num_samples: int = 200, seed: int = 0, progress: bool = True,
               **options):
        return run_mcmc(model, y, method=name, steps=steps, num_samples=num_samples, seed=seed,
                        progress=progress, **options)

    runner.__name__ = f"run_{name}"
    runner.__doc__ = f"Sample the posterior with {name} (see :func:`run_mcmc`)."
    return runner


def _register() -> None:
    from brgm_pyro.inference import METHODS

    for name in SAMPLERS:
        if name not in METHODS:
            METHODS.register(name, traits=SAMPLER_TRAITS[name])(_runner(name))


_register()

__all__ = ["Langevin", "LangevinState", "LangevinInfo", "langevin_init", "langevin_step", "max_curvature",
           "StatsHMC", "StatsNUTS", "run_mcmc", "make_kernel", "SAMPLERS"]
