"""Contract tests generated from the registries (deepinv's operator list, BlackJAX's parametrised
sampler tests): a prior, corruption, likelihood, guide or method gets them by being registered.

For each component, on a tiny linear generator, with a learned noise level in the model so that
every method meets a second latent site:
- the trace's latent sites are the declared ones (``model.latent_sites()``), observed sites the
  likelihoods' and factors';
- the log density from the trace equals the components' direct computation, term by term;
- leading sample dims pass through (S draws at once == S single evaluations);
- gradients are finite; components state their initial values; same seed, same result;
- every method's result covers every site and round-trips through ArviZ (NetCDF write + read).
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import GUIDES, METHODS, run_vi
from brgm_pyro.inference.arviz_io import read_inference_data, to_inference_data, write_inference_data
from brgm_pyro.models.brgm import BRGMModel, build_model, noise_latent
from brgm_pyro.models.corruptions import CORRUPTIONS, Identity
from brgm_pyro.models.density import log_density_terms
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
from brgm_pyro.models.likelihoods import LIKELIHOODS, PixelGaussian
from brgm_pyro.models.priors import PRIORS, make_prior

G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8, scale=1.0, seed=0)
STATS = compute_latent_stats(G, num_samples=2000)


def _model(prior="brgm", corruption=None, likelihoods=None) -> BRGMModel:
    p = make_prior(prior, G, STATS, kappa=1.0)
    liks = likelihoods or [PixelGaussian(noise_latent(guess=0.1))]
    return BRGMModel(G, p, corruption or Identity(), liks)


def _observation(model: BRGMModel, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = model.init_latents(2) + 0.3 * torch.randn(2, *G.latent_shape, generator=g)
    params = {k: v for k, v in model.init_values(2).items() if k != model.image_site}
    with torch.no_grad():
        y = model.predict(w, params)
    return y + 0.05 * torch.randn(y.shape, generator=g)


def _random_latents(model: BRGMModel, S: int | None, seed: int = 1) -> dict:
    """Latents near the starting values, natural layout, S leading draws (or none)."""
    n = 1 if S is None else S
    draws = model.draw_inits(n, 2, seed)
    return {k: v[0] for k, v in draws.items()} if S is None else draws


def _direct_terms(model: BRGMModel, y, lat: dict) -> dict:
    """log density by term, from the components' own methods (no Pyro trace)."""
    w = lat[model.image_site]
    params = {l.name: lat[l.name] for l in model.scalar_latents}
    out = {model.prior.term: model.prior.base.log_prob(w).sum() if hasattr(model.prior, "base")
           else model.prior.log_prob(w).sum()}
    for f in getattr(model.prior, "factors", []):
        out[f.term] = f.log_factor(w).sum()
    for l in model.scalar_latents:
        out[l.term] = l.prior.log_prob(params[l.name]).sum()
    pred = model.predict(w, params)
    for lik in model.likelihoods:
        out[lik.term] = lik.log_prob(pred, y, model.mask, params).sum() / model.temperature
    return out


def _check_model(model: BRGMModel, y) -> None:
    tr = poutine.trace(model).get_trace(y)
    latent = [n for n, s in tr.nodes.items()
              if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]
    assert latent == list(model.latent_sites()), latent
    observed = {n for n, s in tr.nodes.items() if s["type"] == "sample" and s["is_observed"]}
    assert observed == set(model.site_terms()) - set(latent)
    lat = _random_latents(model, None)
    terms = log_density_terms(model, y, lat)
    direct = _direct_terms(model, y, lat)
    assert set(terms) == set(direct)
    for k in terms:
        assert torch.allclose(terms[k], direct[k], rtol=1e-5, atol=1e-4), (k, terms[k], direct[k])
    # S draws at once == S single evaluations
    draws = _random_latents(model, 3)
    many = log_density_terms(model, y, draws)
    for s in range(3):
        one = log_density_terms(model, y, {k: v[s] for k, v in draws.items()})
        for k in one:
            assert torch.allclose(many[k][s], one[k], rtol=1e-5, atol=1e-4), k
    wv = lat[model.image_site].clone().requires_grad_(True)
    model.log_joint({**lat, model.image_site: wv}, y).backward()
    assert torch.isfinite(wv.grad).all() and wv.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_contract(name):
    model = _model(prior=name)
    y = _observation(model)
    _check_model(model, y)
    p = model.prior
    assert tuple(p.init_value().shape) == G.latent_shape
    ref, curv = p.reference_scale(), p.curvature()
    assert ref is None or (tuple(ref.shape) == G.latent_shape and bool((ref > 0).all()))
    assert curv is None or (tuple(curv.shape) == G.latent_shape and bool((curv > 0).all()))
    a = p.draw_init(5, torch.Generator().manual_seed(0))
    b = p.draw_init(5, torch.Generator().manual_seed(0))
    assert tuple(a.shape) == (5, *G.latent_shape) and torch.equal(a, b) and torch.isfinite(a).all()


@pytest.mark.parametrize("name", CORRUPTIONS.names())
def test_corruption_contract(name):
    example = CORRUPTIONS.example(name)
    assert example is not None, f"register an example for the corruption {name!r}"
    f = example(G.image_shape)
    model = _model(corruption=f)
    y = _observation(model)
    assert tuple(y.shape[1:]) == tuple(f.out_shape(G.image_shape))
    _check_model(model, y)
    x = torch.randn(4, 2, *G.image_shape, requires_grad=True)  # leading dims pass through
    params = {l.name: l.init_value(2).expand(4, 1) if not l.per_image else l.init_value(2).expand(4, 2)
              for l in f.latents()}
    out = f(x, params)
    assert tuple(out.shape) == (4, 2, *f.out_shape(G.image_shape))
    ref = torch.stack([f(x[i], {k: v[i, 0] if v.shape[1] == 1 else v[i] for k, v in params.items()})
                       for i in range(4)])
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("learned", [False, True], ids=["fixed", "learned"])
@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood_contract(name, learned):
    example = LIKELIHOODS.example(name)
    assert example is not None, f"register an example for the likelihood {name!r}"
    scale = noise_latent(guess=0.2, name=f"{name}_scale") if learned else 0.2
    lik = example(scale)
    liks = [lik] if name != "perceptual" else [PixelGaussian(0.1), lik]
    model = _model(likelihoods=liks)
    y = _observation(model)
    _check_model(model, y)
    lat = _random_latents(model, None)
    params = {l.name: lat[l.name] for l in model.scalar_latents}
    pred = model.predict(lat["w"], params)
    total = lik.log_prob(pred, y, model.mask, params)
    point = lik.pointwise_log_prob(pred, y, model.mask, params)
    assert torch.allclose(torch.nansum(point, -1), total, rtol=1e-5, atol=1e-4)
    try:
        mean, info = lik.gauss_newton(pred, model.mask, params)
        assert mean.ndim == 1 and torch.all(torch.as_tensor(info) > 0)
    except BRGMError as e:
        assert type(lik).__name__ in str(e)


@pytest.mark.parametrize("name", GUIDES.names())
def test_guide_contract(name):
    model = _model()
    y = _observation(model)
    a = run_vi(model, y, guide=name, steps=5, num_samples=6, seed=3, progress=False)
    b = run_vi(model, y, guide=name, steps=5, num_samples=6, seed=3, progress=False)
    assert set(a.draws) == set(model.latent_sites()) == set(a.latents)
    assert tuple(a.draws["sigma_pixel"].shape) == (6,) and bool((a.draws["sigma_pixel"] > 0).all())
    for k in a.draws:
        assert torch.equal(a.draws[k], b.draws[k]), k
    assert all(np.isfinite(v[-1]) for v in a.history.values())


def _budget(name: str) -> dict:
    if name in ("map", "vi"):
        return {"steps": 4, "num_samples": 4}
    if name == "inla":
        return {"steps": 4, "num_samples": 4, "refine_steps": 3}
    if name == "smc":
        return {"steps": 2, "num_samples": 4, "num_chains": 2, "num_particles": 16}
    return {"steps": 4, "num_samples": 4, "num_chains": 2, "map_steps": 5}


@pytest.mark.parametrize("name", METHODS.names())
def test_method_contract(name, tmp_path):
    model = _model(prior="brgm", likelihoods=[PixelGaussian(noise_latent(guess=0.1, per_image=True))])
    y = _observation(model)
    run = METHODS.get(name)
    a = run(model, y, seed=5, progress=False, **_budget(name))
    b = run(model, y, seed=5, progress=False, **_budget(name))
    assert set(a.latents) == set(model.latent_sites())
    assert tuple(a.latents["sigma_pixel"].shape) == (2,) and tuple(a.w.shape) == (2, *G.latent_shape)
    for k in a.latents:
        assert torch.equal(a.latents[k], b.latents[k]), k
    idata = to_inference_data(a, model, y)
    for k in model.latent_sites():
        assert k in idata.posterior
    assert idata.posterior["sigma_pixel"].dims == ("chain", "draw", "image")
    path = write_inference_data(idata, tmp_path / "p.nc")
    back = read_inference_data(path)
    for k in model.latent_sites():
        np.testing.assert_array_equal(back.posterior[k].values, idata.posterior[k].values)
    assert np.isfinite(back.sample_stats["lp"].values).all()
    assert "log_sigma_pixel_prior" in back.sample_stats


def test_misspelt_options_are_errors():
    model = _model()
    y = _observation(model)
    for name in ("map", "vi"):
        with pytest.raises(TypeError):
            METHODS.get(name)(model, y, stpes=3, progress=False)
    with pytest.raises(BRGMError):
        METHODS.get("nuts")(model, y, steps=2, num_samples=2, num_chains=1, max_tree_dpeth=3, progress=False)
    with pytest.raises(BRGMError, match="lr"):
        METHODS.get("nuts")(model, y, steps=2, num_samples=2, num_chains=1, lr=0.1, progress=False)
    with pytest.raises(BRGMError, match="unknown latent"):
        METHODS.get("map")(model, y, steps=2, init={"sigma": torch.tensor(0.1)}, progress=False)


def test_missing_component_statements_are_one_line_errors():
    """A prior that states nothing: each method says what it lacks, naming the prior."""
    from brgm_pyro.models.priors import Prior

    class Bare(Prior):
        num_ws, w_dim = G.num_ws, G.w_dim

        def distribution(self):
            import pyro.distributions as dist

            return dist.Normal(torch.zeros(G.latent_shape), 1.0).to_event(2)

    model = BRGMModel(G, Bare(), Identity(), [PixelGaussian(0.1)])
    y = _observation(_model())
    with pytest.raises(BRGMError, match="Bare.*initial value"):
        METHODS.get("map")(model, y, steps=2, progress=False)
    init = {"w": torch.zeros(2, *G.latent_shape)}
    with pytest.raises(BRGMError, match="Bare.*reference scale"):
        run_vi(model, y, steps=2, init=init, progress=False)
    with pytest.raises(BRGMError, match="Bare.*curvature"):
        METHODS.get("nuts")(model, y, steps=2, num_samples=2, num_chains=1, init=init, mass="laplace",
                            progress=False)
    with pytest.raises(BRGMError, match="Bare.*starting points"):
        METHODS.get("nuts")(model, y, steps=2, num_samples=2, num_chains=1, init="prior", progress=False)
    pyro.clear_param_store()


class _UnprobedStudentT(__import__("pyro").distributions.StudentT):
    """A Student-t whose moments cannot be read: inference may only score and sample it."""

    @property
    def mean(self):
        raise AssertionError("inference read the prior's mean")

    @property
    def stddev(self):
        raise AssertionError("inference read the prior's stddev")

    @property
    def variance(self):
        raise AssertionError("inference read the prior's variance")


@pytest.mark.parametrize("method", ["map", "vi", "nuts", "mala"])
def test_non_gaussian_prior_through_every_method(method):
    """The Student-t prior (no Gaussian anywhere) through MAP, VI, NUTS and MALA, with a learned
    noise level; MCMC starts (Laplace and prior draws) never read the distribution's moments."""
    from brgm_pyro.models.priors import StudentTPrior

    class Unprobed(StudentTPrior):
        def distribution(self):
            loc = self.mu.expand(self.num_ws, self.w_dim)
            return _UnprobedStudentT(torch.tensor(self.df), loc, self.scale).to_event(2)

    prior = Unprobed(STATS.mu, STATS.sigma, 4.0, G.num_ws, G.w_dim)
    model = BRGMModel(G, prior, Identity(), [PixelGaussian(noise_latent(guess=0.1))])
    y = _observation(model)
    run = METHODS.get(method)
    inits = ["laplace", "prior"] if method in ("nuts", "mala") else [None]
    for init in inits:
        kw = _budget(method) if init is None else {**_budget(method), "init": init}
        res = run(model, y, seed=0, progress=False, **kw)
        assert set(res.latents) == {"w", "sigma_pixel"}
        assert torch.isfinite(res.w).all() and float(res.latents["sigma_pixel"]) > 0
        if res.draws is not None:
            assert torch.isfinite(res.draws["w"]).all()
