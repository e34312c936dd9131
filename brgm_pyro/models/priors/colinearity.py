"""The von Mises colinearity factor of BRGM (paper Eq. 2, second factor)."""

from __future__ import annotations

from torch import Tensor

from brgm_pyro.models.priors.base import Factor, pairwise_cosines


class ColinearityFactor(Factor):
    """log phi(w) = kappa * sum_{i<j} cos(angle(w_i, w_j)).

    The von Mises density M(theta | 0, kappa) ∝ exp(kappa cos theta) with theta the angle between
    w_i and w_j, so cos(theta) is the cosine similarity: no arccos is ever taken (its gradient is
    infinite at theta = 0). The normaliser -log(2 pi I_0(kappa)) per pair is a constant and
    omitted. kappa > 0 pulls the L vectors towards a common direction.
    In the paper's loss (Eq. 6) this term is lambda_c * L_colin with lambda_c = -2 kappa.
    """

    site = "w_colinearity"
    term = "colinearity"

    def __init__(self, kappa: float) -> None:
        self.kappa = float(kappa)

    def log_factor(self, w: Tensor) -> Tensor:
        return self.kappa * pairwise_cosines(w).sum(-1)

    def config(self) -> dict:
        return {"kappa": self.kappa}
