"""The priors on W+, value by value, against scipy and sums written out here (issue 31's mutation
run of models/priors/).

* GaussianPrior / StandardNormalPrior: the log density is the sum of scipy's normal log densities
  (scalar and per-dimension sigma); the Laplace curvature is 1 / sigma^2; seeded starting draws
  have the prior's mean and std; the refusal of sigma <= 0; what run.json records (config).
* ColinearityFactor: kappa * sum over pairs i < j of the cosine of (w_i, w_j), computed with numpy,
  for one latent and a batch.
* ProductPrior: log p = base + every factor; its sites, config and delegated statements.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import scipy.stats as st
import torch

from brgm_pyro.models.priors import ColinearityFactor, GaussianPrior, ProductPrior, StandardNormalPrior
from brgm_pyro.models.priors.base import Prior

L, D = 3, 4
MU = torch.tensor([0.5, -1.0, 0.0, 2.0])
SIGMA = torch.tensor([0.3, 1.0, 2.5, 0.7])


def _w(n: int | None = None, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (L, D) if n is None else (n, L, D)
    return torch.randn(*shape, generator=g) * 1.5


@pytest.mark.parametrize("scalar", [False, True])
def test_gaussian_log_density_is_scipys(scalar):
    mu, sigma = (0.3, 0.8) if scalar else (MU, SIGMA)
    prior = GaussianPrior(mu, sigma, L, D)
    w = _w(5)
    expect = st.norm.logpdf(w.double().numpy(), np.asarray(mu, float), np.asarray(sigma, float)).sum((-2, -1))
    np.testing.assert_allclose(prior.log_prob(w).double().numpy(), expect, rtol=1e-5)
    assert tuple(prior.distribution().event_shape) == (L, D)
    np.testing.assert_allclose(prior.curvature().numpy(), np.broadcast_to(1 / np.asarray(sigma, float) ** 2, (L, D)),
                               rtol=1e-6)
    np.testing.assert_array_equal(prior.init_value().numpy(), np.broadcast_to(np.asarray(mu, np.float32), (L, D)))
    np.testing.assert_array_equal(prior.reference_scale().numpy(),
                                  np.broadcast_to(np.asarray(sigma, np.float32), (L, D)))
    assert prior.config() == {"sigma_form": "scalar" if scalar else "per-dimension"}


def test_two_dimensional_sigma_is_per_dimension_and_bad_sigma_is_refused():
    assert GaussianPrior(0.0, torch.tensor([1.0, 2.0]), 1, 2).config() == {"sigma_form": "per-dimension"}
    GaussianPrior(0.0, 0.5, 1, 2)  # a scale below 1 is a scale
    for bad in (0.0, -1.0, torch.tensor([1.0, 0.0])):
        with pytest.raises(ValueError, match="positive"):
            GaussianPrior(0.0, bad, 1, 2)


def test_starting_draws_have_the_prior_moments_and_to_keeps_the_density():
    prior = GaussianPrior(MU, SIGMA, L, D)
    x = prior.draw_init(20_000, torch.Generator().manual_seed(1)).double()
    assert tuple(x.shape) == (20_000, L, D)
    se = SIGMA.double() / 20_000 ** 0.5
    assert ((x.mean(0) - MU.double()).abs() / se).max() < 4.5
    assert ((x.std(0) / SIGMA.double()) - 1).abs().max() < 0.03
    before = prior.log_prob(_w())
    assert torch.allclose(prior.to("cpu").log_prob(_w()), before)


def test_standard_normal_prior_is_n01():
    prior = StandardNormalPrior(L, D)
    w = _w(3)
    np.testing.assert_allclose(prior.log_prob(w).double().numpy(), st.norm.logpdf(w.double().numpy()).sum((-2, -1)),
                               rtol=1e-5)


def _colinearity_by_hand(w: np.ndarray, kappa: float) -> np.ndarray:
    out = np.zeros(w.shape[:-2])
    for i in range(w.shape[-2]):
        for j in range(i + 1, w.shape[-2]):
            a, b = w[..., i, :], w[..., j, :]
            out += (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    return kappa * out


def test_colinearity_is_kappa_times_the_sum_of_pairwise_cosines():
    f = ColinearityFactor(2.5)
    for w in (_w(), _w(6)):
        np.testing.assert_allclose(f.log_factor(w).double().numpy(), _colinearity_by_hand(w.double().numpy(), 2.5),
                                   rtol=1e-5)
    assert f.config() == {"kappa": 2.5} and isinstance(f.config()["kappa"], float)
    assert (f.site, f.term) == ("w_colinearity", "colinearity")


def test_product_prior_adds_the_factors_and_delegates_to_its_base():
    base = GaussianPrior(MU, SIGMA, L, D)
    prior = ProductPrior(base, [ColinearityFactor(2.0), ColinearityFactor(0.5)])
    w = _w(4)
    expect = st.norm.logpdf(w.double().numpy(), MU.double().numpy(), SIGMA.double().numpy()).sum((-2, -1)) \
        + _colinearity_by_hand(w.double().numpy(), 2.5)
    np.testing.assert_allclose(prior.log_prob(w).double().numpy(), expect, rtol=1e-5)
    assert prior.sites() == {"w": "prior", "w_colinearity": "colinearity"}
    assert (prior.num_ws, prior.w_dim, prior.site, prior.term) == (L, D, "w", "prior")
    assert prior.config() == {"base": "GaussianPrior", "sigma_form": "per-dimension", "kappa": 0.5,
                              "factors": ["ColinearityFactor", "ColinearityFactor"]}
    assert torch.equal(prior.curvature(), base.curvature()) and torch.equal(prior.init_value(), base.init_value())
    assert torch.equal(prior.reference_scale(), base.reference_scale()) and prior.latents() == []
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(prior.draw_init(2, g1), base.draw_init(2, g2))
    # in a model: the factor is a pyro.factor site whose log-probability is the factor's value
    one = ProductPrior(base, [ColinearityFactor(2.0)])
    tr = pyro.poutine.trace(lambda: one.sample()).get_trace()
    w0 = tr.nodes["w"]["value"]
    assert torch.allclose(tr.nodes["w_colinearity"]["fn"].log_prob(w0), ColinearityFactor(2.0).log_factor(w0))


def test_a_prior_that_does_not_state_a_quantity_says_which_method_needs_it():
    from brgm_pyro.errors import BRGMError

    class Bare(Prior):
        num_ws, w_dim = 1, 2

    with pytest.raises(BRGMError, match="Bare does not state an initial value, which every inference method"):
        Bare().init_value()
    with pytest.raises(BRGMError, match="how to draw starting points, which MCMC"):
        Bare().draw_init(1, torch.Generator())
    assert Bare().reference_scale() is None and Bare().curvature() is None and Bare().latents() == []
    assert Bare().sites() == {"w": "prior"} and Bare().config() == {}
