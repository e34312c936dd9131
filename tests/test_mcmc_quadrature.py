"""NUTS on a tiny nonlinear BRGM model against numerical quadrature of its posterior.

Two latent vectors in 2-D (L = 2, d = 2, so w has 4 coordinates), the paper's prior
prod_i N(w_i | mu, sigma^2) * exp(kappa cos angle(w_1, w_2)) and a nonlinear generator
G(w) = tanh(A vec(w) + b) observed through 3 pixels with Gaussian noise. The posterior is
non-Gaussian (the colinearity factor bends it); its moments are computed by a Riemann sum on a
4-D grid with an independently written numpy density, and compared with NUTS draws (run on the
project's Pyro model) by ESS-based z-scores.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.inference.mcmc.hmc import StatsNUTS
from brgm_pyro.models.brgm import BRGMModel
from brgm_pyro.models.corruptions import Identity
from brgm_pyro.models.generators import Generator
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import ColinearityFactor, GaussianPrior, ProductPrior
from tests.test_mcmc_helpers import run_kernel, zscores

MU = np.array([0.8, 0.4])
SIGMA = 0.6
KAPPA = 2.0
SIGMA_Y = 0.25


class TanhGenerator(Generator):
    """G(w) = tanh(A vec(w) + b) as a (1, 1, 3)... image: 3 pixels laid out as C=3, H=W=1."""

    num_ws, w_dim, z_dim, img_channels, img_resolution = 2, 2, 2, 3, 1

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A = torch.randn(3, 4, generator=g) * 0.8
        self.b = torch.randn(3, generator=g) * 0.2

    def synthesis(self, ws):
        return torch.tanh(ws.reshape(ws.shape[0], 4) @ self.A.T + self.b).reshape(-1, 3, 1, 1)

    def mapping(self, z):
        return z


def _numpy_log_post(W: np.ndarray, A: np.ndarray, b: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Unnormalised log posterior on points W (N, 4) = (w1x, w1y, w2x, w2y)."""
    w1, w2 = W[:, :2], W[:, 2:]
    lp = -0.5 * (((w1 - MU) ** 2).sum(1) + ((w2 - MU) ** 2).sum(1)) / SIGMA ** 2
    cos = (w1 * w2).sum(1) / np.maximum(np.linalg.norm(w1, axis=1) * np.linalg.norm(w2, axis=1), 1e-12)
    lp += KAPPA * cos
    pred = np.tanh(W @ A.T + b)
    lp += -0.5 * ((pred - y) ** 2).sum(1) / SIGMA_Y ** 2
    return lp


def _functions(W: np.ndarray) -> np.ndarray:
    """Test functions: the 4 coordinates, their squares, w1.w2 and the cosine of the angle."""
    w1, w2 = W[..., :2], W[..., 2:]
    cos = (w1 * w2).sum(-1) / np.maximum(np.linalg.norm(w1, axis=-1) * np.linalg.norm(w2, axis=-1), 1e-12)
    return np.concatenate([W, W ** 2, (w1 * w2).sum(-1, keepdims=True), cos[..., None]], -1)


@pytest.fixture(scope="module")
def problem():
    G = TanhGenerator()
    prior = ProductPrior(GaussianPrior(torch.tensor(MU, dtype=torch.float32), SIGMA, 2, 2),
                         [ColinearityFactor(KAPPA)])
    model = BRGMModel(G, prior, Identity(), [PixelGaussian(SIGMA_Y)])
    w_true = torch.tensor([[[1.0, 0.2], [0.3, 0.9]]])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        y = G(w_true) + SIGMA_Y * torch.randn(1, 3, 1, 1, generator=g)
    # quadrature on a grid covering the prior +- 5 sigma (the posterior is narrower)
    n = 34
    axis = np.linspace(-5 * SIGMA, 5 * SIGMA, n)
    grids = np.meshgrid(*[axis + MU[i % 2] for i in range(4)], indexing="ij")
    W = np.stack([x.reshape(-1) for x in grids], 1)
    lp = _numpy_log_post(W, G.A.double().numpy(), G.b.double().numpy(), y.double().numpy().reshape(3))
    p = np.exp(lp - lp.max())
    p /= p.sum()
    truth = p @ _functions(W)
    return model, y, truth


def test_quadrature_density_matches_the_pyro_model(problem):
    """The independent numpy density and the model's log joint agree up to a constant."""
    model, y, _ = problem
    W = torch.randn(20, 1, 2, 2) * SIGMA + torch.tensor(MU, dtype=torch.float32)
    ref = _numpy_log_post(W.reshape(20, 4).double().numpy(), model.generator.A.double().numpy(),
                          model.generator.b.double().numpy(), y.double().numpy().reshape(3))
    got = model.log_joint(W, y).reshape(20).double().numpy()
    assert np.allclose(got - got[0], ref - ref[0], atol=1e-3)


def test_nuts_matches_quadrature(problem):
    model, y, truth = problem
    w, infos, _ = run_kernel(StatsNUTS(model), y, 800, 300, seed=11)
    f = _functions(w.reshape(-1, 4))
    z = zscores(f, truth)
    assert np.all(np.abs(z) < 4.5), z
    assert not any(i["diverging"] for i in infos)
