"""Pixel-wise noise models y_k ~ p(y_k | f(G(w))_k, scale): the Gaussian, and the base of all."""

from __future__ import annotations

from typing import Optional, Union

import pyro.distributions as dist
import torch
from torch import Tensor

from brgm_pyro.models.latents import ScalarLatent, as_image
from brgm_pyro.models.likelihoods.base import Likelihood, NoiseScaleMixin, Params, masked_flat, nan_unobserved


class PixelNoise(NoiseScaleMixin, Likelihood):
    """y_k ~ p(. | f(G(w))_k, scale) independently for every observed pixel k.

    Unobserved pixels (mask False) are left out of the log-likelihood via ``.mask``: they are not
    observed, so their (arbitrary) values in ``y`` never matter. Subclasses give the element
    distribution (:meth:`element`) and its Fisher information for the location (:meth:`fisher`).

    Args:
        scale: the noise scale in image units ([-1, 1] range: 2 = full range), fixed or a
            :class:`~brgm_pyro.models.latents.ScalarLatent` (learned).
    """

    site = "y"
    term = "pixel"
    scale_name = "sigma_pixel"

    def __init__(self, scale: Union[float, ScalarLatent]) -> None:
        self._init_scale(scale, self.scale_name)

    def element(self, loc: Tensor, scale) -> dist.TorchDistribution:
        raise NotImplementedError

    def fisher(self, scale):
        """Fisher information of the location of one element: E[(d/dloc log p)^2]."""
        raise NotImplementedError

    def total_scale(self, params: Params, like: Tensor):
        """The scale of each element's distribution (the noise scale; the Gaussian adds a discrepancy)."""
        return self.scale_value(params)

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None):
        d = self.element(pred, self.total_scale(params, pred))
        if mask is not None:
            d = d.mask(mask)
            y = torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device))
        return d.to_event(3), y

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None) -> Tensor:
        lp = self.element(pred, self.total_scale(params, pred)).log_prob(y)
        return nan_unobserved(lp, mask).flatten(-3)

    def gauss_newton(self, pred: Tensor, mask: Optional[Tensor], params: Params = None):
        info = self.fisher(self.total_scale(params, pred))
        if isinstance(info, Tensor):
            info = masked_flat(info.expand_as(pred), mask)
        return masked_flat(pred, mask), info

    def config(self) -> dict:
        return self.scale_config()


class PixelGaussian(PixelNoise):
    """y_k ~ N(f(G(w))_k, sigma^2). Paper: lambda_pixel = sigma^-2.

    With a :class:`~brgm_pyro.models.discrepancy.Discrepancy` attached (``discrepancy``), the
    clean image is G(w) + e, e ~ N(0, tau^2 I), integrated out: y_k ~ N(f(G(w))_k, sigma^2 +
    tau^2 diag(A A^T)_k).
    """

    discrepancy = None  # set by BRGMModel when the model has a discrepancy term

    def total_scale(self, params: Params, like: Tensor):
        s = self.scale_value(params)
        if self.discrepancy is None:
            return s
        return (torch.as_tensor(s, dtype=like.dtype, device=like.device) ** 2
                + self.discrepancy.obs_variance(params, like)).sqrt()

    def element(self, loc, scale):
        return dist.Normal(loc, scale)

    def fisher(self, scale):
        return scale ** -2


__all__ = ["PixelNoise", "PixelGaussian", "as_image"]
