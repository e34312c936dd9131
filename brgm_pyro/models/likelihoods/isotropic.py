r"""N(loc, s^2 I) over the last dim with one scale: the perceptual likelihood's hot path.

.. math::

    \log p(v) = -\frac{\lVert v - \mu\rVert^2}{2 s^2} - n \left(\log s + \tfrac12 \log 2\pi\right)

computed as one reduction with the scale a Python float (or a (..., 1) tensor for a learned one).
``torch.distributions.Normal`` broadcasts the scale to every element and takes its square and
log there: at ~2.4e5 perceptual features per image that was about half of our per-step overhead
over the reference loop (benchmarks/vs_reference.py profile, docs/vs_reference.md).
"""

from __future__ import annotations

import math
from typing import Union

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class IsotropicNormal(dist.TorchDistribution):
    """Event shape (n,) = loc's last dim; batch shape = the rest (broadcast with the scale's)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Union[float, Tensor], validate_args=None) -> None:
        self.loc, self.scale = loc, scale
        batch = loc.shape[:-1]
        if isinstance(scale, Tensor):
            batch = torch.broadcast_shapes(batch, scale.shape[:-1])
        super().__init__(batch, loc.shape[-1:], validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        n = self.loc.shape[-1]
        sq = (value - self.loc).pow(2).sum(-1)
        if isinstance(self.scale, Tensor):
            s = self.scale[..., 0]
            return -0.5 * sq / s ** 2 - n * (s.log() + _HALF_LOG_2PI)
        return sq * (-0.5 / self.scale ** 2) - n * (math.log(self.scale) + _HALF_LOG_2PI)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return self.loc.expand(shape) + self.scale * torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)

    def expand(self, batch_shape, _instance=None) -> "IsotropicNormal":
        batch_shape = torch.Size(batch_shape)
        scale = self.scale.expand(batch_shape + (1,)) if isinstance(self.scale, Tensor) else self.scale
        return IsotropicNormal(self.loc.expand(batch_shape + self.event_shape), scale)

    @property
    def mean(self) -> Tensor:
        return self.loc.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        s2 = self.scale ** 2
        return (torch.zeros_like(self.loc) + s2).expand(self.batch_shape + self.event_shape)


__all__ = ["IsotropicNormal"]
