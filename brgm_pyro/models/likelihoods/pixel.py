"""Pixel-wise Gaussian likelihood N(y | f(G(w)), sigma_pixel^2 I)."""

from __future__ import annotations

from typing import Optional

import pyro.distributions as dist
import torch
from torch import Tensor

from brgm_pyro.models.likelihoods.base import Likelihood


class PixelGaussian(Likelihood):
    """y_k ~ N(f(G(w))_k, sigma^2) independently for every observed pixel k.

    Args:
        sigma: noise standard deviation in image units ([-1, 1] range: 2 = full range).

    Unobserved pixels (mask False) are left out of the log-likelihood via ``.mask``: they are not
    observed, so their (arbitrary) values in ``y`` never matter. Paper: lambda_pixel = sigma^-2.
    """

    site = "y"
    term = "pixel"

    def __init__(self, sigma: float) -> None:
        if not sigma > 0:
            raise ValueError("sigma_pixel must be positive")
        self.sigma = float(sigma)

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]):
        d = dist.Normal(pred, self.sigma)
        if mask is not None:
            d = d.mask(mask)
            y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return d.to_event(3), y

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor]) -> Tensor:
        lp = dist.Normal(pred, self.sigma).log_prob(y)
        if mask is not None:
            lp = torch.where(mask, lp, torch.full((), float("nan"), dtype=lp.dtype, device=lp.device))
        return lp.flatten(-3)

    def config(self) -> dict:
        return {"sigma_pixel": self.sigma}
