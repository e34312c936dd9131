"""The prior-reliance map against its closed form on the linear-Gaussian model.

r_k = (J S J^T)_kk / (J S_0 J^T)_kk for x = J w + b, prior N(m, S_0) and exact posterior
N(mu, S) (tests/helpers.py); with a per-pixel prior in Gaussian noise (denoising) it is
BIGPrior's phi = 1 / (1 + s_x^2 / s_n^2). The estimator is fed exact posterior draws, so only
Monte-Carlo error separates it from the closed form (seeded; tolerances ~4 standard errors).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.inference.arviz_io import read_inference_data, to_inference_data, write_inference_data
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.models.brgm import BRGMModel, build_model
from brgm_pyro.models.corruptions import Blur, Colorization, Denoising, Inpainting
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import GaussianPrior, make_prior
from brgm_pyro.reliance import (add_to_inference_data, prior_image_moments, prior_reliance, reliance_image,
                                sample_prior_latents, save_reliance_png)
from tests.helpers import linear_gaussian_posterior


def _exact_draws(model, y, n, seed):
    """Exact posterior draws of x = G(w): (n, B, C, H, W), one image at a time."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(y.shape[0]):
        mean, cov = linear_gaussian_posterior(model, y[b:b + 1])
        L = torch.linalg.cholesky(cov)
        w = mean + torch.randn(n, mean.numel(), generator=g, dtype=torch.float64) @ L.T
        with torch.no_grad():
            out.append(model.render(w.float().reshape(n, *model.generator.latent_shape)))
    return torch.stack(out, 1)


def _closed_form(model, y):
    """(B, C, H, W) exact r from the covariances."""
    G = model.generator
    D = G.num_ws * G.w_dim
    J = G.A.double()  # x = A vec(w) + b
    s0 = torch.diag(model.prior.distribution().base_dist.scale.double().reshape(-1) ** 2)
    prior = torch.diagonal(J @ s0 @ J.T)
    out = []
    for b in range(y.shape[0]):
        _, cov = linear_gaussian_posterior(model, y[b:b + 1])
        out.append(torch.diagonal(J @ cov @ J.T) / prior)
    assert D == cov.shape[0]
    return torch.stack(out).reshape(y.shape[0], *G.image_shape)


def _result(model, images):
    return InferenceResult("exact", {model.image_site: model.init_latents(images.shape[1])}, images.mean(0),
                           samples=images)


@pytest.mark.parametrize("corruption", ["colorize", "deblur", "inpaint"])
def test_matches_the_closed_form_on_the_linear_gaussian_model(corruption):
    G = LinearGenerator(num_ws=4, w_dim=8, img_channels=3, img_resolution=8, seed=2)
    stats = compute_latent_stats(G, num_samples=2000)
    f = {"colorize": Colorization(), "deblur": Blur("gauss", sigma=0.6, padding="reflect"),
         "inpaint": Inpainting(torch.arange(64).reshape(8, 8) % 3 == 0)}[corruption]
    model = BRGMModel(G, make_prior("gaussian", G, stats), f, [PixelGaussian(0.5)])
    with torch.no_grad():
        y = f(G(model.init_latents(2) + 0.3 * torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(1))))
    exact = _closed_form(model, y)
    assert float(exact.min()) > 0.2 and float(exact.max()) < 0.8  # neither trivial end
    rel = prior_reliance(model, _result(model, _exact_draws(model, y, 20000, seed=3)), num_prior=20000, seed=4)
    assert rel.prior_ess == 20000 and rel.num_posterior == 20000
    err = (rel.prior_reliance.double() - exact).abs() / exact
    assert float(err.max()) < 0.07, float(err.max())  # ratio of two variances: 1.4 % standard error, 384 pixels
    assert float(err.mean()) < 0.02
    assert torch.allclose(rel.data_reliance, 1 - rel.prior_reliance.clamp(0, 1))


def test_is_bigpriors_phi_for_a_pixel_prior_in_gaussian_noise():
    """x = w (G the identity), w_k ~ N(m_k, s_k^2), y = x + N(0, s_n^2): r_k = 1 / (1 + s_k^2 / s_n^2)."""
    G = LinearGenerator(num_ws=1, w_dim=16, img_channels=1, img_resolution=4, seed=0)
    G.A.data = torch.eye(16)
    G.b.data.zero_()
    s = torch.linspace(0.02, 0.4, 16)
    prior = GaussianPrior(torch.zeros(16), s, 1, 16)
    sn = 0.1
    model = BRGMModel(G, prior, Denoising(sn), [PixelGaussian(sn)])
    y = Denoising(sn).simulate(torch.zeros(1, 1, 4, 4), torch.Generator().manual_seed(0))
    phi = (1 / (1 + s ** 2 / sn ** 2)).reshape(1, 1, 4, 4)
    rel = prior_reliance(model, _result(model, _exact_draws(model, y, 40000, seed=5)), num_prior=40000, seed=6)
    assert torch.allclose(rel.prior_reliance, phi, rtol=0.05)
    # and the posterior mean is BIGPrior's fusion (1 - phi) y + phi m (m = 0 here)
    mean, _ = linear_gaussian_posterior(model, y)
    assert torch.allclose(mean.float().reshape(1, 1, 4, 4), (1 - phi) * y, atol=1e-5)


def test_colinearity_factor_is_importance_weighted():
    G = LinearGenerator(num_ws=3, w_dim=4, img_channels=1, img_resolution=4, seed=3)
    stats = compute_latent_stats(G, num_samples=500)
    w0, none = sample_prior_latents(make_prior("gaussian", G, stats), 300, seed=1)
    w1, wt = sample_prior_latents(make_prior("brgm", G, stats, kappa=2.0), 300, seed=1)
    assert none is None and torch.equal(w0, w1)  # same base draws, then weights
    f = make_prior("brgm", G, stats, kappa=2.0).factors[0]
    assert torch.allclose(wt, torch.softmax(f.log_factor(w1).double(), 0))
    _, flat = sample_prior_latents(make_prior("brgm", G, stats, kappa=0.0), 10, seed=1)
    assert torch.allclose(flat, torch.full((10,), 0.1, dtype=flat.dtype))
    model = BRGMModel(G, make_prior("brgm", G, stats, kappa=2.0), Denoising(0.1), [PixelGaussian(0.1)])
    _, var, ess = prior_image_moments(model, 300, seed=1)
    assert 0 < ess < 300 and tuple(var.shape) == G.image_shape and bool((var > 0).all())


def test_end_to_end_vi_netcdf_and_png(tmp_path):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=3, img_resolution=4, seed=1)
    model = build_model(G, Colorization(), prior="gaussian", sigma_pixel=0.1,
                        stats=compute_latent_stats(G, num_samples=500))
    with torch.no_grad():
        y = model.predict(model.init_latents(2))
    res = run_vi(model, y, steps=30, num_samples=8, seed=0, progress=False)
    rel = prior_reliance(model, res, num_prior=256, seed=0)
    assert tuple(rel.prior_reliance.shape) == (2, 3, 4, 4) and torch.isfinite(rel.prior_reliance).all()
    idata = add_to_inference_data(to_inference_data(res, model, y), rel)
    back = read_inference_data(write_inference_data(idata, tmp_path / "posterior.nc"))
    np.testing.assert_allclose(back.reliance["prior_reliance"].values, rel.prior_reliance.double().numpy())
    assert back.reliance["prior_var"].dims == ("channel", "row", "col")
    assert "Var[x | y]" in back.reliance.attrs["definition"]
    img = reliance_image(rel)
    assert img.shape == (4, 2 * 4 + 1, 3) and img.min() >= 0 and img.max() <= 1
    path = save_reliance_png(rel, tmp_path / "reliance.png")
    assert path.is_file() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(BRGMError, match="at least 2 posterior draws"):
        prior_reliance(model, run_map(model, y, steps=2, progress=False))


def _joint_closed_form(model, y, tau: float, sn: float):
    """Exact posterior of (w, e) for x = A vec(w) + b + e, e ~ N(0, tau^2 I), y = mask * x + N(0, sn^2)
    (in-painting of one image): ((D,) mean of w, (D, D) cov of w, (P,) Var[x | y], (P,) Var[x])."""
    G = model.generator
    J = G.A.double()
    P, D = J.shape
    dist = model.prior.distribution().base_dist
    m0 = torch.cat([dist.loc.double().reshape(-1), torch.zeros(P, dtype=torch.float64)])
    p0 = torch.cat([dist.scale.double().reshape(-1) ** 2, torch.full((P,), tau ** 2, dtype=torch.float64)])
    K = torch.cat([J, torch.eye(P, dtype=torch.float64)], 1)  # x - b = K z, z = (w, e)
    keep = model.mask.expand(G.image_shape).reshape(-1)
    H = K[keep]
    resid = y.double().reshape(-1)[keep] - G.b.double().reshape(-1)[keep]
    cov = torch.linalg.inv(torch.diag(1 / p0) + H.T @ H / sn ** 2)
    mean = cov @ (m0 / p0 + H.T @ resid / sn ** 2)
    post_var = torch.diagonal(K @ cov @ K.T)
    prior_var = torch.diagonal(J @ torch.diag(p0[:D]) @ J.T) + tau ** 2
    return mean[:D], cov[:D, :D], post_var, prior_var


def test_with_the_discrepancy_term_matches_the_joint_closed_form_and_its_floor():
    """With x = G(w) + e the map is Var[G(w) + e | y] / (Var[G(w)] + tau^2): the model's own draws of
    e | w, y (predictive_images) are checked against the joint Gaussian posterior of (w, e). An
    observed pixel cannot go below the floor Var[e | w, y] / Var[x] = (tau^2 sn^2 / (tau^2 + sn^2)) / Var[x]."""
    from brgm_pyro.models.discrepancy import Discrepancy

    G = LinearGenerator(num_ws=4, w_dim=8, img_channels=1, img_resolution=8, seed=2)
    stats = compute_latent_stats(G, num_samples=2000)
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:6, 2:6] = False  # a 4x4 hole
    tau, sn = 0.3, 0.2
    model = BRGMModel(G, make_prior("gaussian", G, stats), Inpainting(mask), [PixelGaussian(sn)],
                      discrepancy=Discrepancy(tau))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        x = G(model.init_latents(1) + 0.3 * torch.randn(1, 4, 8, generator=gen))
        x = x + tau * torch.randn(1, 1, 8, 8, generator=gen)
        y = model.corruption(x) + sn * torch.randn(1, 1, 8, 8, generator=gen) * mask
    mean, cov, post_var, prior_var = _joint_closed_form(model, y, tau, sn)
    n = 20000
    w = mean + torch.randn(n, mean.numel(), generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    images = model.predictive_images({model.image_site: w.float().reshape(n, 1, 4, 8)}, y, seed=7)
    rel = prior_reliance(model, _result(model, images), num_prior=20000, seed=4)
    exact = (post_var / prior_var).reshape(1, 1, 8, 8)
    err = (rel.prior_reliance.double() - exact).abs() / exact
    assert float(err.max()) < 0.07, float(err.max())
    floor = (tau ** 2 * sn ** 2 / (tau ** 2 + sn ** 2)) / prior_var.reshape(1, 1, 8, 8)
    r = rel.prior_reliance.double()
    assert bool((exact[..., mask] >= floor[..., mask] - 1e-9).all())  # the closed form respects its floor
    assert float(r[..., mask].min()) > 0.9 * float(floor[..., mask].min())
    # the hole leans on the prior (here 0.49: G's 32 latents tie it to the observed ring), the observed
    # pixels on the data (0.09, beside their floor 0.08)
    assert float(r[..., ~mask].mean()) > 3 * float(r[..., mask].mean())
    assert float(r[..., mask].mean()) < 1.5 * float(floor[..., mask].mean())
