"""The core must be *exact* where the posterior is known: linear G, Gaussian prior, pixel likelihood."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity, Inpainting, SuperResolution
from brgm_pyro.models.generators import ConvGenerator, LinearGenerator
from tests.helpers import linear_gaussian_posterior


def _linear_problem(corruption=None, sigma_pixel=0.3, temperature=1.0, seed=0):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=seed)
    model = build_model(G, corruption or Identity(), prior="gaussian", sigma_pixel=sigma_pixel,
                        temperature=temperature)
    g = torch.Generator().manual_seed(seed + 1)
    w_true = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w_true) + sigma_pixel * torch.randn(1, *model.obs_shape, generator=g)
    return model, y


@pytest.mark.parametrize("corruption", [None, SuperResolution(2, "bicubic"),
                                        Inpainting(torch.tensor([[1, 1, 0, 0]] * 4))])
def test_map_equals_closed_form_mode(corruption):
    model, y = _linear_problem(corruption)
    mean, _ = linear_gaussian_posterior(model, y[0])
    res = run_map(model, y, steps=1500, lr=0.05, lr_decay=0.001, progress=False)
    w = res.w.double().reshape(-1)
    assert res.stopped is None
    assert (w - mean).norm() / mean.norm() < 1e-4


def test_vi_mean_field_optimum():
    """The mean-field optimum of KL(q || N(m, S)) is q_k = N(m_k, 1 / (S^-1)_kk)."""
    model, y = _linear_problem(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    mf_std = 1 / torch.linalg.inv(cov).diagonal().sqrt()
    res = run_vi(model, y, steps=1500, lr=0.02, lr_decay=0.01, num_particles=32, hyperprior=None,
                 num_samples=0, progress=False, init_scale=0.1)
    loc = res.extra["loc"].double().reshape(-1)
    scale = res.extra["scale"].double().reshape(-1)
    assert ((loc - mean).abs() / mean.abs().clamp_min(0.1)).max() < 0.02
    assert ((scale - mf_std).abs() / mf_std).max() < 0.05


def test_full_covariance_guide_recovers_posterior_covariance():
    model, y = _linear_problem(SuperResolution(2, "box"))
    mean, cov = linear_gaussian_posterior(model, y[0])
    res = run_vi(model, y, guide="mvn", steps=1500, lr=0.02, lr_decay=0.01, num_particles=32, hyperprior=None,
                 num_samples=0, progress=False, init_scale=0.1)
    post = res.extra["posterior"]
    q_cov = post.covariance_matrix.double()
    assert (post.mean.double() - mean).abs().max() < 0.02 * mean.abs().max()
    assert (q_cov - cov).norm() / cov.norm() < 0.08
    # a mean-field guide cannot: its covariance misses the off-diagonal mass
    assert (torch.diag(cov.diagonal()) - cov).norm() / cov.norm() > 0.1


def test_lowrank_guide_runs_and_learns_correlations():
    model, y = _linear_problem(SuperResolution(2, "box"))
    _, cov = linear_gaussian_posterior(model, y[0])
    res = run_vi(model, y, guide="lowrank", guide_options={"rank": 6}, steps=1500, lr=0.02, lr_decay=0.01,
                 num_particles=32, hyperprior=None, num_samples=8, progress=False, init_scale=0.1)
    q_cov = res.extra["posterior"].covariance_matrix.double()
    assert (q_cov - cov).norm() / cov.norm() < 0.15
    assert res.samples_w.shape == (8, 1, 2, 3)


def test_temperature_widens_the_posterior_as_documented():
    model, y = _linear_problem(SuperResolution(2, "box"), temperature=4.0)
    _, cov4 = linear_gaussian_posterior(model, y[0])
    model1, _ = _linear_problem(SuperResolution(2, "box"), temperature=1.0)
    _, cov1 = linear_gaussian_posterior(model1, y[0])
    res = run_vi(model, y, steps=1500, lr=0.02, lr_decay=0.01, num_particles=32, hyperprior=None,
                 num_samples=0, progress=False, init_scale=0.1)
    mf4 = 1 / torch.linalg.inv(cov4).diagonal().sqrt()
    assert ((res.extra["scale"].double().reshape(-1) - mf4).abs() / mf4).max() < 0.05
    assert (mf4 > 1 / torch.linalg.inv(cov1).diagonal().sqrt()).all()


def test_hyperprior_widens_sigma_v():
    """Documented direction: the inverse-gamma(0.1, 0.95) hyperprior pushes sigma_v (in prior-std
    units) towards its mode 0.95 / 1.1 = 0.86, i.e. up for a posterior narrower than the prior."""
    model, y = _linear_problem(SuperResolution(2, "box"), sigma_pixel=0.05)
    kw = dict(steps=600, lr=0.02, num_particles=8, num_samples=0, progress=False)
    plain = run_vi(model, y, hyperprior=None, **kw).extra["scale"]
    hyper = run_vi(model, y, hyperprior=(0.1, 0.95), **kw).extra["scale"]
    prior_std = model.prior.distribution().base_dist.scale
    assert (plain / prior_std < 0.86).all()
    assert (hyper > plain).all()


def _paper_loss(model, w, y, kappa, sigma_pixel, phi=None, sigma_percept=None):
    """Eq. 6 of the paper, written out by hand."""
    prior = model.prior.base.distribution().base_dist
    L_w = (((w - prior.loc) / prior.scale) ** 2).sum((-1, -2))
    u = w / w.norm(dim=-1, keepdim=True)
    cos = u @ u.transpose(-1, -2)
    iu = torch.triu_indices(w.shape[-2], w.shape[-2], 1)
    L_colin = cos[..., iu[0], iu[1]].sum(-1)
    pred = model.corruption(model.generator(w))
    L_pixel = ((y - pred) ** 2).sum((-1, -2, -3))
    loss = L_w - 2 * kappa * L_colin + sigma_pixel ** -2 * L_pixel
    if phi is not None:
        f = lambda x: phi(x).reshape(x.shape[0], -1)
        loss = loss + sigma_percept ** -2 * ((f(y) - f(pred)) ** 2).sum(-1)
    return loss


def test_pyro_log_joint_is_minus_half_the_paper_loss():
    G = ConvGenerator(img_resolution=16, w_dim=8, seed=3)
    phi = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Tanh())
    kappa, sp, sq = 1.7, 0.1, 0.5
    model = build_model(G, SuperResolution(2, "bicubic"), prior="brgm", kappa=kappa, sigma_pixel=sp,
                        phi=phi, sigma_percept=sq)
    y = torch.randn(1, 3, 8, 8) * 0.3
    diffs = []
    for seed in range(4):
        w = model.init_latents(1) + torch.randn(1, G.num_ws, 8, generator=torch.Generator().manual_seed(seed))
        tr = poutine.trace(poutine.condition(model, data={"w": w})).get_trace(y)
        logj = tr.log_prob_sum()
        paper = _paper_loss(model, w, y, kappa, sp, phi, sq).sum()
        diffs.append(float(logj + 0.5 * paper))
        assert torch.allclose(model.log_joint(w, y).sum(), logj, rtol=1e-5)
    # equal up to one constant (the normalisers), for every w
    assert max(diffs) - min(diffs) < 1e-3 * abs(diffs[0]) + 1e-2


def test_gradients_finite_at_exactly_colinear_latents():
    G = ConvGenerator(img_resolution=8, w_dim=8)
    model = build_model(G, Identity(), prior="brgm", kappa=5.0)
    y = torch.zeros(1, *model.obs_shape)
    for w0 in [torch.ones(1, G.num_ws, 8), model.init_latents(1)]:
        w = w0.clone().requires_grad_(True)
        model.log_joint(w, y).sum().backward()
        assert torch.isfinite(w.grad).all()
        # at exact colinearity the colinearity term has zero gradient along the common direction
    w = torch.ones(1, G.num_ws, 8, requires_grad=True)
    model.prior.factors[0].log_factor(w).sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().max() < 1e-5


def test_batch_equals_separate_runs():
    G = ConvGenerator(img_resolution=16, w_dim=8, seed=1)
    model = build_model(G, SuperResolution(4), prior="brgm")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        y = model.predict(model.init_latents(3) + 0.5 * torch.randn(3, G.num_ws, 8, generator=g))
    batch = run_map(model, y, steps=40, progress=False)
    for b in range(3):
        one = run_map(model, y[b:b + 1], steps=40, progress=False)
        assert torch.allclose(batch.w[b], one.w[0], atol=1e-5)


def test_same_seed_same_result_and_terms_add_up():
    G = ConvGenerator(img_resolution=16, w_dim=8)
    model = build_model(G, SuperResolution(4), prior="brgm")
    y = torch.zeros(2, *model.obs_shape)
    a = run_vi(model, y, steps=15, seed=7, num_samples=4, progress=False)
    b = run_vi(model, y, steps=15, seed=7, num_samples=4, progress=False)
    assert torch.equal(a.samples_w, b.samples_w)
    assert set(a.history) == {"loss", "prior", "colinearity", "pixel", "entropy", "hyperprior"}
    parts = sum(torch.tensor(v) for k, v in a.history.items() if k != "loss")
    assert torch.allclose(parts, torch.tensor(a.history["loss"]), rtol=1e-4, atol=1e-3)


def test_monte_carlo_entropy_matches_analytic():
    """The ELBO with the generic MC entropy (any guide) agrees in expectation with the closed form."""
    from pyro.infer.autoguide import AutoNormal
    from pyro.infer.autoguide.initialization import init_to_value

    from brgm_pyro.inference.engine import ELBOTerms

    model, y = _linear_problem()
    with pyro.get_param_store().scope():
        q = AutoNormal(model, init_loc_fn=init_to_value(values={"w": model.init_latents(1)}), init_scale=0.2)
        q(y)
        exact = ELBOTerms(model, q, num_particles=1)
        mc = ELBOTerms(model, q, num_particles=4000)
        mc._analytic = False
        with torch.no_grad():
            e = dict(zip(exact.names, exact(y)[1].tolist()))["entropy"]
            m = dict(zip(mc.names, mc(y)[1].tolist()))["entropy"]
    assert abs(e - m) < 0.05 * abs(e) + 0.2


def test_nan_stops_cleanly_with_last_good_state():
    class Exploding(LinearGenerator):
        def synthesis(self, ws):
            out = super().synthesis(ws)
            bad = ws.abs().amax(dim=(-1, -2)) > 1.5
            return torch.where(bad[:, None, None, None], torch.full_like(out, float("nan")), out)

    G = Exploding(num_ws=2, w_dim=3, img_channels=1, img_resolution=4)
    model = build_model(G, Identity(), prior="flat", sigma_pixel=0.1)
    y = torch.full((1, 1, 4, 4), 50.0)  # pulls w far away, beyond the NaN boundary
    res = run_map(model, y, steps=500, lr=0.2, lr_decay=1.0, progress=False)
    assert res.stopped is not None and "non-finite" in res.stopped
    assert torch.isfinite(res.w).all() and torch.isfinite(res.image).all()
    assert res.w.abs().max() <= 1.5
    assert all(math.isfinite(v) for v in res.history["loss"])


@pytest.mark.parametrize("kind", ["w only", "learned noise, blur width and discrepancy colour, 2 images"])
def test_map_one_trace_objective_equals_the_elbo_of_a_point_guide(kind):
    """run_map's LogJointTerms (one model trace) gives the loss, terms and gradients of
    ELBOTerms(entropy=False) over the same AutoDelta (guide trace + replayed model)."""
    from pyro.infer.autoguide import AutoDelta

    from brgm_pyro.inference.engine import ELBOTerms, LogJointTerms
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.corruptions import SuperResolution, blur_width_latent
    from brgm_pyro.models.discrepancy import Discrepancy, StationarySmoother

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8, scale=2.0, seed=4)
    if kind == "w only":
        model, B = build_model(G, SuperResolution(2, "box"), prior="brgm", sigma_pixel=0.1), 1
    else:
        f = SuperResolution(2, "gauss", gauss_sigma=blur_width_latent(2, guess=1.0, spread=0.5))
        disc = Discrepancy(0.05, spectrum=StationarySmoother(radius=[0.0, 0.3, 0.7], power=[1.0, 0.5, 0.1]),
                           colour="learn")
        model, B = build_model(G, f, prior="brgm", sigma_pixel="learn", discrepancy=disc), 2
    y = torch.randn(B, *model.obs_shape, generator=torch.Generator().manual_seed(0)) * 0.3
    with pyro.get_param_store().scope():
        guide = AutoDelta(model)
        guide(y)
        with torch.no_grad():  # move every parameter off its initial value
            for p in guide.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        out = []
        for obj in (ELBOTerms(model, guide, num_particles=1, entropy=False), LogJointTerms(model, guide)):
            guide.zero_grad()
            loss, vec = obj(y)
            loss.backward()
            out.append((obj.names, loss.detach(), vec.detach(), [p.grad.clone() for p in guide.parameters()]))
    (n1, l1, v1, g1), (n2, l2, v2, g2) = out
    assert n1 == n2 and len(g1) >= (1 if kind == "w only" else 4)
    assert torch.allclose(l1, l2, rtol=1e-5) and torch.allclose(v1, v2, rtol=1e-5, atol=1e-4)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
