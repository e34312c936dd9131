"""Likelihoods p(y | f(G(w))): observed Pyro sites on the corrupted prediction.

``pred`` and ``y`` are (..., C, h, w) images (pred may carry extra leading dims: particles,
samples). ``mask`` is None or a bool tensor broadcastable to them (True = observed).
"""

from __future__ import annotations

from typing import Optional

import pyro
from torch import Tensor


class Likelihood:
    site: str = "y"
    term: str = "likelihood"

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]):
        """(distribution, observed value) with batch shape = pred's leading dims (images, ...)."""
        raise NotImplementedError

    def observe(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]) -> None:
        d, obs = self.distribution(pred, y, mask)
        pyro.sample(self.site, d, obs=obs)

    def log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Per-image log-likelihood: (..., B)."""
        d, obs = self.distribution(pred, y, mask)
        return d.log_prob(obs)

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Per observed element: (..., B, N); NaN where the element is not observed."""
        raise NotImplementedError

    def config(self) -> dict:
        return {}
