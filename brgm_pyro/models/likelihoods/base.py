"""Likelihoods p(y | f(G(w)), theta): observed Pyro sites on the corrupted prediction.

``pred`` and ``y`` are (..., C, h, w) images (pred may carry extra leading dims: particles,
samples). ``mask`` is None or a bool tensor broadcastable to them (True = observed). ``params``
maps the model's scalar latent site names to their values (a learned noise level lives there);
see :mod:`brgm_pyro.models.latents`.

A likelihood states what inference needs beyond its density:

* :meth:`Likelihood.latents`: the scalar latents it owns (e.g. a learned ``sigma_pixel``);
* :meth:`Likelihood.gauss_newton`: the mean function m(pred) and the Fisher information of the
  noise per element, for the Laplace (generalised Gauss-Newton) metric of the MCMC samplers:
  ``J^T diag(I) J`` with J = dm/dw. A likelihood without it says so when that metric is asked for.
"""

from __future__ import annotations

from typing import Optional, Union

import pyro
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.latents import ScalarLatent, as_image

Params = Optional[dict]


class Likelihood:
    site: str = "y"
    term: str = "likelihood"

    def latents(self) -> list[ScalarLatent]:
        """The scalar latents this likelihood owns (none by default)."""
        return []

    def distribution(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None):
        """(distribution, observed value) with batch shape = pred's leading dims (images, ...)."""
        raise NotImplementedError

    def observe(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None) -> None:
        d, obs = self.distribution(pred, y, mask, params)
        pyro.sample(self.site, d, obs=obs)

    def log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None) -> Tensor:
        """Per-image log-likelihood: (..., B)."""
        d, obs = self.distribution(pred, y, mask, params)
        return d.log_prob(obs)

    def pointwise_log_prob(self, pred: Tensor, y: Tensor, mask: Optional[Tensor], params: Params = None) -> Tensor:
        """Per observed element: (..., B, N); NaN where the element is not observed."""
        raise NotImplementedError

    def gauss_newton(self, pred: Tensor, mask: Optional[Tensor], params: Params = None
                     ) -> tuple[Tensor, Union[Tensor, float]]:
        """(m, I): the mean function's values (flattened over the observed elements, (M,)) and the
        Fisher information of the noise per element (a float or an (M,) tensor)."""
        raise BRGMError(f"the likelihood {type(self).__name__} does not state its Fisher information, which "
                        "the Laplace metric needs; use mass='diag' (--mass diag) or another likelihood")

    def config(self) -> dict:
        return {}


class NoiseScaleMixin:
    """A noise scale that is either a fixed positive number or a :class:`ScalarLatent`."""

    scale_name: str = "sigma"

    def _init_scale(self, scale: Union[float, ScalarLatent], what: str) -> None:
        if isinstance(scale, ScalarLatent):
            self.scale = scale
            return
        if not (isinstance(scale, (int, float)) and scale > 0):
            raise BRGMError(f"{what} must be a positive number or a ScalarLatent; got {scale!r}")
        self.scale = float(scale)

    @property
    def learned(self) -> bool:
        return isinstance(self.scale, ScalarLatent)

    def latents(self) -> list[ScalarLatent]:
        return [self.scale] if self.learned else []

    def scale_value(self, params: Params) -> Union[Tensor, float]:
        """The noise scale, broadcastable against images (..., C, h, w)."""
        if not self.learned:
            return self.scale
        return as_image(self.scale.read(params, type(self).__name__))

    @property
    def sigma(self) -> float:
        """The fixed noise scale (a learned one has no single value)."""
        if self.learned:
            raise BRGMError(f"{type(self).__name__}'s scale is the latent {self.scale.name!r}; read it from the "
                            "posterior")
        return self.scale

    def scale_config(self) -> dict:
        if self.learned:
            return {self.scale_name: "learned", f"{self.scale_name}_latent": self.scale.config()}
        return {self.scale_name: self.scale}


def masked_flat(pred: Tensor, mask: Optional[Tensor]) -> Tensor:
    """The observed elements of ``pred`` flattened: (M,)."""
    return (pred if mask is None else pred[mask.expand_as(pred)]).reshape(-1)


def nan_unobserved(lp: Tensor, mask: Optional[Tensor]) -> Tensor:
    if mask is None:
        return lp
    return torch.where(mask, lp, torch.full((), float("nan"), dtype=lp.dtype, device=lp.device))
