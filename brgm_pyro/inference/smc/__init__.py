"""Adaptive tempered Sequential Monte Carlo (``method="smc"``): posterior draws and the evidence.

:mod:`.target` (the tempered densities, batched over particles), :mod:`.kernels` (batched MALA and
HMC moves), :mod:`.tempering` (BlackJAX-style ``smc_init`` / ``smc_step``), :mod:`.runner`
(:func:`run_smc`, independent runs, the pooled evidence). See docs/smc.md.
"""

from brgm_pyro.inference.smc.runner import pool_log_evidence, run_smc
from brgm_pyro.inference.smc.target import SMCTarget
from brgm_pyro.inference.smc.tempering import SMCState, StageInfo, smc_init, smc_step

__all__ = ["run_smc", "pool_log_evidence", "SMCTarget", "SMCState", "StageInfo", "smc_init", "smc_step"]
