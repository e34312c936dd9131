"""The discrepancy term x = G(w) + e against closed forms on the linear generator.

With G(w) = M vec(w) + b linear, a Gaussian prior on w, e ~ N(0, tau^2 I) and y = A x + n,
everything is jointly Gaussian:

    y | w ~ N(A G(w), sigma^2 I + tau^2 A A^T)
    e | w, y ~ N(tau^2 A^T S^-1 r, tau^2 I - tau^4 A^T S^-1 A),  r = y - A G(w),  S = sigma^2 I + tau^2 A A^T
    x | y: the Gaussian conditional of the joint of (x, y).

The model's log density, its Matheron draws of e and the predictive images built from exact
posterior draws of w are checked against these (masks and block means, whose A A^T is diagonal,
make the diagonal likelihood exact); diag(A A^T) of every registered corruption against its
dense matrix.
"""

from __future__ import annotations

import json

import pyro.distributions as dist
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import CORRUPTIONS, Inpainting, SuperResolution
from brgm_pyro.models.discrepancy import Discrepancy, discrepancy_path, load_discrepancy, residual_scale
from brgm_pyro.models.generators import LinearGenerator

TAU, SIGMA = 0.3, 0.1


def _dense(corruption, in_shape, params=None, dtype=torch.float64) -> torch.Tensor:
    """The matrix of a linear corruption: (m, n)."""
    n = int(torch.tensor(in_shape).prod())
    basis = torch.eye(n, dtype=dtype).reshape(n, *in_shape)
    return corruption(basis, params).reshape(n, -1).T


@pytest.mark.parametrize("name", [n for n in CORRUPTIONS.names()])
def test_gram_diagonal_matches_dense_matrix(name):
    shape = (3, 8, 8)
    f = CORRUPTIONS.example(name)(shape).double()
    if not f.linear:
        pytest.skip("not linear")
    params = {lat.name: torch.tensor(float(lat.init), dtype=torch.float64) for lat in f.latents()} or None
    try:
        g = f.gram_diagonal(shape, params, dtype=torch.float64)
    except BRGMError as e:  # a corruption with inferred parameters may decline, in one line
        assert f.latents() and "inferred parameters" in str(e)
        return
    A = _dense(f, shape, params)
    assert g.shape == tuple(f.out_shape(shape))
    expect = A.pow(2).sum(1).reshape(g.shape)
    if f.mask is not None:  # unobserved elements are dropped by the likelihood: compare the observed ones
        m = f.mask.expand_as(g)
        g, expect = g[m], expect[m]
    torch.testing.assert_close(g, expect, rtol=1e-6, atol=1e-9)


def _problem(corruption, seed=0):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=3)
    model = build_model(G, corruption, prior="gaussian", sigma_pixel=SIGMA, discrepancy=TAU)
    g = torch.Generator().manual_seed(seed)
    w = (model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g))
    y = model.corruption(model.render(w) + TAU * torch.randn(1, 1, 4, 4, generator=g))
    y = y + SIGMA * torch.randn(y.shape, generator=g)
    A = _dense(model.corruption, (1, 4, 4), dtype=torch.float32).double()
    keep = torch.ones(A.shape[0], dtype=torch.bool) if model.mask is None else model.mask.reshape(-1)
    return model, w, y, A[keep], keep


CASES = {"inpaint": lambda: Inpainting(torch.arange(16).reshape(4, 4) % 3 != 0),
         "box_sr": lambda: SuperResolution(2, "box")}


@pytest.mark.parametrize("case", list(CASES))
def test_log_density_is_the_marginal_of_e(case):
    model, w, y, A, keep = _problem(CASES[case]())
    base = model.prior.distribution()
    S = SIGMA ** 2 * torch.eye(A.shape[0], dtype=torch.float64) + TAU ** 2 * A @ A.T
    mean = A @ model.render(w).double().reshape(-1)
    expect = base.log_prob(w).sum().double() + dist.MultivariateNormal(mean, S).log_prob(y.double().reshape(-1)[keep])
    got = model.log_joint({"w": w}, y).double()
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", list(CASES))
def test_matheron_draws_match_the_conditional_of_e(case):
    model, w, y, A, keep = _problem(CASES[case](), seed=1)
    n = 40_000
    x = model.predictive_images({"w": w.expand(n, *w.shape)}, y, seed=2)
    e = (x - model.render(w)).double().reshape(n, -1)
    S = SIGMA ** 2 * torch.eye(A.shape[0], dtype=torch.float64) + TAU ** 2 * A @ A.T
    r = y.double().reshape(-1)[keep] - A @ model.render(w).double().reshape(-1)
    mean = TAU ** 2 * A.T @ torch.linalg.solve(S, r)
    cov = TAU ** 2 * torch.eye(16, dtype=torch.float64) - TAU ** 4 * A.T @ torch.linalg.solve(S, A)
    se = (cov.diagonal() / n).sqrt()
    assert ((e.mean(0) - mean).abs() / se).max() < 4.5
    emp = torch.cov(e.T)
    assert (emp - cov).abs().max() < 6 * TAU ** 2 * (2 / n) ** 0.5


def test_predictive_images_from_exact_w_posterior_match_x_given_y():
    """Rao-Blackwellised: exact w | y (marginal likelihood) then e | w, y gives the exact x | y."""
    model, w, y, A, keep = _problem(CASES["inpaint"](), seed=4)
    G = model.generator
    M, b = G.A.double(), G.b.double()
    base = model.prior.distribution().base_dist
    m0, s0 = base.loc.double().reshape(-1), base.scale.double().reshape(-1) ** 2
    S = SIGMA ** 2 * torch.eye(A.shape[0], dtype=torch.float64) + TAU ** 2 * A @ A.T
    J = A @ M
    cov_y = J @ torch.diag(s0) @ J.T + S
    r = y.double().reshape(-1)[keep] - (J @ m0 + A @ b)
    w_mean = m0 + s0 * (J.T @ torch.linalg.solve(cov_y, r))
    w_cov = torch.diag(s0) - torch.diag(s0) @ J.T @ torch.linalg.solve(cov_y, J @ torch.diag(s0))
    n = 40_000
    torch.manual_seed(0)
    wd = dist.MultivariateNormal(w_mean, w_cov).sample((n,)).reshape(n, 1, 2, 3).float()
    x = model.predictive_images({"w": wd}, y, seed=5).double().reshape(n, -1)
    cov_x = M @ torch.diag(s0) @ M.T + TAU ** 2 * torch.eye(16, dtype=torch.float64)
    cxy = cov_x @ A.T
    x_mean = (M @ m0 + b) + cxy @ torch.linalg.solve(cov_y, r)
    x_cov = cov_x - cxy @ torch.linalg.solve(cov_y, cxy.T)
    se = (x_cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - x_mean).abs() / se).max() < 4.5
    assert (x.var(0) / x_cov.diagonal() - 1).abs().max() < 0.05


def test_discrepancy_widens_the_gauss_newton_metric_and_prior_variance():
    from brgm_pyro.reliance import prior_image_moments

    model, w, y, A, keep = _problem(CASES["box_sr"]())
    lik = model.likelihoods[0]
    _, info = lik.gauss_newton(model.predict(w), model.mask)
    torch.testing.assert_close(info, torch.full_like(info, 1.0 / (SIGMA ** 2 + TAU ** 2 / 4)))
    off = build_model(model.generator, SuperResolution(2, "box").double(), prior="gaussian", sigma_pixel=SIGMA)
    v_on = prior_image_moments(model, 256)[1]
    v_off = prior_image_moments(off, 256)[1]
    torch.testing.assert_close(v_on - v_off, torch.full_like(v_on, TAU ** 2))


def test_discrepancy_refusals_and_stored_scale(tmp_path):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=3)
    f = SuperResolution(2, "box")
    with pytest.raises(BRGMError, match="Gaussian pixel noise"):
        build_model(G, f, prior="gaussian", noise="laplace", discrepancy=0.1)
    with pytest.raises(BRGMError, match="temperature"):
        build_model(G, f, prior="gaussian", temperature=2.0, discrepancy=0.1)
    with pytest.raises(BRGMError, match="positive"):
        Discrepancy(-1.0)
    with pytest.raises(BRGMError, match="inferred parameters"):  # at build time, not at the first step
        from brgm_pyro.models.corruptions.composition import compose  # deblur_blind alone states it (issue 26)
        from brgm_pyro.models.corruptions.deblur import blind_deblur

        build_model(G, compose(blind_deblur(), SuperResolution(2, "box")), prior="gaussian", discrepancy=0.1)
    with pytest.raises(BRGMError, match="no discrepancy scale"):
        build_model(G, f, prior="gaussian", discrepancy="auto")
    G.source_path = str(tmp_path / "g.safetensors")
    p = discrepancy_path(G)
    p.write_text("{not json")
    with pytest.raises(BRGMError, match="not a discrepancy file"):
        load_discrepancy(G)
    p.write_text(json.dumps({"tau": 0.07, "images": 16}))
    m = build_model(G, f, prior="gaussian", discrepancy="auto")
    assert m.discrepancy.tau == 0.07 and m.config()["discrepancy"]["tau"] == 0.07
    # one Discrepancy given to two models: each gets its own binding
    d = Discrepancy(0.1)
    m1 = build_model(G, f, prior="gaussian", discrepancy=d)
    m2 = build_model(G, Inpainting(torch.arange(16).reshape(4, 4) % 2 == 0), prior="gaussian", discrepancy=d)
    assert m1.discrepancy.corruption is m1.corruption and m2.discrepancy.corruption is m2.corruption
    assert d.corruption is None


def test_residual_scale_dof_correction():
    g = torch.Generator().manual_seed(0)
    r = 0.1 * torch.randn(64, 1, 16, 16, generator=g)
    out = residual_scale(r, num_latents=0)
    assert abs(out["tau"] - 0.1) < 0.003 and out["tau"] == out["residual_rms"]
    out = residual_scale(r * (1 - 64 / 256) ** 0.5, num_latents=64)
    assert abs(out["tau"] - 0.1) < 0.003
    with pytest.raises(BRGMError, match="latent coordinates"):
        residual_scale(r, num_latents=256)


@pytest.mark.parametrize("case", list(CASES))
def test_map_image_is_the_joint_mode_of_x(case):
    """MAP with the term reports G(w*) + E[e | w*, y]: the joint mode of (w, e), which for the linear
    Gaussian model is E[x | y] in closed form (mode = mean), observed pixels pulled to the data."""
    from brgm_pyro.inference import run_map

    model, w, y, A, keep = _problem(CASES[case](), seed=6)
    G = model.generator
    M, b = G.A.double(), G.b.double()
    base = model.prior.distribution().base_dist
    m0, s0 = base.loc.double().reshape(-1), base.scale.double().reshape(-1) ** 2
    J = A @ M
    cov_y = J @ torch.diag(s0) @ J.T + SIGMA ** 2 * torch.eye(A.shape[0], dtype=torch.float64) + TAU ** 2 * A @ A.T
    r = y.double().reshape(-1)[keep] - (J @ m0 + A @ b)
    cov_x = M @ torch.diag(s0) @ M.T + TAU ** 2 * torch.eye(16, dtype=torch.float64)
    x_mean = (M @ m0 + b) + cov_x @ A.T @ torch.linalg.solve(cov_y, r)
    res = run_map(model, y, steps=3000, lr=0.05, lr_decay=0.01, progress=False)
    torch.testing.assert_close(res.image.double().reshape(-1), x_mean, atol=2e-3, rtol=0)
    gw = model.render(res.w)
    assert not torch.allclose(gw, res.image, atol=1e-3)  # e* is not zero: the data enter the image
    model.discrepancy = None  # without the term the image is G(w) alone
    assert torch.equal(model.point_image(res.latents, y), gw)
