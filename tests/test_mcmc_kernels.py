"""Langevin kernels (SGLD, pSGLD, MALA) and NUTS against a closed-form Gaussian posterior.

Every statistical check is a Monte Carlo z-score with the standard error from the draws' ESS,
(mean f - E f) / (sd f / sqrt(ESS f)), over means and second central moments; |z| < 4.5 over a
dozen functions fails by chance with probability ~1e-4. A wrong gradient (or sign) moves the
stationary law of ULA/pSGLD or wrecks MALA's acceptance and ESS, and fails these tests.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.mcmc.hmc import StatsNUTS
from brgm_pyro.inference.mcmc.langevin import (
    Langevin, LangevinState, langevin_init, langevin_step, max_curvature)
from tests.test_mcmc_helpers import LinearGaussian, moment_functions, moment_truth, run_kernel, zscores, ess

torch.set_num_threads(1)
Z = 4.5


@pytest.fixture(scope="module")
def lg():
    return LinearGaussian()


def _gauss_grad(lg):
    P = torch.tensor(lg.precision, dtype=torch.float64)
    mu = torch.tensor(lg.mean, dtype=torch.float64)

    def grad_fn(z):
        c = z - mu
        return 0.5 * c @ P @ c, P @ c

    return grad_fn, P, mu


def test_drift_is_minus_half_step_times_gradient(lg):
    grad_fn, P, mu = _gauss_grad(lg)
    z = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    G = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    state = langevin_init(z, grad_fn)
    xi = torch.tensor([0.3, -0.1, 0.2], dtype=torch.float64)
    new, info = langevin_step(state, grad_fn, 0.01, G, metropolis=False, noise=xi)
    expected = z - 0.005 * G * (P @ (z - mu)) + (0.01 * G).sqrt() * xi
    assert torch.allclose(new.z, expected)
    assert info.accepted and not info.diverging
    # the potential must go down along a noiseless step from a point away from the mode
    new0, _ = langevin_step(state, grad_fn, 0.01, None, noise=torch.zeros(3, dtype=torch.float64))
    assert new0.potential < state.potential


def test_metropolis_ratio_is_reversible(lg):
    """MALA's log acceptance ratio for z -> z' is minus the one for z' -> z (detailed balance)."""
    from brgm_pyro.inference.mcmc.langevin import _log_q
    grad_fn, P, mu = _gauss_grad(lg)
    z = torch.tensor([0.4, -0.3, 0.9], dtype=torch.float64)
    z2 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    G = torch.tensor([0.7, 1.2, 0.9], dtype=torch.float64)
    (u, g), (u2, g2) = grad_fn(z), grad_fn(z2)
    r12 = (u - u2) + _log_q(z, z2, g2, 0.05, G) - _log_q(z2, z, g, 0.05, G)
    r21 = (u2 - u) + _log_q(z2, z, g, 0.05, G) - _log_q(z, z2, g2, 0.05, G)
    assert float(r12 + r21) == pytest.approx(0.0, abs=1e-12)
    # for a Gaussian target and tiny steps MALA accepts almost everything
    state = langevin_init(z, grad_fn)
    _, info = langevin_step(state, grad_fn, 1e-4, None, metropolis=True,
                            noise=torch.ones(3, dtype=torch.float64), uniform=0.0)
    assert info.accept_prob > 0.99


def test_max_curvature_is_the_largest_precision_eigenvalue(lg):
    grad_fn, P, mu = _gauss_grad(lg)
    st = langevin_init(torch.zeros(3, dtype=torch.float64), grad_fn)
    lam = max_curvature(grad_fn, st, iters=60)
    assert lam == pytest.approx(np.linalg.eigvalsh(lg.precision)[-1], rel=1e-3)


def test_nuts_matches_closed_form(lg):
    w, infos, _ = run_kernel(StatsNUTS(lg.model), lg.y, 600, 300, seed=1)
    z = zscores(moment_functions(w, lg.mean), moment_truth(lg.mean, lg.cov))
    assert np.all(np.abs(z) < Z), z
    assert ess(w).min() > 200
    assert {"step_size", "accept_prob", "diverging", "tree_depth", "n_steps"} <= set(infos[0])
    assert not any(i["diverging"] for i in infos)


def test_mala_is_exact(lg):
    k = Langevin(lg.model, metropolis=True, thin=3)
    w, infos, mcmc = run_kernel(k, lg.y, 1000, 200, seed=2)
    z = zscores(moment_functions(w, lg.mean), moment_truth(lg.mean, lg.cov))
    assert np.all(np.abs(z) < Z), z
    acc = np.mean([i["accept_prob"] for i in infos])
    assert 0.35 < acc < 0.85, acc
    assert ess(w).min() > 150
    assert mcmc.diagnostics()["w"] is not None


def test_sgld_bias_shrinks_with_step_size(lg):
    """ULA's stationary covariance is known in closed form: it matches at both step sizes, and the
    excess variance along the stiffest direction is significant at the large step and gone at the
    small one."""
    lam, V = np.linalg.eigh(lg.precision)
    v = V[:, -1]
    excess = {}
    for c, thin, n in [(1.6, 4, 1500), (0.25, 12, 1200)]:
        eps = c / lam[-1]
        k = Langevin(lg.model, step_size=eps, thin=thin)
        w, infos, _ = run_kernel(k, lg.y, n, 50, seed=3)
        assert np.isfinite(w).all()
        z = zscores(moment_functions(w, lg.mean), moment_truth(lg.mean, lg.ula_cov(eps)))
        assert np.all(np.abs(z) < Z), (c, z)
        proj = ((w - lg.mean) @ v) ** 2  # its mean is the variance along the stiffest direction
        excess[c] = float(zscores(proj[:, None], np.array([1.0 / lam[-1]]))[0])
    assert excess[1.6] > Z, excess  # biased at the large step (variance x 1 / (1 - 0.4))
    assert abs(excess[0.25]) < Z, excess  # and unbiased to MC precision at the small one


def test_psgld_frozen_preconditioner_law(lg):
    """After warm-up pSGLD is ULA with the frozen G: its stationary law is known in closed form."""
    k = Langevin(lg.model, preconditioner="rmsprop", thin=4)
    w, infos, _ = run_kernel(k, lg.y, 1500, 100, seed=4)
    G = k._precond.double().numpy()
    eps = infos[-1]["step_size"]
    assert all(i["step_size"] == eps for i in infos)  # frozen after warm-up
    z = zscores(moment_functions(w, lg.mean), moment_truth(lg.mean, lg.ula_cov(eps, G)))
    assert np.all(np.abs(z) < Z), z
    # auto step: eps * lambda_max(G^1/2 P G^1/2) = auto_scale (0.5)
    s = np.sqrt(G)
    assert eps * np.linalg.eigvalsh(s[:, None] * lg.precision * s)[-1] == pytest.approx(0.5, rel=0.05)


def test_poly_schedule_decreases_and_stays_finite(lg):
    k = Langevin(lg.model, step_size=0.05, schedule="poly", decay_t0=10.0, decay_gamma=0.55)
    w, infos, _ = run_kernel(k, lg.y, 200, 0, seed=5)
    eps = [i["step_size"] for i in infos]
    assert all(a > b for a, b in zip(eps, eps[1:]))
    assert eps[-1] == pytest.approx(0.05 * (1 + 199 / 10.0) ** -0.55, rel=1e-6)
    assert np.isfinite(w).all()


def test_divergent_proposals_are_rejected_and_counted(lg):
    k = Langevin(lg.model, step_size=10.0)  # far beyond 4 / lambda_max: ULA explodes without the guard
    w, infos, mcmc = run_kernel(k, lg.y, 50, 0, seed=6)
    assert np.isfinite(w).all()
    assert sum(i["diverging"] for i in infos) > 0
    assert len(k.diagnostics()["divergences"]) == sum(i["diverging"] for i in infos)


def test_bad_options_raise_brgm_error(lg):
    with pytest.raises(BRGMError):
        Langevin(lg.model, step_size=-1.0)
    with pytest.raises(BRGMError):
        Langevin(lg.model, schedule="cosine")
    with pytest.raises(BRGMError):
        Langevin(lg.model, preconditioner="adam")
    with pytest.raises(BRGMError):
        Langevin(lg.model, thin=0)
