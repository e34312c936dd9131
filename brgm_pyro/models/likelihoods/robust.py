"""Robust pixel noise models: Laplace (RLS's L1 fidelity, seed 004) and Student-t.

Both are parameterised by their own scale (not by a standard deviation): Laplace(b) has std
b sqrt(2); Student-t(nu, s) has std s sqrt(nu / (nu - 2)) for nu > 2. Under the Laplace noise the
MAP minimises sum_k |y_k - f(G(w))_k| / b, the L1 fidelity of RLS.
"""

from __future__ import annotations

from typing import Union

import pyro.distributions as dist

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.latents import ScalarLatent
from brgm_pyro.models.likelihoods.pixel import PixelNoise


class PixelLaplace(PixelNoise):
    """y_k ~ Laplace(f(G(w))_k, b): log p = -|y_k - m_k| / b - log(2 b)."""

    def element(self, loc, scale):
        return dist.Laplace(loc, scale)

    def fisher(self, scale):
        return scale ** -2  # E[(sign(e) / b)^2] = 1 / b^2


class PixelStudentT(PixelNoise):
    """y_k ~ StudentT(nu, f(G(w))_k, s): heavy tails, so outlying pixels pull the fit less.

    Args:
        scale: s, fixed or learned. df: nu > 0 (default 4).
    """

    def __init__(self, scale: Union[float, ScalarLatent], df: float = 4.0) -> None:
        super().__init__(scale)
        if not df > 0:
            raise BRGMError(f"Student-t degrees of freedom must be positive; got {df}")
        self.df = float(df)

    def element(self, loc, scale):
        return dist.StudentT(self.df, loc, scale)

    def fisher(self, scale):
        return (self.df + 1.0) / ((self.df + 3.0) * scale ** 2)

    def config(self) -> dict:
        return {**super().config(), "df": self.df}


__all__ = ["PixelLaplace", "PixelStudentT"]
