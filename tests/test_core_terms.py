"""Value checks of the core terms against derivations that share no code with them.

* VI's ELBO with a constrained site (a learned noise level sigma = exp(u)): every term against
  Gauss-Hermite quadrature over u and closed-form Gaussian expectations over w, the entropy
  including the Jacobian E_q[log |d sigma / d u|] = E_q[u].
* The inverse-gamma hyperprior on the guide's sigma_v: against scipy.stats.invgamma.logpdf.
* The reliance map's importance-weighted prior moments: against the closed form of a Gaussian
  base times a quadratic factor (RLS's cross factor), itself Gaussian.
* The learned-width Gaussian kernel: equal to the fixed kernel of the same width, and to a
  kernel matrix written out by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from pyro.infer.autoguide.initialization import init_to_value
from scipy import stats

from brgm_pyro.inference.engine import ELBOTerms
from brgm_pyro.models.brgm import BRGMModel, build_model
from brgm_pyro.models.corruptions import Denoising, Identity, SuperResolution
from brgm_pyro.models.corruptions.superres import blur_width_latent
from brgm_pyro.models.generators import LinearGenerator
from brgm_pyro.models.latents import ScalarLatent
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import GaussianPrior, ProductPrior
from brgm_pyro.models.priors.rls import CrossFactor
from brgm_pyro.reliance import prior_image_moments

IG = (3.0, 0.6)  # InverseGamma(a, b) on the learned sigma
SIGMA_Q, SCALE_Q = 0.2, 0.3  # the guide: log sigma ~ N(log 0.2, 0.3^2), every w_k with std 0.3


def _noise_model():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=3)
    lat = ScalarLatent("sigma_pixel", dist.InverseGamma(torch.tensor(IG[0]), torch.tensor(IG[1])))
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel=lat)
    g = torch.Generator().manual_seed(5)
    w0 = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w0) + 0.3 * torch.randn(1, *model.obs_shape, generator=g)
    return model, y, w0


def _elbo_terms(model, y, w_loc, particles, **kw):
    """ELBOTerms' named terms (a dict of floats) at a fixed AutoNormal guide."""
    with pyro.get_param_store().scope():
        q = AutoNormal(model, init_loc_fn=init_to_value(values={"w": w_loc, "sigma_pixel": torch.tensor(SIGMA_Q)}),
                       init_scale=SCALE_Q)
        q(y)
        assert float(q.locs.sigma_pixel.detach()) == pytest.approx(math.log(SIGMA_Q), abs=1e-6)  # u = log sigma
        elbo = ELBOTerms(model, q, num_particles=particles, **kw)
        with torch.no_grad():
            return dict(zip(elbo.names, elbo(y)[1].tolist()))


def _quadrature_terms(model, y, w_loc) -> dict[str, float]:
    """The same terms by hand: Gauss-Hermite over u = log sigma, closed forms over w."""
    G = model.generator
    A = G.A.double().reshape(-1, G.num_ws * G.w_dim).numpy()
    b = G.b.double().reshape(-1).numpy()
    base = model.prior.distribution().base_dist
    m0, v0 = base.loc.double().reshape(-1).numpy(), base.scale.double().reshape(-1).numpy() ** 2
    m, v = w_loc.double().reshape(-1).numpy(), np.full(m0.shape, SCALE_Q ** 2)
    yv = y.double().reshape(-1).numpy()
    x, wq = np.polynomial.hermite_e.hermegauss(80)  # E_{z~N(0,1)} f(z) = sum wq f(x) / sqrt(2 pi)
    wq = wq / math.sqrt(2 * math.pi)
    u = math.log(SIGMA_Q) + SCALE_Q * x
    sig = np.exp(u)
    resid2 = ((yv - A @ m - b) ** 2).sum() + (A ** 2 @ v).sum()  # E_q ||y - A w - b||^2
    P = yv.size
    e_pixel = (wq * (-0.5 * P * np.log(2 * math.pi * sig ** 2) - resid2 / (2 * sig ** 2))).sum()
    e_sigma_prior = (wq * stats.invgamma.logpdf(sig, IG[0], scale=IG[1])).sum()
    e_prior = (-0.5 * np.log(2 * math.pi * v0) - ((m - m0) ** 2 + v) / (2 * v0)).sum()
    n = m.size + 1
    h_u = n * 0.5 * math.log(2 * math.pi * math.e * SCALE_Q ** 2)
    h_sigma = h_u + (wq * u).sum()  # H[q over (w, sigma)] = H[q over (w, u)] + E_q[log |d sigma / d u|]
    return {"pixel": -e_pixel, "sigma_pixel_prior": -e_sigma_prior, "prior": -e_prior, "entropy": -h_sigma}


def test_vi_elbo_with_a_learned_positive_scale_against_quadrature():
    """Each ELBO term at a fixed guide. The entropy is over sigma, not u: flipping the sign of the
    Jacobian term moves it by 2 E[u] = 2 log 0.2 = -3.2 (tolerance 0.02: 4 MC standard errors)."""
    model, y, w0 = _noise_model()
    got = _elbo_terms(model, y, w0, particles=20000)
    exact = _quadrature_terms(model, y, w0)
    assert set(got) == set(exact)
    assert got["entropy"] == pytest.approx(exact["entropy"], abs=0.02)
    assert got["prior"] == pytest.approx(exact["prior"], abs=0.02)  # w's MC error: ~0.006
    assert got["sigma_pixel_prior"] == pytest.approx(exact["sigma_pixel_prior"], abs=0.05)
    assert got["pixel"] == pytest.approx(exact["pixel"], rel=0.01)


@pytest.mark.parametrize("ab", [(0.1, 0.95), IG])
@pytest.mark.parametrize("units", ["absolute", "prior"])
def test_hyperprior_is_the_inverse_gamma_log_density(ab, units):
    """The hyperprior term is -sum_k log InvGamma(s_k | a, b) of the guide's marginal stds s_k
    (divided by the prior's std in 'prior' units), scipy's density; the guide's stds are
    parameters, not random variables, so no Jacobian enters (the unit change only shifts the
    loss by a constant)."""
    model, y, w0 = _noise_model()
    got = _elbo_terms(model, y, w0, particles=1, hyperprior=ab, hyperprior_units=units)["hyperprior"]
    ref = 1.0 if units == "absolute" else model.prior.sigma.double().expand(2, 3).numpy()
    s = np.full((2, 3), SCALE_Q) / ref
    assert got == pytest.approx(-stats.invgamma.logpdf(s, ab[0], scale=ab[1]).sum(), rel=1e-5, abs=1e-4)


def _cross_closed_form(G, prior: GaussianPrior, weight: float):
    """Pixel mean and variance of x = A vec(w) + b under N(m0, diag v0) * exp(-weight sum_{i<j} |w_i - w_j|^2).

    The factor is -weight * vec(w)^T (Lap (x) I_d) vec(w), Lap = L I - 1 1^T, so the product is
    Gaussian with precision diag(1 / v0) + 2 weight Lap (x) I_d."""
    L, d = G.num_ws, G.w_dim
    m0 = prior.mu.double().expand(L, d).reshape(-1)
    v0 = prior.sigma.double().expand(L, d).reshape(-1) ** 2
    lap = L * torch.eye(L, dtype=torch.float64) - torch.ones(L, L, dtype=torch.float64)
    prec = torch.diag(1 / v0) + 2 * weight * torch.kron(lap, torch.eye(d, dtype=torch.float64))
    cov = torch.linalg.inv(prec)
    mean = cov @ (m0 / v0)
    A, b = G.A.double().reshape(-1, L * d), G.b.double().reshape(-1)
    return A @ mean + b, (A @ cov @ A.T).diagonal()


def test_reliance_prior_moments_are_the_factor_weighted_prior_moments():
    """prior_image_moments of base * factor (self-normalised importance sampling) against the
    closed form; unweighted base draws miss the variance by ~20 % (the factor shrinks it)."""
    G = LinearGenerator(num_ws=3, w_dim=2, img_channels=1, img_resolution=4, scale=1.0, seed=7)
    base = GaussianPrior(torch.tensor([0.3, -0.2]), torch.tensor([1.0, 0.7]), num_ws=3, w_dim=2)
    weight = 0.15
    model = BRGMModel(G, ProductPrior(base, [CrossFactor(weight)]), Denoising(0.1), [PixelGaussian(0.1)])
    mean, var, ess = prior_image_moments(model, 40000, seed=2)
    exact_mean, exact_var = _cross_closed_form(G, base, weight)
    assert 0.3 * 40000 < ess < 0.95 * 40000
    plain_var = (G.A.double().reshape(-1, 6) ** 2 @ base.sigma.double().expand(3, 2).reshape(-1) ** 2)
    assert ((plain_var - exact_var) / exact_var).abs().max() > 0.15  # the check below can tell them apart
    assert torch.allclose(mean.reshape(-1), exact_mean, atol=0.03 * exact_var.sqrt().max().item())
    assert ((var.reshape(-1) - exact_var) / exact_var).abs().max() < 0.04


def _hand_gauss_matrix(size: int, factor: int, width: float) -> np.ndarray:
    """Row r: exp(-t^2 / 2 width^2) for |t| <= 4 width, t = i - (r s + (s - 1) / 2), rows summing to 1."""
    out = np.zeros((size // factor, size))
    for r in range(size // factor):
        for i in range(size):
            t = i - (r * factor + (factor - 1) / 2)
            out[r, i] = math.exp(-0.5 * (t / width) ** 2) if abs(t) <= 4 * width else 0.0
        out[r] /= out[r].sum()
    return out


@pytest.mark.parametrize("factor, widths", [(2, [0.6, 1.3]), (4, [2.0, 0.9]), (1, [0.8, 1.7])])
def test_learned_width_kernel_equals_the_fixed_kernel(factor, widths):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    learned = SuperResolution(factor, "gauss", gauss_sigma=blur_width_latent(factor, per_image=True))
    got = learned(x, {"kernel_width": torch.tensor(widths, dtype=torch.float64)})
    for b, t in enumerate(widths):
        fixed = SuperResolution(factor, "gauss", gauss_sigma=t)(x[b:b + 1].float()).double()
        D = torch.tensor(_hand_gauss_matrix(16, factor, t))
        assert torch.allclose(got[b], D @ x[b] @ D.T, atol=1e-10)
        assert torch.allclose(got[b:b + 1], fixed, atol=1e-5)
    shared = SuperResolution(factor, "gauss", gauss_sigma=blur_width_latent(factor))
    one = shared(x, {"kernel_width": torch.tensor(widths[0], dtype=torch.float64)})
    assert one.shape == x[:, :, ::factor, ::factor].shape
    assert torch.allclose(one[1], torch.tensor(_hand_gauss_matrix(16, factor, widths[0])) @ x[1] @
                          torch.tensor(_hand_gauss_matrix(16, factor, widths[0])).T, atol=1e-10)
