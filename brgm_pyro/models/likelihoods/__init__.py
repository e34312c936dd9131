"""Likelihoods. Add one: a Likelihood subclass in a new file and one ``@LIKELIHOODS.register`` here."""

from brgm_pyro.models.likelihoods.base import Likelihood
from brgm_pyro.models.likelihoods.perceptual import PerceptualGaussian
from brgm_pyro.models.likelihoods.pixel import PixelGaussian
from brgm_pyro.registry import Registry

LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")
LIKELIHOODS.register("pixel")(PixelGaussian)
LIKELIHOODS.register("perceptual")(PerceptualGaussian)

__all__ = ["Likelihood", "PixelGaussian", "PerceptualGaussian", "LIKELIHOODS"]
