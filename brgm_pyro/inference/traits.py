"""What an inference method can do, declared where it is registered.

``METHODS.register("smc", traits=MethodTraits(draws=True, chains=True))`` is the whole declaration:
the command's option checks (``--lr``, ``--chains``, ``--workers``, ``--mass``, ``--max-tree-depth``,
``--guide``, ``--num-samples``), the default discrepancy term, the outputs (MCMC diagnostics) and
the help read these fields through ``METHODS.traits(name)``; nothing else names methods.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class MethodTraits:
    """The capabilities of one registered inference method (all False: an optimiser without options).

    draws: it returns posterior draws (``--num-samples`` must then be >= 1 at the command).
    chains: it runs independent chains (``--chains``, ``--workers``).
    learning_rate: it is an optimiser with a learning rate (``--lr``).
    mass_matrix: it has an HMC mass matrix (``--mass``).
    tree_depth: it builds NUTS trees (``--max-tree-depth``).
    guide: it fits a variational guide (``--guide``, from :data:`~brgm_pyro.inference.GUIDES`).
    mcmc: it is a Markov chain (``--steps`` are warm-up draws; R-hat/ESS diagnostics for >= 2 chains).
    langevin: a Langevin kernel (the MCMC runner's thinning, preconditioner and start options).
    discrepancy_default: the discrepancy term defaults to ``auto`` when the generator stores a scale.
    particles: it moves a population of particles through G as one batch (``--particles``; no ``--workers``).
    """

    draws: bool = False
    chains: bool = False
    learning_rate: bool = False
    mass_matrix: bool = False
    tree_depth: bool = False
    guide: bool = False
    mcmc: bool = False
    langevin: bool = False
    discrepancy_default: bool = True
    particles: bool = False

    def names(self) -> list[str]:
        """The fields that are True (for the help and run.json)."""
        return [f.name for f in fields(self) if getattr(self, f.name)]


#: the methods of the library (the MCMC samplers declare theirs in :mod:`brgm_pyro.inference.mcmc.runner`)
MAP_TRAITS = MethodTraits(learning_rate=True)
VI_TRAITS = MethodTraits(draws=True, learning_rate=True, guide=True)
INLA_TRAITS = MethodTraits(draws=True, learning_rate=True)
#: independent SMC runs are its chains (R-hat across runs); not a Markov chain (no warm-up, no tree depth)
SMC_TRAITS = MethodTraits(draws=True, chains=True, particles=True)

__all__ = ["MethodTraits", "MAP_TRAITS", "VI_TRAITS", "INLA_TRAITS", "SMC_TRAITS"]
