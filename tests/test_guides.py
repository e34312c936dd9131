"""The per-image low-rank guide (issue 28, item 2): images independent in q, cost linear in the batch."""

import time

import pyro
import torch

from brgm_pyro.inference import run_vi
from brgm_pyro.inference.engine import ELBOTerms, _particles, analytic_entropy, guide_marginal_std
from brgm_pyro.inference.guides import AutoImagesLowRank
from brgm_pyro.inference.sites import init_loc_fn, initial_values
from brgm_pyro.inference.vi import GUIDES
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import LinearGenerator
from tests.helpers import linear_gaussian_posterior

torch.set_num_threads(1)


def _problem(B, num_ws=2, w_dim=3, res=4, seed=0, **kw):
    G = LinearGenerator(num_ws=num_ws, w_dim=w_dim, img_channels=1, img_resolution=res, scale=2.0, seed=seed)
    model = build_model(G, SuperResolution(2, "box"), prior="gaussian", sigma_pixel=0.3, **kw)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        y = model.predict(model.init_latents(B) + 0.3 * torch.randn(B, num_ws, w_dim, generator=g))
    return model, y


def _guide(model, y, rank=3):
    pyro.clear_param_store()
    q = GUIDES.build("lowrank", model, init_loc_fn(initial_values(model, y, None, None)), 0.1, rank=rank)
    q(y)
    with torch.no_grad():  # a guide with correlations: random factors and scales
        q.cov_factor.normal_()
    return q


def test_images_are_independent_in_the_guide():
    model, y = _problem(2)
    q = _guide(model, y)
    assert isinstance(q, AutoImagesLowRank) and q.cov_factor.shape == (2, 6, 3)
    n = 40000
    with torch.no_grad():
        w = _particles(q, n)(y)["w"].reshape(n, 2 * 6).double()
    cov = torch.cov(w.T)
    post = q.get_posterior()
    within = post.covariance_matrix.double()  # (2, 6, 6)
    se = 4 * cov.diagonal().max() / n ** 0.5  # ~4 standard errors of a covariance
    assert cov[:6, 6:].abs().max() < se  # no covariance between image 0 and image 1
    assert (cov[:6, :6] - within[0]).abs().max() < se and (cov[6:, 6:] - within[1]).abs().max() < se
    # entropy and marginal scales are the images' own, summed / concatenated
    assert torch.allclose(analytic_entropy(q), post.entropy().sum())
    assert torch.allclose(guide_marginal_std(q, "w").double(), within.diagonal(dim1=-2, dim2=-1).sqrt().reshape(-1),
                          rtol=1e-5)


def test_each_image_fits_as_if_alone():
    """A batch of two gives each image the posterior it gets alone (the closed form: a rank-6 guide is
    exact for D = 6)."""
    model, y = _problem(2)
    res = run_vi(model, y, guide="lowrank", guide_options={"rank": 6}, steps=1500, lr=0.02, lr_decay=0.01,
                 num_particles=32, hyperprior=None, num_samples=0, progress=False, init_scale=0.1)
    q_cov = res.extra["posterior"].covariance_matrix.double()
    for b in range(2):
        _, cov = linear_gaussian_posterior(model, y[b:b + 1])
        assert (q_cov[b] - cov).norm() / cov.norm() < 0.15


def _step_seconds(model, y, reps=5):
    q = _guide(model, y, rank=10)
    elbo = ELBOTerms(model, q, num_particles=4, entropy=True, hyperprior=(0.1, 0.95))
    params = list(q.parameters())
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        loss, _ = elbo(y)
        torch.autograd.grad(loss, params)
        best = min(best, time.perf_counter() - t0)
    return best


def test_step_time_grows_linearly_with_the_batch():
    """D = 8 x 64 = 512 per image: the joint guide's dense Cholesky of a (4 D) x (4 D) matrix cost 44x
    for 4x the images on faces64; this guide's step costs at most ~4x (the generator's share included)."""
    model1, y1 = _problem(1, num_ws=8, w_dim=64, res=16)
    model4, y4 = _problem(4, num_ws=8, w_dim=64, res=16)
    t1, t4 = _step_seconds(model1, y1), _step_seconds(model4, y4)
    assert t4 < 5.0 * t1, (t1, t4)
