"""Laplace (Gauss-Newton / Hessian) preconditioning: exact on the linear model, and samplers stay exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.mcmc import run_mcmc
from brgm_pyro.inference.mcmc.laplace import (exact_hessian, gauss_newton_precision, hessian_precision,
                                               laplace_covariance)
from brgm_pyro.models.corruptions import Inpainting, SuperResolution
from tests.helpers import linear_gaussian_posterior
from tests.test_mcmc_helpers import zscores
from tests.test_mcmc_runner import _linear

Z = 4.5


@pytest.mark.parametrize("corruption", [SuperResolution(2, "box"), Inpainting(torch.tensor([[1, 1, 0, 0]] * 4))])
def test_gauss_newton_and_hessian_equal_the_exact_precision_on_linear_models(corruption):
    model, y = _linear(corruption)
    _, cov = linear_gaussian_posterior(model, y[0])
    exact = torch.linalg.inv(cov)
    w = model.init_latents(1) + 0.1
    gn = gauss_newton_precision(model, y, w)
    assert torch.allclose(gn, exact, rtol=1e-4, atol=1e-3)
    info: dict = {}
    h = hessian_precision(model, y, w, info=info)
    assert torch.allclose(h, exact, rtol=1e-3, atol=1e-2)
    assert info["backward_passes"] == w.numel()
    assert torch.allclose(exact_hessian(model, y, w), exact, rtol=1e-3, atol=1e-2)  # PD here: nothing to fold
    cov_gn = laplace_covariance(model, y, w).double()
    assert torch.allclose(cov_gn, cov, rtol=1e-3, atol=1e-5)


def test_sketched_gauss_newton_is_unbiased():
    """Above max_rows, J^T J is sketched; the average of independent sketches converges to it."""
    model, y = _linear(SuperResolution(2, "box"))
    w = model.init_latents(1)
    exact = gauss_newton_precision(model, y, w)
    sk = torch.stack([gauss_newton_precision(model, y, w, max_rows=2, seed=s) for s in range(400)]).mean(0)
    prior = torch.diag(1.0 / model.prior.distribution().stddev.double().reshape(-1) ** 2)
    rel = (sk - exact).norm() / (exact - prior).norm()
    assert rel < 0.2


@pytest.mark.parametrize("task", ["superres", "inpaint"])
def test_exact_jacobian_matches_autograd_on_a_nonlinear_generator(task):
    """J by batched rows (M <= D) or batched columns (D < M) against torch's own Jacobian, on a small
    StyleGAN2 (so the double-backward column trick is checked where J depends on w)."""
    from brgm_pyro.inference.mcmc.laplace import _jacobian
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    G = StyleGAN2Generator(z_dim=4, w_dim=4, img_resolution=8, img_channels=1, mapping_layers=1,
                           channel_base=32, channel_max=4, seed=0)
    mask = torch.ones(8, 8)
    mask[2:5, 3:7] = 0
    corr = SuperResolution(4, "box") if task == "superres" else Inpainting(mask)
    model = build_model(G, corr, prior="gaussian", sigma_pixel=0.1)
    w = model.init_latents(1) + 0.3 * torch.randn(1, *model.init_latents(1).shape[1:], generator=torch.Generator().manual_seed(0))
    wv = w.clone().requires_grad_(True)
    mean, _ = model.likelihoods[0].gauss_newton(model.predict(wv, {}), model.mask, {})
    flat = mean.reshape(-1)
    M, D = flat.numel(), wv.numel()
    assert (M <= D) == (task == "superres")  # both branches are exercised
    ref = torch.autograd.functional.jacobian(lambda v: model.likelihoods[0].gauss_newton(
        model.predict(v, {}), model.mask, {})[0].reshape(-1), w).reshape(M, D).double()
    assert torch.allclose(_jacobian(flat, wv, chunk=5), ref, rtol=1e-4, atol=1e-6)
    info: dict = {}
    gauss_newton_precision(model, None, w, info=info)
    assert info["backward_passes"] == min(M, D)


def test_bad_curvature_raises():
    model, y = _linear(SuperResolution(2, "box"))
    with pytest.raises(BRGMError):
        laplace_covariance(model, y, model.init_latents(1), curvature="bfgs")


def _check(res, mean, cov):
    C, S = res.extra["num_chains"], res.extra["num_draws"]
    w = res.samples_w.double().reshape(C, S, -1).numpy()
    m, sd = mean.numpy(), cov.diagonal().sqrt().numpy()
    z = zscores(np.concatenate([w, ((w - m) / sd) ** 2], -1), np.concatenate([m, np.ones_like(m)]))
    assert np.all(np.abs(z) < Z), z


def test_nuts_with_laplace_mass_is_exact_and_takes_big_steps():
    model, y = _linear(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = run_mcmc(model, y, method="nuts", steps=100, num_samples=300, num_chains=1, init="map", map_steps=100,
                   seed=3, progress=False)
    assert res.extra["mass"] == "laplace" and res.extra["laplace_grad_evals"] > 0
    _check(res, mean, cov)
    st = res.extra["sample_stats"]
    # in the exact metric the posterior is a standard normal: large steps, short trees
    assert np.median(st["step_size"]) > 0.5 and st["tree_depth"].mean() < 3.5


def test_mala_with_laplace_preconditioner_is_exact():
    model, y = _linear(Inpainting(torch.tensor([[1, 1, 0, 0]] * 4)))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = run_mcmc(model, y, method="mala", steps=100, num_samples=400, num_chains=1, thin=2, init="map",
                   map_steps=100, preconditioner="laplace", seed=4, progress=False)
    _check(res, mean, cov)
    assert res.extra["sample_stats"]["accept_prob"].mean() > 0.5


def test_laplace_init_draws_chain_starts_from_the_laplace_approximation():
    """init="laplace": chain starts are independent draws of N(MAP, P^-1) (here the exact posterior)."""
    model, y = _linear(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    w_map = mean.float().reshape(1, 2, 3)
    n = 60
    res = run_mcmc(model, y, method="sgld", init="laplace", map_w=w_map, steps=0, num_samples=1, num_chains=n,
                   thin=1, seed=5, progress=False)
    starts = res.extra["init_w"].double().reshape(n, -1)
    assert res.extra["map_grad_evals"] == 0
    z = (starts.mean(0) - mean) / (cov.diagonal().sqrt() / n ** 0.5)
    assert z.abs().max() < Z
    ratio = starts.var(0) / cov.diagonal()
    assert ((ratio - 1).abs() < 4.5 * (2 / (n - 1)) ** 0.5).all(), ratio


def test_nuts_with_the_warmup_metric_is_exact_and_keeps_big_steps():
    """mass='laplace_warmup': each chain's metric is the mean Laplace precision of its warm-up draws.
    On a linear model that equals the MAP's (the curvature is constant), so the draws stay exact and
    the steps large; the record says what was done."""
    from brgm_pyro.inference.mcmc.laplace import laplace_covariance
    from brgm_pyro.inference.mcmc.remetric import mean_precision_covariance

    model, y = _linear(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = run_mcmc(model, y, method="nuts", steps=80, num_samples=300, num_chains=1, init="map", map_steps=100,
                   mass="laplace_warmup", metric_points=4, seed=3, progress=False)
    _check(res, mean, cov)
    (rec,) = res.extra["warmup_metric"]
    assert rec["points"] == 4 and (rec["draws_before"], rec["draws_from"], rec["readapt"]) == (40, 20, 20)
    assert rec["grad_evals"] > 0 and rec["backward_passes"] == 4 * 4  # 4 points x min(M=4, D=6) rows
    assert res.extra["mass"] == "laplace_warmup" and len(res.extra["sample_stats"]["step_size"][0]) == 300
    st = res.extra["sample_stats"]
    assert np.median(st["step_size"]) > 0.5 and st["tree_depth"].mean() < 3.5
    draws = {"w": res.draws["w"][:8]}
    c, _ = mean_precision_covariance(model, y, draws, 8, 10**6, "gauss_newton", 0)
    assert torch.allclose(c, laplace_covariance(model, y, res.latents), rtol=1e-3, atol=1e-6)


def test_warmup_metric_follows_the_curvature_of_a_nonlinear_generator():
    from brgm_pyro.inference.mcmc.laplace import laplace_covariance
    from brgm_pyro.inference.mcmc.remetric import mean_precision_covariance
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.generators import ConvGenerator

    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=4, channels=4, seed=3)
    mask = torch.ones(8, 8)
    mask[2:4, 2:6] = 0
    model = build_model(G, Inpainting(mask), prior="gaussian", sigma_pixel=0.05)
    w0 = model.init_latents(1)
    draws = {"w": w0 + 0.5 * torch.randn(6, *w0.shape[1:], generator=torch.Generator().manual_seed(1))[:, None]}
    with torch.no_grad():
        y = model.predict(w0)
    c, passes = mean_precision_covariance(model, y, draws, 3, 10**6, "gauss_newton", 0)
    assert passes == 3 * w0.numel()  # D < M: columns
    at_start = laplace_covariance(model, y, w0)
    assert (c - at_start).norm() > 0.05 * at_start.norm()  # the draws' curvature is not the start's
    assert torch.allclose(c, c.T) and bool((torch.linalg.eigvalsh(c.double()) > 0).all())


@pytest.mark.parametrize("kw, fragment", [
    (dict(mass="laplace_warmup", steps=10), "needs at least 32 warm-up draws"),
    (dict(mass="laplace", metric_points=4), "metric_points is an option of mass='laplace_warmup'"),
    (dict(mass="laplace_warmup", init="prior"), "started from a MAP"),
    (dict(mass="laplace_warmup", method="mala"), "HMC/NUTS"),
    (dict(mass="wild"), "mass must be"),
])
def test_warmup_metric_refusals(kw, fragment):
    model, y = _linear(SuperResolution(2, "box"))
    kw = {"method": "nuts", "steps": 100, "init": "map", "map_steps": 5, **kw}
    with pytest.raises(BRGMError, match=fragment):
        run_mcmc(model, y, num_samples=5, num_chains=1, progress=False, **kw)


def test_warmup_metric_chains_in_worker_processes_draw_what_sequential_chains_draw():
    """The warm-up metric runs inside each chain, so spawned workers (which receive its settings by
    pickle) give the sequential run's draws."""
    model, y = _linear(SuperResolution(2, "box"))
    kw = dict(method="nuts", steps=40, num_samples=20, num_chains=2, init="map", map_steps=50,
              mass="laplace_warmup", metric_points=4, seed=1, progress=False)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = run_mcmc(model, y, **kw)
    finally:
        torch.set_num_threads(threads)
    b = run_mcmc(model, y, workers=2, threads_per_worker=1, **kw)
    assert torch.equal(a.samples_w, b.samples_w)
    assert [m["points"] for m in b.extra["warmup_metric"]] == [4, 4]
