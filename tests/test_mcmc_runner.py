"""The MCMC runners on the BRGM model: exact on the linear-Gaussian model, warm starts, chains, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import METHODS
from brgm_pyro.inference.mcmc import SAMPLERS, run_mcmc
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Inpainting, SuperResolution
from brgm_pyro.models.generators import ConvGenerator, LinearGenerator
from tests.helpers import linear_gaussian_posterior
from tests.test_mcmc_helpers import ess, zscores

Z = 4.5


def _linear(corruption, sigma_pixel=0.3, seed=0):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=seed)
    model = build_model(G, corruption, prior="gaussian", sigma_pixel=sigma_pixel)
    g = torch.Generator().manual_seed(seed + 1)
    w_true = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w_true) + sigma_pixel * torch.randn(1, *model.obs_shape, generator=g)
    return model, y


def test_all_samplers_registered():
    for name in SAMPLERS:
        assert name in METHODS


def _check_exact(res, mean, cov):
    C, S = res.extra["num_chains"], res.extra["num_draws"]
    w = res.samples_w.double().reshape(C, S, -1).numpy()
    m, sd = mean.numpy(), cov.diagonal().sqrt().numpy()
    f = np.concatenate([w, ((w - m) / sd) ** 2], -1)
    z = zscores(f, np.concatenate([m, np.ones_like(m)]))
    assert np.all(np.abs(z) < Z), z
    return w


def test_nuts_chains_exact_on_linear_inpainting():
    model, y = _linear(Inpainting(torch.tensor([[1, 1, 0, 0]] * 4)))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = METHODS.get("nuts")(model, y, steps=150, num_samples=250, num_chains=2, init="prior", seed=1,
                             progress=False)
    w = _check_exact(res, mean, cov)
    st = res.extra["sample_stats"]
    assert st["tree_depth"].shape == (2, 250) and st["step_size"].shape == (2, 250)
    assert res.extra["divergences"] == 0
    assert res.samples.shape == (500, 1, 1, 4, 4)
    assert res.extra["grad_evals"] == res.extra["sampler_grad_evals"]  # no MAP with init="prior"
    assert ess(w).min() > 100


def test_mala_from_map_exact_on_linear_superres():
    model, y = _linear(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = run_mcmc(model, y, method="mala", steps=150, num_samples=400, num_chains=2, thin=4,
                   init="map", map_steps=200, init_jitter=1.0, seed=2, progress=False)
    _check_exact(res, mean, cov)
    assert res.extra["map_w"] is not None and res.extra["map_grad_evals"] == 200
    acc = res.extra["sample_stats"]["accept_prob"].mean()
    assert 0.3 < acc < 0.9
    # chain 0 starts at the MAP, chain 1 is jittered
    assert torch.allclose(res.extra["init_w"][0], res.extra["map_w"])
    assert not torch.allclose(res.extra["init_w"][1], res.extra["map_w"])


@pytest.mark.parametrize("method", ["sgld", "psgld"])
def test_langevin_runners_finite_and_near_posterior_on_conv_generator(method):
    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=4, channels=4, seed=1)
    model = build_model(G, SuperResolution(2, "box"), sigma_pixel=0.1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y = model.predict(model.init_latents(1) + 0.3 * torch.randn(1, G.num_ws, 4, generator=g))
    res = METHODS.get(method)(model, y, steps=30, num_samples=40, num_chains=2, thin=5, map_steps=100,
                              progress=False)
    assert torch.isfinite(res.samples_w).all() and torch.isfinite(res.samples).all()
    assert res.samples_w.shape == (80, 1, G.num_ws, 4)
    # the draws fit the data about as well as the MAP (not diverged, not stuck at the prior)
    map_img = model.render(res.extra["map_w"])
    err_map = float(((model.corruption(map_img) - y) ** 2).mean())
    err_mc = float(((model.corruption(res.samples) - y) ** 2).mean())
    assert err_mc < err_map + 3 * 0.1 ** 2
    assert res.extra["divergences"] == 0
    assert len(res.history["loss"]) == 80


def test_bad_inputs_raise_brgm_error():
    model, y = _linear(SuperResolution(2, "box"))
    with pytest.raises(BRGMError):
        run_mcmc(model, y, method="gibbs", progress=False)
    with pytest.raises(BRGMError):
        run_mcmc(model, y, method="nuts", init="nowhere", progress=False)
    with pytest.raises(BRGMError):
        run_mcmc(model, y, method="nuts", init=torch.zeros(3, 3), progress=False)
    with pytest.raises(BRGMError):
        run_mcmc(model, y, method="nuts", num_samples=0, progress=False)
    with pytest.raises(BRGMError):
        run_mcmc(model, y, method="nuts", num_samples=2, bogus_option=1, progress=False)


@pytest.mark.parametrize("method", ["nuts", "mala"])
def test_parallel_chains_equal_sequential_chains(method):
    """workers=2 runs the chains in spawned processes and must return exactly the sequential draws
    (same per-chain seeds, one torch thread everywhere), in chain order, with the same statistics."""
    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=4, channels=4, seed=1)
    model = build_model(G, SuperResolution(2, "box"), sigma_pixel=0.1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y = model.predict(model.init_latents(1) + 0.3 * torch.randn(1, G.num_ws, 4, generator=g))
    kw = dict(method=method, steps=10, num_samples=15, num_chains=3, init="laplace", map_steps=30, seed=4,
              progress=False)
    seq = run_mcmc(model, y, **kw)
    par = run_mcmc(model, y, workers=2, threads_per_worker=1, **kw)
    assert par.extra["workers"] == 2 and seq.extra["workers"] == 1
    assert torch.equal(seq.samples_w, par.samples_w)
    assert not torch.equal(par.samples_w[:15], par.samples_w[15:30])  # chains differ
    for k, v in seq.extra["sample_stats"].items():
        np.testing.assert_array_equal(v, par.extra["sample_stats"][k])
    assert seq.extra["grad_evals"] == par.extra["grad_evals"]


def test_parallel_chains_bad_workers():
    model, y = _linear(SuperResolution(2, "box"))
    with pytest.raises(BRGMError, match="workers"):
        run_mcmc(model, y, method="nuts", workers=0, progress=False)
    # an error inside a worker comes back as the same one-line BRGMError
    with pytest.raises(BRGMError, match="bad option for nuts"):
        run_mcmc(model, y, method="nuts", num_samples=2, num_chains=2, workers=2, init="prior",
                 bogus_option=1, progress=False)
