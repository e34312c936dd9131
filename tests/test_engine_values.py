"""inference/engine.py's bookkeeping, value by value (issue 31's mutation run of the engine):

* the loss history a user reads (``InferenceResult.history``) names every term, the entropy and
  the hyperprior, and ``loss`` is their sum at every step (the documented "total minimised");
* P particles computed in one batch and one particle at a time (the memory budget's chunked path)
  give the same terms and the same gradients, and the terms are the average over the particles of
  the log joint written out by hand from the same guide draws (Gaussian prior, pixel likelihood).
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from brgm_pyro.inference import run_vi
from brgm_pyro.inference.engine import ELBOTerms
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats


def _model(**kw):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=1)
    return build_model(G, Identity(), prior="gaussian", stats=compute_latent_stats(G, num_samples=200), **kw)


def test_history_names_every_term_and_loss_is_their_sum():
    model = _model(sigma_pixel=0.1)
    y = torch.randn(1, 1, 4, 4) * 0.3
    res = run_vi(model, y, steps=4, num_samples=2, seed=0, progress=False)
    assert set(res.history) == {"loss", "prior", "pixel", "entropy", "hyperprior"}
    h = {k: np.array(v) for k, v in res.history.items()}
    assert all(len(v) == 4 for v in h.values())
    np.testing.assert_allclose(h["loss"], sum(v for k, v in h.items() if k != "loss"), rtol=1e-5, atol=1e-4)


def _terms(model, guide, y, P, chunk):
    pyro.set_rng_seed(3)
    elbo = ELBOTerms(model, guide, num_particles=P, entropy=True)
    elbo.chunk = chunk
    loss, vec = elbo(y)
    params = list(guide.parameters())
    grads = torch.autograd.grad(loss, params)
    return elbo.names, loss.detach(), vec.detach(), [g.detach() for g in grads]


@pytest.mark.parametrize("P", [2, 3])
def test_particles_in_one_batch_and_one_at_a_time_agree_and_average_the_log_joint(P):
    from pyro.infer.autoguide import AutoNormal

    pyro.clear_param_store()
    model = _model(sigma_pixel=0.1)
    y = torch.randn(2, 1, 4, 4) * 0.3
    guide = AutoNormal(model)
    guide(y)  # make its parameters
    names, loss1, vec1, g1 = _terms(model, guide, y, P, None)
    _, loss2, vec2, g2 = _terms(model, guide, y, P, 1)
    torch.testing.assert_close(vec1, vec2, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(loss1, loss2, rtol=1e-5, atol=1e-4)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # the same P draws of the guide, the log joint by hand: N(w | mu, sigma) and N(y | G(w), 0.1)
    pyro.set_rng_seed(3)
    with pyro.plate("particles", P, dim=-2):
        w = poutine.trace(guide).get_trace(y).nodes["w"]["value"].detach()  # (P, B, L, d)
    base = model.prior.distribution().base_dist
    prior = torch.distributions.Normal(base.loc, base.scale).log_prob(w).sum((-2, -1)).sum(-1).mean()
    x = model.render(w.reshape(-1, 2, 3)).reshape(P, 2, 1, 4, 4)
    pixel = (-0.5 * ((y - x) / 0.1) ** 2 - math.log(0.1 * math.sqrt(2 * math.pi))).sum((-3, -2, -1)).sum(-1).mean()
    got = dict(zip(names, vec1.tolist()))
    assert got["prior"] == pytest.approx(-prior.item(), rel=1e-4)
    assert got["pixel"] == pytest.approx(-pixel.item(), rel=1e-4)


@pytest.mark.parametrize("kind", ["mvn", "lowrank"])
def test_marginal_std_of_each_site_of_a_packed_guide_is_pyros_unpacking(kind):
    """guide_marginal_std(guide, site) of a guide over one packed vector (the VI hyperprior reads w's):
    each site's part is what Pyro's own unpacking gives for that site (three sites: w, the noise
    level, the blur width)."""
    from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoMultivariateNormal

    from brgm_pyro.inference.engine import guide_marginal_std
    from brgm_pyro.models.corruptions.superres import blind_superres

    pyro.clear_param_store()
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=1)
    model = build_model(G, blind_superres(2), prior="gaussian", sigma_pixel="learn",
                        stats=compute_latent_stats(G, num_samples=200))
    y = torch.randn(1, 1, 2, 2) * 0.3
    guide = AutoMultivariateNormal(model) if kind == "mvn" else AutoLowRankMultivariateNormal(model, rank=2)
    guide(y)
    with torch.no_grad():  # make every coordinate's std different
        for p in guide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = guide_marginal_std(guide).detach()
    cov = guide.get_posterior().covariance_matrix.detach()
    torch.testing.assert_close(sd, cov.diagonal().sqrt())
    parts = {site["name"]: v for site, v in guide._unpack_latent(sd)}
    sites = [n for n, _ in guide.prototype_trace.iter_stochastic_nodes()]
    assert len(sites) == 3
    for name in sites:
        torch.testing.assert_close(guide_marginal_std(guide, name).detach(), parts[name].reshape(-1))
