"""Inference algorithms. Every method is a runner ``runner(model, y, *, steps=None, num_samples=...,
seed=0, progress=True, **options) -> InferenceResult`` registered in :data:`METHODS`; add one with a
new file and one ``METHODS.register(name, traits=MethodTraits(...))`` line (what it can do:
:mod:`brgm_pyro.inference.traits`)."""

from brgm_pyro.inference.inla import run_inla
from brgm_pyro.inference.map import run_map
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.smc import run_smc
from brgm_pyro.inference.traits import INLA_TRAITS, MAP_TRAITS, SMC_TRAITS, VI_TRAITS, MethodTraits
from brgm_pyro.inference.vi import GUIDES, run_vi
from brgm_pyro.registry import Registry

METHODS: Registry = Registry("inference method", default_traits=MethodTraits())
METHODS.register("map", traits=MAP_TRAITS)(run_map)
METHODS.register("vi", traits=VI_TRAITS)(run_vi)
METHODS.register("inla", traits=INLA_TRAITS)(run_inla)
METHODS.register("smc", traits=SMC_TRAITS)(run_smc)

__all__ = ["run_map", "run_vi", "run_inla", "run_smc", "InferenceResult", "METHODS", "GUIDES", "MethodTraits"]

from brgm_pyro.inference import mcmc  # noqa: F401,E402
