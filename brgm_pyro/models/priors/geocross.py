"""PULSE's GEOCROSS factor: squared geodesic distances between the latents' directions."""

from __future__ import annotations

import torch
from torch import Tensor

from brgm_pyro.models.priors.base import Factor


class GeocrossFactor(Factor):
    """log phi(w) = -weight * sum_{i<j} d_geo(u_i, u_j)^2, u_i = w_i / |w_i|.

    d_geo(a, b) = 2 atan2(|a - b|, |a + b|) is the angle between unit vectors, computed with a
    smoothed norm sqrt(|.|^2 + eps) so the gradient stays finite at a = b (where the exact one
    is undefined).
    """

    site = "w_geocross"
    term = "geocross"

    def __init__(self, weight: float = 1.0, eps: float = 1e-9) -> None:
        self.weight, self.eps = float(weight), eps

    def log_factor(self, w: Tensor) -> Tensor:
        u = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        L = w.shape[-2]
        iu = torch.triu_indices(L, L, offset=1, device=w.device)
        a, b = u[..., iu[0], :], u[..., iu[1], :]
        diff = ((a - b).pow(2).sum(-1) + self.eps).sqrt()
        summ = ((a + b).pow(2).sum(-1) + self.eps).sqrt()
        d = 2 * torch.atan2(diff, summ)
        return -self.weight * d.pow(2).sum(-1)

    def config(self) -> dict:
        return {"geocross_weight": self.weight}
