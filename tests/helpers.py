"""Closed-form posteriors of the linear-Gaussian BRGM model, shared by tests."""

from __future__ import annotations

import torch

from brgm_pyro.models.brgm import BRGMModel


def linear_gaussian_posterior(model: BRGMModel, y: torch.Tensor):
    """Exact posterior N(mean, cov) of vec(w) for one image, for a linear G and corruption, a
    Gaussian prior and a pixel-Gaussian likelihood (tempered by the model's temperature).

    Returns (mean (D,), cov (D, D)) in float64; D = L d.
    """
    G = model.generator
    L, d = G.num_ws, G.w_dim
    D = L * d
    with torch.no_grad():
        base = model.predict(torch.zeros(1, L, d, dtype=torch.float64).float()).double().reshape(-1)
        eye = torch.eye(D).reshape(D, L, d)
        J = (model.predict(eye).double().reshape(D, -1) - base).T  # (P, D)
    mask = model.mask
    if mask is not None:
        keep = mask.expand(model.obs_shape).reshape(-1)
        J, base, yv = J[keep], base[keep], y.double().reshape(-1)[keep]
    else:
        yv = y.double().reshape(-1)
    dist = model.prior.distribution().base_dist
    m = dist.loc.double().reshape(-1)
    s2 = dist.scale.double().reshape(-1) ** 2
    sp2 = model.likelihoods[0].sigma ** 2 * model.temperature
    prec = torch.diag(1 / s2) + J.T @ J / sp2
    cov = torch.linalg.inv(prec)
    mean = cov @ (m / s2 + J.T @ (yv - base) / sp2)
    return mean, cov
