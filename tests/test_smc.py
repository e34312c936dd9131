"""Adaptive tempered SMC against closed forms: evidence, posterior moments, mode weights, SBC, model choice.

Every problem has a known answer: a linear generator with a Gaussian (or two-component mixture)
prior and Gaussian pixel noise has a Gaussian (mixture) posterior and a Gaussian marginal
likelihood N(y | A mu + b, A Sigma0 A^T + sigma^2 I). All runs are seeded.
"""

import math

import numpy as np
import pytest
import torch

from brgm_pyro.calibration import sbc_ranks, sbc_uniformity
from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import METHODS, run_smc
from brgm_pyro.inference.smc.tempering import next_delta, systematic_resample, _log_cess
from brgm_pyro.models.brgm import BRGMModel, build_model, noise_latent
from brgm_pyro.models.corruptions import Identity, SuperResolution
from brgm_pyro.models.generators import LinearGenerator
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import GaussianMixturePrior
from tests.helpers import linear_gaussian_posterior


def _problem(corruption=None, sigma=0.3, res=4, seed=0, prior="gaussian", sigma_pixel=None):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=res, scale=2.0, seed=seed)
    model = build_model(G, corruption or Identity(), prior=prior, sigma_pixel=sigma_pixel or sigma)
    g = torch.Generator().manual_seed(seed + 1)
    w_true = model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g)
    with torch.no_grad():
        y = model.predict(w_true) + sigma * torch.randn(1, *model.obs_shape, generator=g)
    return model, y


def _linear_map(model):
    """(J, base): predict(w) = J vec(w) + base for the linear generator and corruption, float64."""
    L, d = model.generator.num_ws, model.generator.w_dim
    D = L * d
    with torch.no_grad():
        base = model.predict(torch.zeros(1, L, d)).double().reshape(-1)
        J = (model.predict(torch.eye(D).reshape(D, L, d)).double().reshape(D, -1) - base).T
    return J, base


def _log_marginal(model, y, sigma, mu=None):
    """log N(y | J mu + base, J Sigma0 J^T + sigma^2 I) for the Gaussian prior (or a given mean)."""
    J, base = _linear_map(model)
    d = model.prior.distribution().base_dist
    m = d.loc.double().reshape(-1) if mu is None else mu
    s2 = d.scale.double().reshape(-1) ** 2 if mu is None else model.prior.sigma.double().expand(m.shape) ** 2
    cov = J @ torch.diag(s2) @ J.T + sigma ** 2 * torch.eye(J.shape[0], dtype=torch.float64)
    return float(torch.distributions.MultivariateNormal(J @ m + base, cov).log_prob(y.double().reshape(-1)))


# --- (a) evidence and moments against the closed form ------------------------------------------------

@pytest.mark.parametrize("corruption,kernel,waste_free", [(None, "mala", None),
                                                          (SuperResolution(2, "box"), "mala", None),
                                                          (None, "hmc", None), (None, "mala", 10)])
def test_evidence_and_moments_match_the_linear_gaussian(corruption, kernel, waste_free):
    model, y = _problem(corruption)
    res = run_smc(model, y, num_particles=400, num_chains=4, num_samples=400, kernel=kernel, waste_free=waste_free,
                  steps=5, seed=3, progress=False)
    exact = _log_marginal(model, y, 0.3)
    se = res.extra["log_evidence_se"]
    assert 0 < se < 0.2  # the runs agree, so "within 3 SE" is a sharp check
    assert abs(res.extra["log_evidence"] - exact) < 3 * se + 0.02
    mean, cov = linear_gaussian_posterior(model, y[0])
    w = res.draws["w"].double().reshape(res.draws["w"].shape[0], -1)
    sd = cov.diagonal().sqrt()
    assert ((w.mean(0) - mean).abs() / sd).max() < 0.15
    assert (torch.cov(w.T) - cov).norm() / cov.norm() < 0.15
    assert res.extra["stages"][0]["beta"][-1] == 1.0


def test_evidence_with_a_learned_noise_level_matches_quadrature():
    """sigma ~ logN(log 0.3, 0.5): p(y) = int p(sigma) N(y | A mu + b, A S0 A^T + sigma^2 I) dsigma on a grid."""
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=0)
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel=noise_latent(guess=0.3, spread=0.5))
    _, y = _problem()
    u = torch.linspace(math.log(0.3) - 8 * 0.5, math.log(0.3) + 8 * 0.5, 4001, dtype=torch.float64)
    log_prior_u = torch.distributions.Normal(math.log(0.3), 0.5).log_prob(u)  # density of log sigma
    logp = torch.tensor([_log_marginal(model, y, float(s)) for s in u.exp()]) + log_prior_u
    exact = float(torch.logsumexp(logp, 0) + math.log(float(u[1] - u[0])))
    res = run_smc(model, y, num_particles=400, num_chains=4, num_samples=100, steps=5, seed=1, progress=False)
    se = res.extra["log_evidence_se"]
    assert 0 < se < 0.2
    assert abs(res.extra["log_evidence"] - exact) < 3 * se + 0.02
    assert res.draws["sigma_pixel"].shape == (400,) and bool((res.draws["sigma_pixel"] > 0).all())


# --- (b) two modes with known weights ---------------------------------------------------------------

def _two_mode_problem(s=5.0, sigma0=0.5, weights=(0.1, 0.9)):
    """D = 6 latents, 4 pixels: the modes are +-s sigma0 v apart, v mostly in A's null space."""
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=2, scale=2.0, seed=0)
    A = G.A.double()
    _, _, Vh = torch.linalg.svd(A)  # rows 4, 5 span the null space of A (4 x 6)
    v = 0.9 * Vh[5] + (1 - 0.81) ** 0.5 * Vh[0]
    locs = torch.stack([s * sigma0 * v, -s * sigma0 * v]).float().reshape(2, 2, 3)
    prior = GaussianMixturePrior(locs, sigma0, weights)
    model = BRGMModel(G, prior, Identity(), [PixelGaussian(0.2)])
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        y = model.predict(0.2 * torch.randn(1, 2, 3, generator=g)) + 0.2 * torch.randn(1, *model.obs_shape, generator=g)
    J, base = _linear_map(model)
    cov = sigma0 ** 2 * J @ J.T + 0.04 * torch.eye(4, dtype=torch.float64)
    logz = torch.tensor([math.log(weights[k]) + float(torch.distributions.MultivariateNormal(
        J @ locs[k].double().reshape(-1) + base, cov).log_prob(y.double().reshape(-1))) for k in range(2)])
    return model, y, v.float(), torch.softmax(logz, 0), float(torch.logsumexp(logz, 0))


def test_two_modes_weights_match_the_closed_form_and_nuts_stays_in_one():
    model, y, v, post_w, log_z = _two_mode_problem()
    assert 0.5 < float(post_w[0]) < 0.8  # the data move the weight of mode 0 from the prior's 0.1
    res = run_smc(model, y, num_particles=2000, num_chains=4, num_samples=1000, steps=5, seed=0, progress=False)
    proj = res.draws["w"].reshape(4, 1000, 6) @ v
    frac = (proj > 0).double().mean(1)  # mode 0 sits at +s sigma0 v
    se = float(frac.std() / 2.0)
    assert abs(float(frac.mean()) - float(post_w[0])) < max(3 * se, 0.02), (frac, post_w)
    assert abs(res.extra["log_evidence"] - log_z) < 3 * res.extra["log_evidence_se"] + 0.02
    # NUTS started in the lighter mode never visits the other
    start = {"w": model.prior.locs[1][None].clone()}
    nuts = METHODS.get("nuts")(model, y, steps=100, num_samples=200, num_chains=1, init=start, mass="diag",
                               seed=0, progress=False)
    assert bool(((nuts.draws["w"].reshape(-1, 6) @ v) < 0).all())


# --- (c) simulation-based calibration ---------------------------------------------------------------

def test_sbc_ranks_are_uniform():
    """Truth ~ prior, y ~ likelihood, ranks of the truth among 99 SMC draws, 6 coordinates x 100 replicates."""
    model, _ = _problem()
    gen = torch.Generator().manual_seed(11)
    ranks = []
    for rep in range(100):
        w = model.prior.draw_init(1, gen)
        with torch.no_grad():
            y = model.predict(w) + 0.3 * torch.randn(1, *model.obs_shape, generator=gen)
        res = run_smc(model, y, num_particles=200, num_chains=1, num_samples=99, steps=5, seed=rep, progress=False)
        ranks.append(sbc_ranks(res.draws["w"].reshape(99, -1), w.reshape(-1)).numpy())
    test = sbc_uniformity(np.stack(ranks), 99, bins=10)
    assert test["p_value"] > 0.01, test


# --- (d) the evidence picks the noise model that made the data --------------------------------------

@pytest.mark.parametrize("truth", ["gaussian", "studentt"])
def test_evidence_picks_the_true_noise_model(truth):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8, scale=2.0, seed=0)
    models = {k: build_model(G, Identity(), prior="gaussian", sigma_pixel=0.2, noise=k,
                             noise_options={"df": 2.0} if k == "studentt" else None) for k in ("gaussian", "studentt")}
    right = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(100 + seed)
        w = models[truth].prior.draw_init(1, g)
        with torch.no_grad():
            x = models[truth].predict(w)
            noise = torch.randn(x.shape, generator=g) if truth == "gaussian" else \
                torch.distributions.StudentT(2.0).sample(x.shape)
        y = x + 0.2 * noise
        ev = {k: run_smc(m, y, num_particles=200, num_chains=2, num_samples=10, steps=3, seed=seed,
                         progress=False).extra["log_evidence"] for k, m in models.items()}
        right += max(ev, key=ev.get) == truth
    assert right >= 9


@pytest.mark.parametrize("truth", ["blur", "none"])
def test_evidence_says_whether_a_blur_is_present(truth):
    from brgm_pyro.models.corruptions import Blur

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8, scale=2.0, seed=0)
    models = {"blur": build_model(G, Blur("gauss", sigma=1.0), prior="gaussian", sigma_pixel=0.2),
              "none": build_model(G, Identity(), prior="gaussian", sigma_pixel=0.2)}
    right = 0
    for seed in range(10):
        g = torch.Generator().manual_seed(200 + seed)
        w = models[truth].prior.draw_init(1, g)
        with torch.no_grad():
            x = models[truth].predict(w)
        y = x + 0.2 * torch.randn(x.shape, generator=g)
        ev = {k: run_smc(m, y, num_particles=100, num_chains=2, num_samples=10, steps=3, seed=seed,
                         progress=False).extra["log_evidence"] for k, m in models.items()}
        right += max(ev, key=ev.get) == truth
    assert right >= 9


# --- building blocks and bad input ------------------------------------------------------------------

def test_systematic_resampling_keeps_counts_within_one_of_n_w():
    torch.manual_seed(0)
    log_w = torch.log_softmax(torch.randn(50, dtype=torch.float64) * 2, 0)
    idx = systematic_resample(log_w, 1000)
    counts = torch.bincount(idx, minlength=50).double()
    expected = 1000 * log_w.exp()
    assert ((counts - expected).abs() <= 1.0 + 1e-9).all()


def test_next_temperature_hits_the_cess_target():
    torch.manual_seed(1)
    log_w = torch.log_softmax(torch.randn(300, dtype=torch.float64), 0)
    rest = -50 * torch.rand(300, dtype=torch.float64)
    d = next_delta(log_w, rest, 0.2, 0.7)
    assert 0 < d < 0.8
    assert abs(math.exp(_log_cess(log_w, rest, d)) - 0.7) < 1e-6
    assert next_delta(log_w, torch.zeros(300, dtype=torch.float64), 0.2, 0.7) == pytest.approx(0.8)


def test_runs_are_reproducible_and_records_complete():
    model, y = _problem()
    a = run_smc(model, y, num_particles=32, num_chains=2, num_samples=8, steps=2, seed=4, progress=False)
    b = run_smc(model, y, num_particles=32, num_chains=2, num_samples=8, steps=2, seed=4, progress=False)
    assert torch.equal(a.draws["w"], b.draws["w"]) and a.extra["log_evidence"] == b.extra["log_evidence"]
    assert a.draws["w"].shape == (16, 1, 2, 3) and a.samples.shape[0] == 16
    assert a.extra["sample_stats"]["log_weight"].shape == (2, 8)
    st = a.extra["stages"][0]
    assert all(len(st[k]) == len(st["beta"]) for k in st) and st["beta"] == sorted(st["beta"])


@pytest.mark.parametrize("kw,match", [({"num_particles": 1}, "particles"), ({"kernel": "nuts"}, "kernel"),
                                      ({"cess": 1.5}, "cess"), ({"waste_free": 7}, "waste_free"),
                                      ({"steps": 0}, "move"), ({"workers": 2}, "workers"),
                                      ({"resampling": "stratified"}, "resampling")])
def test_bad_options_are_one_line_errors(kw, match):
    model, y = _problem()
    with pytest.raises(BRGMError, match=match):
        run_smc(model, y, progress=False, **kw)


def test_model_comparison_rows():
    from brgm_pyro.inference.smc.compare import compare_evidence, format_comparison

    rows = compare_evidence({"a": (-10.0, 0.1), "b": (-10.0 - math.log(3.0), 0.2), "c": (-30.0, None)})
    assert [r["model"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["prob"] == pytest.approx(0.75, abs=1e-6) and rows[1]["prob"] == pytest.approx(0.25, abs=1e-6)
    assert rows[1]["delta"] == pytest.approx(-math.log(3.0)) and rows[1]["delta_se"] == pytest.approx(math.hypot(0.1, 0.2))
    lo, hi = rows[1]["prob_range"]
    assert lo < 0.25 < hi and rows[2]["prob_range"] is None and rows[2]["delta_se"] is None
    assert "P(m|y)" in format_comparison(rows)
    with pytest.raises(BRGMError, match="finite"):
        compare_evidence({"a": (float("nan"), None), "b": (0.0, None)})


def test_cli_reconstruct_smc_writes_the_evidence(tmp_path):
    import json

    from PIL import Image
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    out = tmp_path / "res"
    res = CliRunner().invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "x.png"),
                                   "--simulate", "--method", "smc", "--particles", "8", "--chains", "2", "--steps",
                                   "1", "--num-samples", "4", "--no-percept", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "log evidence" in res.output
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["particles"] == 8 and len(run["inference"]["log_evidence_runs"]) == 2
    assert math.isfinite(run["inference"]["log_evidence"]) and run["inference"]["log_evidence_se"] is not None
    assert run["inference"]["smc_stages"][0]["beta"][-1] == 1.0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["log_evidence"] == run["inference"]["log_evidence"]
    for rec in (run["inference"], metrics):  # the single-run (genealogy) SE beside the between-run one
        assert rec["log_evidence_se_genealogy"] > 0 and len(rec["log_evidence_se_genealogy_runs"]) == 2
    bad = CliRunner().invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "x.png"),
                                   "--simulate", "--method", "nuts", "--particles", "8", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "--particles" in (bad.output + str(bad.stderr))


def test_chunked_particles_give_the_same_run():
    """Particles through G in chunks (a memory budget of 1 B: one particle per trace, or chunk=5)
    give the same evidence and draws as one batch: the particles are independent."""
    model, y = _problem()
    kw = dict(num_particles=16, num_chains=1, num_samples=8, steps=2, seed=3, progress=False)
    whole = run_smc(model, y, chunk=16, **kw)
    five = run_smc(model, y, chunk=5, **kw)
    model.max_memory = 1  # the budget decides: one particle at a time
    budget = run_smc(model, y, **kw)
    for other in (five, budget):
        assert other.extra["log_evidence"] == pytest.approx(whole.extra["log_evidence"], abs=1e-4)
        assert torch.allclose(other.draws["w"], whole.draws["w"], atol=1e-4)


# --- the single-run standard error of log Z (genealogy, Lee & Whiteley 2018) -----------------------

def test_genealogy_variance_is_the_importance_sampling_variance_without_resampling():
    """No resampling yet (R = 0, every particle its own Eve): V = N/(N-1) sum W^2 - 1/(N-1), the
    unbiased estimate of Var(mean of weights) / mean^2; one Eve for all: V = 1 (degenerate)."""
    from brgm_pyro.inference.smc.tempering import genealogy_variance

    torch.manual_seed(0)
    N = 50
    g = torch.rand(N, dtype=torch.float64) * 3
    log_w = torch.log(g / g.sum())
    V, eves = genealogy_variance(log_w, torch.arange(N), 0)
    expected = float((g * g).mean() / g.mean() ** 2 - 1) / (N - 1)  # sample relative variance / N, unbiased
    assert V == pytest.approx(expected, rel=1e-9) and eves == N
    assert genealogy_variance(log_w, torch.zeros(N, dtype=torch.long), 7) == (pytest.approx(1.0), 1)


@pytest.mark.parametrize("resampling", ["multinomial", "systematic"])
def test_single_run_se_agrees_with_the_spread_of_independent_runs(resampling):
    """40 independent runs (N = 400, 5 MALA moves) on the linear Gaussian model: the mean of the
    runs' single-run SEs is within 35 % of the sd of their log Z (the sd of 40 runs is itself
    uncertain by ~11 %); the pooled genealogy SE sits beside the between-run one."""
    model, y = _problem()
    res = run_smc(model, y, num_particles=400, num_chains=40, num_samples=4, steps=5, seed=0, progress=False,
                  resampling=resampling)
    log_z = np.asarray(res.extra["log_evidence_runs"])
    se = np.asarray(res.extra["log_evidence_se_genealogy_runs"], dtype=float)
    spread = log_z.std(ddof=1)
    assert abs(se.mean() / spread - 1.0) < 0.35, (se.mean(), spread)
    assert abs(log_z.mean() - _log_marginal(model, y, 0.3)) < 3 * spread / math.sqrt(40) + 0.02
    pooled = res.extra["log_evidence_se_genealogy"]
    assert 0.3 < pooled / res.extra["log_evidence_se"] < 3.0  # both estimate the SE of the pooled log Z
    assert all(len(s["log_evidence_var"]) == len(s["beta"]) for s in res.extra["stages"])


def test_waste_free_runs_have_no_single_run_se():
    model, y = _problem()
    res = run_smc(model, y, num_particles=40, num_chains=2, num_samples=4, waste_free=4, seed=0, progress=False)
    assert res.extra["log_evidence_se_genealogy"] is None and res.extra["log_evidence_se"] is not None
