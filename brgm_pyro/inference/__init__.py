"""Inference algorithms. Every method is a runner ``runner(model, y, *, steps=None, num_samples=...,
seed=0, progress=True, **options) -> InferenceResult`` registered in :data:`METHODS`; add one with a
new file and one ``METHODS.register(name)`` line."""

from brgm_pyro.inference.inla import run_inla
from brgm_pyro.inference.map import run_map
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.smc import run_smc
from brgm_pyro.inference.vi import GUIDES, run_vi
from brgm_pyro.registry import Registry

METHODS: Registry = Registry("inference method")
METHODS.register("map")(run_map)
METHODS.register("vi")(run_vi)
METHODS.register("inla")(run_inla)
METHODS.register("smc")(run_smc)

__all__ = ["run_map", "run_vi", "run_inla", "run_smc", "InferenceResult", "METHODS", "GUIDES"]

from brgm_pyro.inference import mcmc  # noqa: F401,E402
