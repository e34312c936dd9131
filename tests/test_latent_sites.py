"""Scalar latents against exact posteriors: a learned noise level and an inferred blur width.

Linear G, Gaussian prior on w, Gaussian pixel noise. Given the scalar theta (sigma, or the
kernel width t) the model is linear-Gaussian, so w integrates out in closed form:

    p(y | theta) = N(y | F_t (A mu + b), F_t A S0 A^T F_t^T + sigma^2 I)

and the posterior of theta follows from one-dimensional quadrature of p(theta) p(y | theta);
E[w | y] = int p(theta | y) E[w | y, theta] dtheta. NUTS (the project's runner, every site),
MAP (against a direct optimiser of the joint density) and VI are checked against it.
"""

from __future__ import annotations

import math

import numpy as np
import pyro.distributions as dist
import pytest
import torch
from scipy.optimize import minimize

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.inference.mcmc import run_mcmc
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity, SuperResolution
from brgm_pyro.models.corruptions.superres import blur_width_latent
from brgm_pyro.models.generators import LinearGenerator
from brgm_pyro.models.latents import ScalarLatent
from tests.test_mcmc_helpers import zscores

SIGMA_TRUE = 0.3
IG = (3.0, 0.6)  # InverseGamma(a, b) on sigma: mean 0.3, mode 0.15


def _linear_parts(model):
    """(A (P, D), c (P,)) with f(G(w)) = A vec(w) + c for a linear model at fixed scalars, float64."""
    G = model.generator
    L, d = G.num_ws, G.w_dim
    D = L * d
    A = G.A.double().reshape(-1, D)
    b = G.b.double()
    return A, b


def _prior(model):
    base = model.prior.distribution().base_dist
    return base.loc.double().reshape(-1), base.scale.double().reshape(-1) ** 2


def _cond_posterior(F, A, b, m0, s0, sigma, y):
    """p(y | theta) (log) and E[w | y, theta] for the linear model with operator F."""
    J, c = F @ A, F @ b
    cov_y = J @ torch.diag(s0) @ J.T + sigma ** 2 * torch.eye(J.shape[0], dtype=torch.float64)
    r = y - (J @ m0 + c)
    lml = dist.MultivariateNormal(torch.zeros_like(r), covariance_matrix=cov_y).log_prob(r)
    mean = m0 + s0 * (J.T @ torch.linalg.solve(cov_y, r))
    return float(lml), mean


def _quadrature(grid, log_prior, lml, means):
    """Posterior mean, 5/95 % quantiles and density of theta on ``grid``, and E[w | y]."""
    lp = log_prior + lml
    p = np.exp(lp - lp.max())
    dx = np.gradient(grid)
    p = p / (p * dx).sum()
    cdf = np.cumsum(p * dx)
    q05, q95 = np.interp([0.05, 0.95], cdf, grid)
    ew = (p[:, None] * dx[:, None] * means).sum(0)
    return {"mean": float((grid * p * dx).sum()), "q05": float(q05), "q95": float(q95), "density": p,
            "grid": grid, "ew": ew}


def _quantile_z(draws: np.ndarray, q: float, truth: float, grid, density, ess: float) -> float:
    """z-score of an empirical quantile: se = sqrt(q (1 - q) / ESS) / p(truth)."""
    f = float(np.interp(truth, grid, density))
    return (float(np.quantile(draws, q)) - truth) / (math.sqrt(q * (1 - q) / ess) / f)


@pytest.fixture(scope="module")
def noise_problem():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=3)
    lat = ScalarLatent("sigma_pixel", dist.InverseGamma(torch.tensor(IG[0]), torch.tensor(IG[1])))
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel=lat)
    g = torch.Generator().manual_seed(5)
    w_true = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w_true) + SIGMA_TRUE * torch.randn(1, *model.obs_shape, generator=g)
    A, b = _linear_parts(model)
    m0, s0 = _prior(model)
    yv = y.double().reshape(-1)
    grid = np.linspace(0.02, 2.0, 4000)
    F = torch.eye(A.shape[0], dtype=torch.float64)
    rows = [_cond_posterior(F, A, b, m0, s0, s, yv) for s in grid]
    log_prior = dist.InverseGamma(torch.tensor(IG[0], dtype=torch.float64),
                                  torch.tensor(IG[1], dtype=torch.float64)).log_prob(torch.tensor(grid)).numpy()
    exact = _quadrature(grid, log_prior, np.array([r[0] for r in rows]), torch.stack([r[1] for r in rows]).numpy())
    return model, y, exact


def test_learned_sigma_sites_and_exact_posterior_nuts(noise_problem):
    model, y, exact = noise_problem
    assert list(model.latent_sites()) == ["sigma_pixel", "w"]
    res = run_mcmc(model, y, method="nuts", num_chains=2, num_samples=800, steps=200, seed=0, progress=False)
    s = res.draws["sigma_pixel"].double().numpy()
    assert s.shape == (1600,)
    S = s.reshape(2, 800, 1)
    z_mean = zscores(S, np.array([exact["mean"]]))[0]
    from tests.test_mcmc_helpers import ess

    n_eff = float(ess(S)[0])
    z05 = _quantile_z(s, 0.05, exact["q05"], exact["grid"], exact["density"], n_eff)
    z95 = _quantile_z(s, 0.95, exact["q95"], exact["grid"], exact["density"], n_eff)
    assert abs(z_mean) < 4 and abs(z05) < 4 and abs(z95) < 4, (z_mean, z05, z95, exact["mean"], s.mean())
    w = res.draws["w"].double().reshape(2, 800, -1).numpy()
    zw = zscores(w, exact["ew"])
    assert np.abs(zw).max() < 4.5, zw
    summary = res.scalar_summary()["sigma_pixel"]
    assert summary["q05"] < exact["mean"] < summary["q95"]


def _neg_log_joint(model, y, w: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """-log p(w, sigma, y) in (w, sigma) coordinates (no Jacobian: the mode of the density), float64,
    written out by hand (no Pyro)."""
    A, b = _linear_parts(model)
    m0, s0 = _prior(model)
    r = y.double().reshape(-1) - (A @ w + b)
    lp = dist.Normal(m0, s0.sqrt()).log_prob(w).sum() + dist.Normal(0.0, sigma).log_prob(r).sum()
    lp = lp + dist.InverseGamma(torch.tensor(IG[0], dtype=torch.float64), IG[1]).log_prob(sigma)
    return -lp


def test_learned_sigma_map_is_the_joint_mode(noise_problem):
    model, y, _ = noise_problem
    res = run_map(model, y, steps=1500, lr=0.05, lr_decay=0.001, progress=False)
    got = np.concatenate([res.w.double().reshape(-1).numpy(), [float(res.latents["sigma_pixel"])]])
    m0, _ = _prior(model)

    def f(v):  # over (w, log sigma), which moves no mode; analytic gradient by autograd
        t = torch.tensor(v, dtype=torch.float64, requires_grad=True)
        loss = _neg_log_joint(model, y, t[:-1], t[-1].exp())
        (g,) = torch.autograd.grad(loss, t)
        return float(loss), g.numpy()

    direct = minimize(f, np.concatenate([m0.numpy(), [math.log(0.3)]]), jac=True, method="L-BFGS-B",
                      options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    mode = np.concatenate([direct.x[:-1], [math.exp(direct.x[-1])]])
    assert np.abs(got - mode).max() < 2e-3, (got, mode)
    u = torch.tensor(got)
    assert float(_neg_log_joint(model, y, u[:-1], u[-1])) <= direct.fun + 1e-5


def test_learned_sigma_vi_side_of_truth(noise_problem):
    """Mean-field VI's q(sigma) lands on the same side of the simulated sigma as the exact
    posterior mean, inside the exact 90 % interval."""
    model, y, exact = noise_problem
    res = run_vi(model, y, steps=1500, lr=0.02, num_particles=8, hyperprior=None, num_samples=4000,
                 progress=False, init_scale=0.05)
    s = res.draws["sigma_pixel"].double().numpy()
    assert np.sign(s.mean() - SIGMA_TRUE) == np.sign(exact["mean"] - SIGMA_TRUE)
    assert exact["q05"] < s.mean() < exact["q95"], (s.mean(), exact)


@pytest.fixture(scope="module")
def blur_problem():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8, scale=2.0, seed=4)
    f = SuperResolution(2, "gauss", gauss_sigma=blur_width_latent(2, guess=1.0, spread=0.5))
    model = build_model(G, f, prior="gaussian", sigma_pixel=0.02)
    t_true = 1.4
    g = torch.Generator().manual_seed(6)
    w_true = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w_true, {"kernel_width": torch.tensor(t_true)})
        y = y + 0.02 * torch.randn(y.shape, generator=g)
    A, b = _linear_parts(model)
    m0, s0 = _prior(model)
    yv = y.double().reshape(-1)
    grid = np.linspace(0.3, 4.0, 1500)
    rows = []
    eye = torch.eye(64, dtype=torch.float64).reshape(64, 1, 8, 8)
    for t in grid:
        F = f(eye, {"kernel_width": torch.tensor(t, dtype=torch.float64)}).reshape(64, -1).T  # (16, 64)
        rows.append(_cond_posterior(F, A, b, m0, s0, 0.02, yv))
    log_prior = dist.LogNormal(0.0, 0.5).log_prob(torch.tensor(grid)).numpy()
    exact = _quadrature(grid, log_prior, np.array([r[0] for r in rows]), torch.stack([r[1] for r in rows]).numpy())
    return model, y, exact, t_true


def test_inferred_blur_width_exact_posterior(blur_problem):
    model, y, exact, t_true = blur_problem
    assert list(model.latent_sites()) == ["kernel_width", "w"]
    res = run_mcmc(model, y, method="nuts", num_chains=2, num_samples=600, steps=200, seed=1, progress=False)
    t = res.draws["kernel_width"].double().numpy().reshape(2, 600, 1)
    z = zscores(t, np.array([exact["mean"]]))[0]
    assert abs(z) < 4, (z, exact["mean"], t.mean())
    assert exact["q05"] < t_true < exact["q95"]  # the exact posterior covers the truth here ...
    lo, hi = np.quantile(t, [0.05, 0.95])
    assert lo < t_true < hi  # ... and so do the draws


def _grid_summary(res) -> dict:
    """Mean and 5/95 % quantiles of the scalar latent from the method's grid density."""
    g = res.extra["grid"]
    theta, dens = np.array(g["theta"][0]), np.array(g["density"][0])
    p = dens / np.trapezoid(dens, theta)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(theta))])
    q05, q95 = np.interp([0.05, 0.95], cdf / cdf[-1], theta)
    return {"mean": float(np.trapezoid(p * theta, theta)), "q05": float(q05), "q95": float(q95)}


def test_inla_learned_sigma_is_exact_on_the_linear_model(noise_problem):
    """INLA integrates w out in closed form: on a linear generator with a Gaussian prior its sigma
    posterior is the quadrature's to grid precision, and its draws match by z-scores."""
    from brgm_pyro.inference import run_inla

    model, y, exact = noise_problem
    res = run_inla(model, y, steps=300, num_samples=4000, seed=2, progress=False)
    g = _grid_summary(res)
    for k in ("mean", "q05", "q95"):
        assert abs(g[k] - exact[k]) < 2e-3 * exact[k], (k, g[k], exact[k])
    s = res.draws["sigma_pixel"].double().numpy()
    assert abs(s.mean() - exact["mean"]) < 4 * s.std() / math.sqrt(s.size)
    assert abs(float(res.latents["sigma_pixel"]) - exact["mean"]) < 2e-3 * exact["mean"]
    w = res.draws["w"].double().reshape(s.size, -1).numpy()
    z = (w.mean(0) - exact["ew"]) / (w.std(0) / math.sqrt(s.size))
    assert np.abs(z).max() < 4.5, z


def test_inla_blur_width_is_exact_on_the_linear_model(blur_problem):
    """The width enters the operator: INLA's grid posterior of it is the quadrature's."""
    from brgm_pyro.inference import run_inla

    model, y, exact, t_true = blur_problem
    res = run_inla(model, y, steps=300, num_samples=2000, seed=3, progress=False)
    g = _grid_summary(res)
    for k in ("mean", "q05", "q95"):
        assert abs(g[k] - exact[k]) < 3e-3 * exact[k], (k, g[k], exact[k])
    t = res.draws["kernel_width"].double().numpy()
    assert abs(t.mean() - exact["mean"]) < 4 * t.std() / math.sqrt(t.size)
    lo, hi = np.quantile(t, [0.05, 0.95])
    assert lo < t_true < hi
    assert res.extra["warnings"] == []  # exact here: no caution


def test_inla_cautions_about_a_corruption_parameter_of_a_nonlinear_generator():
    """Measured bias (docs/latent_sites.md): INLA says so, by name, for a non-linear G only."""
    from brgm_pyro.inference.inla import _cautions, _parts
    from brgm_pyro.models.generators import ConvGenerator, compute_latent_stats

    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=8, z_dim=8, channels=8, seed=1)
    f = SuperResolution(2, "gauss", gauss_sigma=blur_width_latent(2, guess=1.0, spread=0.5))
    model = build_model(G, f, prior="gaussian", sigma_pixel=0.02, stats=compute_latent_stats(G, num_samples=500))
    (line,) = _cautions(model, _parts(model))
    assert "'kernel_width'" in line and "nuts" in line
    noise = build_model(G, SuperResolution(2, "gauss"), prior="gaussian", sigma_pixel="learn",
                        stats=compute_latent_stats(G, num_samples=500))
    assert _cautions(noise, _parts(noise)) == []  # a noise level: no caution


def test_map_holds_the_corruption_latents_first_then_reaches_the_same_mode(blur_problem):
    """run_map's held phase: the blur width stays at its start while w fits (hold ~ all steps),
    and holding for half the steps ends at the joint mode reached without holding."""
    model, y, _, _ = blur_problem
    start = float(model.init_values(1)["kernel_width"])
    held = run_map(model, y, steps=40, hold_corruption=0.99, progress=False)
    assert float(held.latents["kernel_width"]) == pytest.approx(start, abs=1e-6)
    assert not torch.allclose(held.w, model.init_latents(1))
    a = run_map(model, y, steps=1500, lr=0.05, lr_decay=0.01, hold_corruption=0.5, progress=False)
    b = run_map(model, y, steps=1500, lr=0.05, lr_decay=0.01, hold_corruption=0.0, progress=False)
    assert float(a.latents["kernel_width"]) == pytest.approx(float(b.latents["kernel_width"]), rel=1e-3)
    assert torch.allclose(a.w, b.w, atol=1e-3)
    assert len(a.history["loss"]) == 1500
    with pytest.raises(BRGMError):
        run_map(model, y, steps=5, hold_corruption=1.0, progress=False)
