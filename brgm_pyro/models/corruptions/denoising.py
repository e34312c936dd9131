"""Denoising: the operator is the identity; the task is the noise.

    y = x + e,    e ~ N(0, noise_sigma^2 I)

The corruption states the noise level it simulates (:attr:`noise_sigma`, in [-1, 1] image units;
default 0.2 = 25.5 on a 0..255 scale, BIGPrior's sigma = 25 setting, 4x the default pixel noise
of the other tasks) so that ``simulate`` draws the observation and the model's pixel likelihood
can use the same std (``build_model(..., sigma_pixel=f.noise_sigma)``, or ``sigma_pixel="learn"``).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption

DEFAULT_DENOISE_SIGMA = 0.2


class Denoising(Corruption):
    """f(x) = x, with Gaussian noise of std ``sigma`` ([-1, 1] units) in :meth:`simulate`.

    Args:
        sigma: noise std of the observation, > 0 ([-1, 1] units: 0.2 = 10 % of the range).
    """

    name = "denoise"
    linear = True
    pixelwise = True
    cli_task = "brgm_pyro.pipeline.corruption_tasks:DenoiseTask"  # brgm reconstruct --task denoise

    def __init__(self, sigma: float = DEFAULT_DENOISE_SIGMA) -> None:
        super().__init__()
        if not (isinstance(sigma, (int, float)) and sigma > 0):
            raise BRGMError(f"denoising noise sigma must be a positive number ([-1, 1] units), got {sigma!r}")
        self.noise_sigma = float(sigma)

    def in_shape(self, obs_shape):
        return tuple(obs_shape)

    def apply(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        return x

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        return y

    def config(self) -> dict:
        return {"name": self.name, "noise_sigma": self.noise_sigma}
