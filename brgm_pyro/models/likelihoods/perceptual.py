"""Perceptual Gaussian likelihood N(phi(y) | phi(f(G(w))), sigma_percept^2 I)."""

from __future__ import annotations

from typing import Optional, Union

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from brgm_pyro.models.latents import ScalarLatent
from brgm_pyro.models.likelihoods.isotropic import IsotropicNormal
from brgm_pyro.models.likelihoods.base import Likelihood, NoiseScaleMixin, Params


class PerceptualGaussian(NoiseScaleMixin, Likelihood):
    """phi(y) ~ N(phi(f(G(w))), sigma^2 I) for any feature network phi.

    Args:
        phi: a torch module mapping images (N, C, h, w) in [-1, 1] to features (N, ...); its
            output is flattened to (N, F). It is applied to the corrupted images (for in-painting,
            the masked images ``x * mask``), as in the paper.
        sigma: noise standard deviation in feature units (fixed, or a ScalarLatent).
            Paper: lambda_percept = sigma^-2.

    phi(y) is computed once per observation and cached (the per-step cost is phi of the prediction).
    """

    site = "y_percept"
    term = "perceptual"
    scale_name = "sigma_percept"

    def __init__(self, phi: nn.Module, sigma: Union[float, ScalarLatent]) -> None:
        self._init_scale(sigma, "sigma_percept")
        self.phi = phi
        for p in phi.parameters():
            p.requires_grad_(False)
        self._cache_key = None
        self._cache_val: Optional[Tensor] = None

    def features(self, img: Tensor) -> Tensor:
        lead = img.shape[:-3]
        f = self.phi(img.reshape(-1, *img.shape[-3:]))
        return f.reshape(*lead, -1)

    def _target(self, y: Tensor) -> Tensor:
        key = (y.data_ptr(), tuple(y.shape), y._version, y.device)
        if key != self._cache_key:
            with torch.no_grad():
                self._cache_val = self.features(y)
            self._cache_key = key
        return self._cache_val

    def _scale(self, params: Params):
        s = self.scale_value(params)  # (..., 1, 1, 1) when learned: one feature axis here
        return s[..., 0, 0] if isinstance(s, Tensor) else s

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None):
        return IsotropicNormal(self.features(pred), self._scale(params)), self._target(y)

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None) -> Tensor:
        return dist.Normal(self.features(pred), self._scale(params)).log_prob(self._target(y))

    def gauss_newton(self, pred: Tensor, mask: Optional[Tensor], params: Params = None):
        s = self._scale(params)
        f = self.features(pred)
        info = s ** -2 if not isinstance(s, Tensor) else (s ** -2).expand_as(f).reshape(-1)
        return f.reshape(-1), info

    def config(self) -> dict:
        return {**self.scale_config(), "phi": type(self.phi).__name__}
