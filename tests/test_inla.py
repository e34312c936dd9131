"""The INLA method's parts: primal and dual Gaussian forms agree, the eigen path equals the general
path, bad models are one-line errors. (Exactness against quadrature: tests/test_latent_sites.py.)"""

from __future__ import annotations

import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_inla
from brgm_pyro.inference.inla import Linearisation, _parts
from brgm_pyro.models.brgm import build_model, noise_latent
from brgm_pyro.models.corruptions import Identity, Inpainting
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
from tests.helpers import linear_gaussian_posterior


def _setup(n_side=4, num_ws=4, w_dim=8, corruption=None, sigma=0.1):
    G = LinearGenerator(num_ws=num_ws, w_dim=w_dim, img_channels=1, img_resolution=n_side, scale=1.0, seed=1)
    stats = compute_latent_stats(G, num_samples=2000)
    f = corruption or Identity()
    model = build_model(G, f, prior="gaussian", sigma_pixel=sigma, stats=stats)
    g = torch.Generator().manual_seed(0)
    w = model.init_latents(2) + 0.5 * torch.randn(2, num_ws, w_dim, generator=g)
    with torch.no_grad():
        y = model.predict(w)
        y = y + sigma * torch.randn(y.shape, generator=g)
        if f.mask is not None:
            y = y * f.mask
    return model, y, w


@pytest.mark.parametrize("masked", [False, True])
def test_primal_and_dual_forms_agree(masked):
    """n = 16 observed values, D = 32 latent dims: P (D x D) and C (n x n) give the same evidence,
    conditional mean and covariance of w (unobserved elements drop out of both)."""
    mask = None
    if masked:
        mask = torch.ones(2, 1, 4, 4, dtype=torch.bool)
        mask[:, :, 1:3, 1:3] = False
    model, y, w = _setup(corruption=Inpainting(mask) if masked else None)
    lin = Linearisation(model, _parts(model), y, w, None)
    a, b = lin.gaussian(None, form="primal"), lin.gaussian(None, form="dual")
    torch.testing.assert_close(a["log_evidence"], b["log_evidence"], rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-9, atol=1e-9)
    if not masked:  # the linear model's exact posterior, from the independent helper
        for i in range(2):
            mean, cov = linear_gaussian_posterior(model, y[i])
            torch.testing.assert_close(a["mean"][i], mean, rtol=1e-6, atol=1e-6)
            torch.testing.assert_close(torch.cholesky_inverse(a["chol"][i]), cov, rtol=1e-5, atol=1e-7)
    g = torch.Generator().manual_seed(3)
    S = 40000
    xi = torch.randn(S, 2, lin.D, generator=g, dtype=torch.float64)
    eta = torch.randn(S, 2, lin.yv.shape[-1], generator=g, dtype=torch.float64)
    for form in (a, b):
        z = lin.draw_given(form, xi, eta) - form["mean"]
        cov = torch.einsum("sbi,sbj->bij", z, z) / S
        L = a["chol"]
        exact = torch.cholesky_inverse(L)
        assert (cov - exact).abs().max() < 0.03 * exact.diagonal(dim1=-2, dim2=-1).max()


def test_eigen_path_equals_general_path():
    """A learned noise level on a linear model: the eigen path's evidence and mean are the Cholesky path's."""
    from brgm_pyro.inference.inla import _log_posterior_fn

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=1.0, seed=2)
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel="learn", noise_per_image=True,
                        stats=compute_latent_stats(G, num_samples=2000))
    g = torch.Generator().manual_seed(0)
    w = model.init_latents(3) + 0.3 * torch.randn(3, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w, {"sigma_pixel": torch.full((3,), 0.1)}) + 0.1 * torch.randn(3, 1, 4, 4, generator=g)
    lin = Linearisation(model, _parts(model), y, w, torch.full((3,), 0.05))
    assert lin.scalar_noise()
    u = torch.linspace(-4, 0, 9, dtype=torch.float64).expand(3, 9)
    torch.testing.assert_close(_log_posterior_fn(lin, True)(u), _log_posterior_fn(lin, False)(u), rtol=1e-9, atol=1e-8)
    v = torch.full((3,), 0.01, dtype=torch.float64)
    torch.testing.assert_close(lin.eigen_draw(v, None), lin.gaussian(torch.full((3,), 0.1))["mean"], rtol=1e-7,
                               atol=1e-8)


def test_refusals_are_one_line():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=1.0, seed=2)
    stats = compute_latent_stats(G, num_samples=500)
    y = torch.zeros(1, 1, 4, 4)
    m = build_model(G, Identity(), prior="gaussian", sigma_pixel=0.1, noise="laplace", stats=stats)
    with pytest.raises(BRGMError, match="Gaussian pixel likelihood"):
        run_inla(m, y, steps=1, progress=False)
    m = build_model(G, Identity(), prior="gaussian", sigma_pixel=0.1, phi=torch.nn.Flatten(), stats=stats)
    with pytest.raises(BRGMError, match="perceptual"):
        run_inla(m, y, steps=1, progress=False)
    m = build_model(G, Identity(), prior="gaussian", sigma_pixel=0.1, stats=stats)
    with pytest.raises(BRGMError, match="max_jacobian_gib"):
        run_inla(m, y, steps=1, progress=False, max_jacobian_gib=1e-9)
    assert "\n" not in str(pytest.raises(BRGMError, run_inla, m, y, steps=1, progress=False,
                                         max_jacobian_gib=1e-9).value)


def test_without_scalar_latents_it_is_the_linearised_laplace_posterior():
    """No scalar latent: one linearisation at the MAP; on a linear model that is the exact posterior."""
    model, y, _ = _setup(n_side=4, num_ws=2, w_dim=3)
    r = run_inla(model, y, steps=200, num_samples=3000, seed=1, progress=False)
    assert r.extra["grid"] is None and r.draws["w"].shape == (3000, 2, 2, 3)
    exact = [linear_gaussian_posterior(model, y[b]) for b in range(2)]  # independent of inla.py
    d = r.draws["w"].double().reshape(3000, 2, -1)
    sd = d.std(0)
    for b, (mean, cov) in enumerate(exact):
        assert ((d[:, b].mean(0) - mean).abs() < 4 * sd[b] / 3000 ** 0.5).all()
        assert ((sd[b] / cov.diagonal().sqrt() - 1).abs() < 0.1).all()  # se of a std: 1.3 %


def test_best_of_starts_keeps_each_images_best_fit():
    """Restarts of the inner MAP: from a bad first fit every image moves to a restart that reaches
    the mode (the linear model's exact posterior mean); a first fit at the mode is kept."""
    from brgm_pyro.inference.inla import best_of_starts

    model, y, _ = _setup(n_side=4, num_ws=2, w_dim=3)
    exact = torch.stack([linear_gaussian_posterior(model, y[b])[0] for b in range(2)])  # independent of inla.py
    bad = model.init_latents(2) + 3.0
    w, chosen = best_of_starts(model, y, bad, {}, 2, 400, 0.1, 0.1, False, seed=0)
    assert all(c >= 1 for c in chosen)
    assert torch.allclose(w.reshape(2, -1).double(), exact, atol=2e-3)
    r = run_inla(model, y, steps=5, restarts=2, num_samples=0, progress=False)
    assert len(r.extra["start"]) == 2


def test_restarts_are_ranked_by_the_profile_over_theta():
    """At a fixed, far too large noise level the prior outranks the fit; maximised over sigma (the
    profile best_of_starts ranks by) the fit that explains y wins."""
    from brgm_pyro.inference.inla import _profile_score

    model, y, w_true = _setup(n_side=4, num_ws=2, w_dim=3)
    stats = compute_latent_stats(model.generator, num_samples=2000)
    model = build_model(model.generator, Identity(), prior="gaussian", sigma_pixel="learn", stats=stats)
    theta = model.scalar_latents[0]
    fixed = {theta.name: torch.tensor(10.0)}
    w_fit, w_prior = w_true, model.init_latents(2)
    at_fixed, profile = _profile_score(model, y, fixed, None), _profile_score(model, y, fixed, theta)
    assert (at_fixed(w_prior) > at_fixed(w_fit)).all()
    assert (profile(w_fit) > profile(w_prior)).all()
