"""The library pipeline that ``brgm reconstruct``, ``brgm demo`` and dataset runs are adapters over.

See :mod:`brgm_pyro.pipeline.core` (load, observe, build, reconstruct), :mod:`.outputs` (scores,
files), :mod:`.tasks` (tasks from the corruption registry), :mod:`.dataset` (a directory or
manifest of images, resumable, sharded across torchrun ranks) and :mod:`.baselines`.
"""

from brgm_pyro.pipeline.baselines import bicubic_upsample
from brgm_pyro.pipeline.core import (DEFAULT_GENERATOR, Observation, build_model, default_percept, default_phi,
                                     latent_stats, load_generator, methods_registry, observe, reconstruct, resolve_device)
from brgm_pyro.pipeline.outputs import score, write_results
from brgm_pyro.pipeline.tasks import Task, TaskBuild, TaskInputs, TaskOption, get_task, tasks

__all__ = ["DEFAULT_GENERATOR", "Observation", "build_model", "default_percept", "default_phi", "latent_stats", "load_generator",
           "methods_registry", "observe", "reconstruct", "resolve_device", "score", "write_results",
           "bicubic_upsample", "Task", "TaskBuild", "TaskInputs", "TaskOption", "get_task", "tasks"]
