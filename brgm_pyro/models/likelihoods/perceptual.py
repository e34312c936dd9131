"""Perceptual Gaussian likelihood N(phi(y) | phi(f(G(w))), sigma_percept^2 I)."""

from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from brgm_pyro.models.likelihoods.base import Likelihood


class PerceptualGaussian(Likelihood):
    """phi(y) ~ N(phi(f(G(w))), sigma^2 I) for any feature network phi.

    Args:
        phi: a torch module mapping images (N, C, h, w) in [-1, 1] to features (N, ...); its
            output is flattened to (N, F). It is applied to the corrupted images (for in-painting,
            the masked images ``x * mask``), as in the paper.
        sigma: noise standard deviation in feature units. Paper: lambda_percept = sigma^-2.

    phi(y) is computed once per observation and cached (the per-step cost is phi of the prediction).
    """

    site = "y_percept"
    term = "perceptual"

    def __init__(self, phi: nn.Module, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError("sigma_percept must be positive")
        self.phi, self.sigma = phi, float(sigma)
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

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]):
        return dist.Normal(self.features(pred), self.sigma).to_event(1), self._target(y)

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
        return dist.Normal(self.features(pred), self.sigma).log_prob(self._target(y))

    def config(self) -> dict:
        return {"sigma_percept": self.sigma, "phi": type(self.phi).__name__}
