"""brgm-pyro: Bayesian image reconstruction with deep generative priors, as a Pyro program.

The library in five lines (see README "As a library")::

    import brgm_pyro as brgm
    G = brgm.load_generator("builtin:faces64")       # with its perceptual network and latent statistics
    obs = brgm.observe(["small.png"], G, "superres", factor=8)
    model = brgm.build_model(G, obs.corruption, method="vi")  # the model brgm reconstruct --method vi builds
    post = brgm.reconstruct(model, obs, "vi", num_samples=16)

Names are imported lazily (``import brgm_pyro`` does not import torch).
"""

__version__ = "0.1.0"

from brgm_pyro.errors import BRGMError  # noqa: F401,E402

_API = {
    # the pipeline (brgm_pyro.pipeline)
    "load_generator": "brgm_pyro.pipeline.core", "build_model": "brgm_pyro.pipeline.core",
    "observe": "brgm_pyro.pipeline.core", "reconstruct": "brgm_pyro.pipeline.core",
    "default_phi": "brgm_pyro.pipeline.core", "default_percept": "brgm_pyro.pipeline.core", "latent_stats": "brgm_pyro.pipeline.core",
    "Observation": "brgm_pyro.pipeline.core", "score": "brgm_pyro.pipeline.outputs",
    "write_results": "brgm_pyro.pipeline.outputs", "tasks": "brgm_pyro.pipeline.tasks",
    "get_task": "brgm_pyro.pipeline.tasks", "run_dataset": "brgm_pyro.pipeline.dataset",
    "DatasetRun": "brgm_pyro.pipeline.dataset", "bicubic_upsample": "brgm_pyro.pipeline.baselines",
    # components and registries
    "make_corruption": "brgm_pyro.models.corruptions", "CORRUPTIONS": "brgm_pyro.models.corruptions",
    "SuperResolution": "brgm_pyro.models.corruptions", "Inpainting": "brgm_pyro.models.corruptions",
    "Identity": "brgm_pyro.models.corruptions", "PRIORS": "brgm_pyro.models.priors",
    "LIKELIHOODS": "brgm_pyro.models.likelihoods", "METHODS": "brgm_pyro.inference",
    "GUIDES": "brgm_pyro.inference", "InferenceResult": "brgm_pyro.inference",
    "run_map": "brgm_pyro.inference", "run_vi": "brgm_pyro.inference",
    "to_inference_data": "brgm_pyro.inference.arviz_io", "read_inference_data": "brgm_pyro.inference.arviz_io",
    "write_inference_data": "brgm_pyro.inference.arviz_io", "diagnose": "brgm_pyro.diagnostics",
    "metrics": None, "io": None,
}

__all__ = ["BRGMError", "__version__", *_API]


def __getattr__(name: str):
    """Lazy top-level names (PEP 562): ``brgm_pyro.load_generator`` etc."""
    import importlib

    if name not in _API:
        raise AttributeError(f"module 'brgm_pyro' has no attribute {name!r}")
    mod = _API[name]
    value = importlib.import_module(f"brgm_pyro.{name}") if mod is None else getattr(importlib.import_module(mod),
                                                                                     name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)
