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
# ``example(scale)``: a small instance for the contract tests, with ``scale`` a number or a latent
LIKELIHOODS.register("pixel", example=PixelGaussian)(PixelGaussian)  # the paper's Gaussian pixel noise
LIKELIHOODS.register("laplace", example=PixelLaplace)(PixelLaplace)
LIKELIHOODS.register("studentt", example=lambda s: PixelStudentT(s, df=5.0))(PixelStudentT)
LIKELIHOODS.register("perceptual", example=lambda s: PerceptualGaussian(_example_phi(), s))(PerceptualGaussian)

def _example_phi():
    """A tiny fixed feature network (avg-pool + random 1x1 conv + tanh) for contract tests."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(1, 3, 1), nn.Tanh(), nn.Flatten()).eval()


# the pixel noise models, by the name build_model(noise=...) and ``--noise`` take
PIXEL_NOISE = {"gaussian": "pixel", "laplace": "laplace", "studentt": "studentt"}

__all__ = ["Likelihood", "PixelNoise", "PixelGaussian", "PixelLaplace", "PixelStudentT", "PerceptualGaussian",
           "LIKELIHOODS", "PIXEL_NOISE"]
