"""Priors, likelihoods, latent statistics and the model's plumbing."""

import pyro
import pytest
import torch
from pyro import poutine

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_map
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity, Inpainting, SuperResolution
from brgm_pyro.models.generators import ConvGenerator, LatentStats, LinearGenerator, compute_latent_stats
from brgm_pyro.models.likelihoods import PerceptualGaussian, PixelGaussian
from brgm_pyro.models.priors import PRIORS, ColinearityFactor, GeocrossFactor, pairwise_cosines


def test_latent_stats_match_the_linear_mapping(tmp_path):
    G = LinearGenerator(num_ws=2, w_dim=4, z_dim=6)
    s = compute_latent_stats(G, num_samples=10_000, seed=3)
    true_sd = (G.M @ G.M.T).diagonal().sqrt()
    # Monte Carlo error of a mean is sd / sqrt(n); of a std, about sd / sqrt(2 n)
    assert ((s.mu - G.c).abs() < 4 * true_sd / 100).all()
    assert ((s.sigma - true_sd).abs() < 4 * true_sd / (2 * 10_000) ** 0.5).all()
    assert s.sigma_scalar == pytest.approx(float(s.sigma.pow(2).mean().sqrt()), rel=1e-5)
    assert s.sigma_ref == pytest.approx(float(s.sigma.pow(2).sum().sqrt()), rel=1e-5)
    # seeded, cached in memory and on disk
    assert compute_latent_stats(G, num_samples=10_000, seed=3) is s
    path = tmp_path / "stats.safetensors"
    G2 = LinearGenerator(num_ws=2, w_dim=4, z_dim=6)
    a = compute_latent_stats(G2, num_samples=500, seed=1, cache_path=path)
    assert path.exists()
    b = LatentStats.load(path)
    assert torch.equal(a.mu, b.mu) and torch.equal(a.sigma, b.sigma)
    c = compute_latent_stats(LinearGenerator(num_ws=2, w_dim=4, z_dim=6), num_samples=500, seed=2, cache_path=path)
    assert not torch.equal(c.mu, a.mu)  # another seed is recomputed, not served from the cache


def test_pairwise_cosines_and_colinearity():
    w = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]])
    assert torch.allclose(pairwise_cosines(w), torch.tensor([[0.0, -1.0, 0.0]]))
    f = ColinearityFactor(kappa=2.0)
    assert torch.allclose(f.log_factor(w), torch.tensor([-2.0]))
    same = torch.ones(1, 4, 3)
    assert torch.allclose(f.log_factor(same), torch.tensor([2.0 * 6]))


def test_geocross_is_zero_when_colinear_and_finite_gradient():
    w = torch.ones(1, 4, 3, requires_grad=True)
    g = GeocrossFactor()
    val = g.log_factor(w)
    val.sum().backward()
    assert val.abs().item() < 1e-6 and torch.isfinite(w.grad).all()
    assert g.log_factor(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])).item() == pytest.approx(-(torch.pi / 2) ** 2, rel=1e-4)


@pytest.mark.parametrize("name", PRIORS.names())
def test_every_prior_swaps_in_with_one_argument(name):
    G = ConvGenerator(img_resolution=8, w_dim=8)
    model = build_model(G, SuperResolution(2), prior=name)
    y = torch.zeros(1, *model.obs_shape)
    res = run_map(model, y, steps=5, progress=False)
    assert torch.isfinite(res.w).all()
    sites = model.prior.sites()  # the latent w plus factor sites named after it
    assert model.prior.site == "w" and sites["w"] == "prior" and all(k.startswith("w_") for k in sites if k != "w")
    assert "prior" in res.history


def test_pixel_likelihood_ignores_missing_pixels_and_pointwise_adds_up():
    mask = torch.ones(1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = False
    lik = PixelGaussian(0.2)
    pred = torch.randn(2, 3, 4, 4)
    y = torch.randn(2, 3, 4, 4)
    y2 = y.clone()
    y2[..., :2, :] = 1e6  # garbage where not observed
    assert torch.allclose(lik.log_prob(pred, y, mask), lik.log_prob(pred, y2, mask))
    pw = lik.pointwise_log_prob(pred, y, mask)
    assert pw.shape == (2, 48) and torch.isnan(pw).sum() == 2 * 24
    assert torch.allclose(torch.nansum(pw, -1), lik.log_prob(pred, y, mask), rtol=1e-5)
    ref = torch.distributions.Normal(pred[..., 2:, :], 0.2).log_prob(y[..., 2:, :]).sum((-1, -2, -3))
    assert torch.allclose(lik.log_prob(pred, y, mask), ref, rtol=1e-5)


def test_perceptual_likelihood_caches_target_and_is_gaussian_in_features():
    calls = []

    class Phi(torch.nn.Module):
        def forward(self, x):
            calls.append(x.shape[0])
            return x.mean(1)

    lik = PerceptualGaussian(Phi(), sigma=0.5)
    y = torch.randn(2, 3, 4, 4)
    pred = torch.randn(5, 2, 3, 4, 4)  # extra leading (particle) dim
    lp = lik.log_prob(pred, y, None)
    lik.log_prob(pred, y, None)
    assert lp.shape == (5, 2)
    assert calls.count(2) == 1  # phi(y) computed once
    ref = torch.distributions.Normal(pred.mean(2).reshape(5, 2, -1), 0.5).log_prob(y.mean(1).reshape(2, -1)).sum(-1)
    assert torch.allclose(lp, ref, rtol=1e-5)


def test_model_sites_shapes_and_particles():
    G = ConvGenerator(img_resolution=8, w_dim=8)
    phi = torch.nn.Conv2d(3, 2, 1)
    model = build_model(G, Inpainting(torch.tensor([[1.0] * 8] * 4 + [[0.0] * 8] * 4)), phi=phi)
    y = torch.zeros(3, 3, 8, 8)
    tr = poutine.trace(model).get_trace(y)
    tr.compute_log_prob()
    assert tr.nodes["w"]["value"].shape == (3, G.num_ws, 8)
    for site in ("w", "w_colinearity", "y", "y_percept"):
        assert tr.nodes[site]["log_prob"].shape == (3,), site
    assert model.site_terms() == {"w": "prior", "w_colinearity": "colinearity", "y": "pixel", "y_percept": "perceptual"}
    with pyro.plate("particles", 4, dim=-2):
        tr = poutine.trace(model).get_trace(y)
    assert tr.nodes["w"]["value"].shape == (4, 3, G.num_ws, 8)


def test_bad_observation_shape_is_a_user_error():
    G = ConvGenerator(img_resolution=16)
    model = build_model(G, SuperResolution(4))
    with pytest.raises(BRGMError, match=r"shape \(B, 3, 4, 4\)"):
        run_map(model, torch.zeros(1, 3, 8, 8), steps=1, progress=False)


def test_checkpoints_are_written(tmp_path):
    from safetensors.torch import load_file

    G = ConvGenerator(img_resolution=8, w_dim=8)
    model = build_model(G, Identity())
    path = tmp_path / "ckpt.safetensors"
    res = run_map(model, torch.zeros(2, 3, 8, 8), steps=20, checkpoint_path=str(path), checkpoint_every=10,
                  progress=False)
    saved = load_file(str(path))
    assert saved["w"].shape == res.w.shape


def test_autonormal_scale_is_softplus_of_rho():
    """Paper Sec. 2.4: sigma_v = log(1 + exp(rho_v)); Pyro's AutoNormal uses exactly that constraint."""
    from pyro.distributions import constraints
    from pyro.infer.autoguide import AutoNormal

    assert AutoNormal.scale_constraint is constraints.softplus_positive
    rho = torch.tensor([-3.0, 0.0, 2.0])
    assert torch.allclose(torch.distributions.transform_to(constraints.softplus_positive)(rho),
                          torch.log1p(torch.exp(rho)))
