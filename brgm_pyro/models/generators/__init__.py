"""Generators: the interface, test generators, StyleGAN2 and loaders.

Register a new generator family by decorating a factory with ``@GENERATORS.register(name)``;
``load_generator("name")`` / ``load_generator("name:arg")`` then finds it.
"""

from brgm_pyro.models.generators.base import Generator
from brgm_pyro.models.generators.conv import ConvGenerator
from brgm_pyro.models.generators.linear import LinearGenerator
from brgm_pyro.models.generators.stats import LatentStats, compute_latent_stats

__all__ = ["Generator", "LinearGenerator", "ConvGenerator", "LatentStats", "compute_latent_stats"]
