"""Likelihoods. Add one: a Likelihood subclass in a new file and one ``LIKELIHOODS.register`` here.

Every registered factory takes the noise scale first (a number, or a ScalarLatent to learn it);
the perceptual one takes ``(phi, sigma)``.
"""

from brgm_pyro.models.likelihoods.base import Likelihood
from brgm_pyro.models.likelihoods.perceptual import PerceptualGaussian
from brgm_pyro.models.likelihoods.pixel import PixelGaussian, PixelNoise
from brgm_pyro.models.likelihoods.robust import PixelLaplace, PixelStudentT
from brgm_pyro.registry import Registry

LIKELIHOODS: Registry[Likelihood] = Registry("likelihood")
LIKELIHOODS.register("pixel")(PixelGaussian)  # the paper's Gaussian pixel noise
LIKELIHOODS.register("laplace")(PixelLaplace)
LIKELIHOODS.register("studentt")(PixelStudentT)
LIKELIHOODS.register("perceptual")(PerceptualGaussian)

# the pixel noise models, by the name build_model(noise=...) and ``--noise`` take
PIXEL_NOISE = {"gaussian": "pixel", "laplace": "laplace", "studentt": "studentt"}

__all__ = ["Likelihood", "PixelNoise", "PixelGaussian", "PixelLaplace", "PixelStudentT", "PerceptualGaussian",
           "LIKELIHOODS", "PIXEL_NOISE"]
