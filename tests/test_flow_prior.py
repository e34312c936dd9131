"""The normalizing-flow prior on W (seed 004): a proper density, fitted to the mapped latents,
usable by every inference method, trained resumably, stored in files that are checked on load.

The tiny generator maps z (2-D) onto a banana-shaped W (so a Gaussian prior is wrong) and draws
two pixels tanh(A w + b); with one latent vector (L = 1, d = 2) the posterior is a 2-D density
whose moments are computed by quadrature on a grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import METHODS, run_map, run_vi
from brgm_pyro.models.brgm import BRGMModel
from brgm_pyro.models.corruptions import Identity
from brgm_pyro.models.generators import Generator, LinearGenerator
from brgm_pyro.models.generators.loading import flow_prior_path, load_generator, save_generator
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import make_prior
from brgm_pyro.models.priors.flow import FlowConfig, load_flow, save_flow
from brgm_pyro.models.priors.rls import CrossFactor, GaussianizationFactor, make_flow_prior, make_rls_prior
from brgm_pyro.training.train_prior import mapped_latents, train_prior
from tests.test_mcmc_helpers import zscores

SIGMA_Y = 0.3


class BananaGenerator(Generator):
    """w = (0.7 z1 + 0.3, 0.35 z2 + 0.3 (z1^2 - 1) - 0.2); image: two pixels tanh(A w + b)."""

    num_ws, w_dim, z_dim, img_channels, img_resolution = 1, 2, 2, 2, 1

    def __init__(self, bend: float = 0.3):
        super().__init__()
        self.bend = bend
        self.A = torch.tensor([[1.2, -0.4], [0.3, 0.9]])
        self.b = torch.tensor([0.1, -0.1])

    def synthesis(self, ws):
        return torch.tanh(ws.reshape(ws.shape[0], 2) @ self.A.T + self.b).reshape(-1, 2, 1, 1)

    def mapping(self, z):
        return torch.stack([0.7 * z[:, 0] + 0.3, 0.35 * z[:, 1] + self.bend * (z[:, 0] ** 2 - 1) - 0.2], -1)

    def config(self):
        return {"bend": self.bend}


CFG = FlowConfig(w_dim=2, transforms=2, hidden=(16, 16), noise=0.0)
TRAIN = dict(num_train=4000, num_val=1000, steps=300, batch_size=256, lr=5e-3, eval_every=100, patience=3,
             log=lambda _: None)


@pytest.fixture(scope="module")
def banana(tmp_path_factory):
    G = BananaGenerator()
    path = tmp_path_factory.mktemp("flow") / "banana.flow_prior.safetensors"
    summary = train_prior(G, path, cfg=CFG, **TRAIN)
    return G, path, summary


def _grid(wflow, n: int = 301, half: float = 7.0):
    """A square grid in W covering mu +- half sigma: points (n*n, 2) and the cell area."""
    mu, s = wflow.mu.double(), wflow.sigma.double()
    ax = [torch.linspace(float(mu[k] - half * s[k]), float(mu[k] + half * s[k]), n, dtype=torch.float64)
          for k in range(2)]
    X, Y = torch.meshgrid(*ax, indexing="ij")
    area = float((ax[0][1] - ax[0][0]) * (ax[1][1] - ax[1][0]))
    return torch.stack([X.reshape(-1), Y.reshape(-1)], 1), area


def test_flow_density_integrates_to_one(banana):
    """Quadrature in 2-D of exp(log p_F(w)) over W (with the standardisation's Jacobian) is 1."""
    G, path, _ = banana
    wflow = load_flow(path, G)
    pts, area = _grid(wflow)
    with torch.no_grad():
        total = float(torch.exp(wflow.log_prob(pts.float()).double()).sum() * area)
    assert abs(total - 1.0) < 0.01, total


def test_flow_beats_the_gaussian_and_matches_the_moments(banana):
    G, path, summary = banana
    assert summary["val_nats_per_dim_clean"] > summary["gaussian_val_nats_per_dim_clean"] + 0.1, summary
    prior = make_flow_prior(G, path=str(path), colinearity=False)
    draws = prior.draw_init(20000, torch.Generator().manual_seed(4)).reshape(-1, 2).double()
    ref = mapped_latents(G, 20000, seed=99).double()
    s = ref.std(0)
    assert torch.all((draws.mean(0) - ref.mean(0)).abs() < 0.05 * s), (draws.mean(0), ref.mean(0))
    assert torch.allclose(torch.cov(draws.T), torch.cov(ref.T), atol=0.08 * float(s.max() ** 2))
    bend = lambda x: float(torch.corrcoef(torch.stack([(x[:, 0] - x[:, 0].mean()) ** 2, x[:, 1]]))[0, 1])  # noqa
    assert bend(ref) > 0.5 and abs(bend(draws) - bend(ref)) < 0.05, (bend(draws), bend(ref))  # a Gaussian: 0


@pytest.fixture(scope="module")
def posterior(banana):
    """The model (flow prior, two tanh pixels) and its posterior moments by quadrature."""
    G, path, _ = banana
    model = BRGMModel(G, make_flow_prior(G, path=str(path), colinearity=False), Identity(), [PixelGaussian(SIGMA_Y)])
    with torch.no_grad():
        y = G(torch.tensor([[[0.9, 0.4]]])) + SIGMA_Y * torch.randn(1, 2, 1, 1, generator=torch.Generator().manual_seed(2))
    pts, _ = _grid(model.prior.wflow, n=241, half=8.0)
    with torch.no_grad():
        lp = torch.cat([model.log_joint(pts[i:i + 8000].float().reshape(-1, 1, 1, 2), y).double()
                        for i in range(0, pts.shape[0], 8000)])
    p = torch.exp(lp - lp.max())
    p /= p.sum()
    funcs = torch.cat([pts, pts ** 2], 1)
    return model, y, (p @ funcs).numpy(), pts[lp.argmax()]


def _moment_z(draws: torch.Tensor, truth: np.ndarray, chains: int) -> np.ndarray:
    w = draws.reshape(chains, -1, 2).double().numpy()
    return zscores(np.concatenate([w, w ** 2], -1), truth)


def test_map_on_the_flow_prior_is_the_posterior_mode(posterior):
    model, y, _, grid_mode = posterior
    res = run_map(model, y, steps=600, lr=0.05, progress=False)
    w = res.w.detach().clone().requires_grad_(True)
    model.log_joint(w, y).backward()
    assert float(w.grad.norm()) < 1e-2, w.grad
    assert torch.allclose(res.w.reshape(2).double(), grid_mode, atol=0.06), (res.w, grid_mode)


@pytest.mark.parametrize("method,budget", [("nuts", dict(steps=100, num_samples=300)),
                                           ("mala", dict(steps=200, num_samples=500))])
def test_mcmc_on_the_flow_prior_matches_quadrature(posterior, method, budget):
    model, y, truth, _ = posterior
    res = METHODS.get(method)(model, y, num_chains=1, seed=3, progress=False, **budget)
    z = _moment_z(res.samples_w, truth, 1)
    assert np.all(np.abs(z) < 4.5), z


def test_vi_on_the_flow_prior(posterior):
    """A full-covariance Gaussian guide (ELBO over the flow's density) finds the posterior mean and spread."""
    model, y, truth, _ = posterior
    res = run_vi(model, y, guide="mvn", steps=400, lr=0.05, num_particles=4, hyperprior=None, num_samples=4000,
                 seed=1, progress=False)
    w = res.samples_w.reshape(-1, 2).double()
    sd = np.sqrt(truth[2:] - truth[:2] ** 2)
    assert np.all(np.abs(w.mean(0).numpy() - truth[:2]) < 0.2 * sd), (w.mean(0), truth[:2])
    assert np.all(np.abs(w.std(0).numpy() / sd - 1) < 0.3), (w.std(0), sd)


def test_rls_terms_are_their_equation(banana):
    """rls: lambda_w/L sum log p_F + lambda_g/L Gaussianization + lambda_c cross, over b; factors by name."""
    G, path, _ = banana
    L = 3
    G3 = BananaGenerator()
    G3.num_ws = L
    prior = make_rls_prior(G3, path=str(path), fidelity_scale=0.5)
    w = torch.randn(4, L, 2)
    wflow = prior.base.wflow
    r = wflow.gaussianise(w).norm(dim=-1)
    pw = wflow.log_prob(w).mean(-1)
    pg = -((r - math.sqrt(2)) ** 2).mean(-1)
    iu = torch.triu_indices(L, L, 1)
    pc = -(w[:, iu[0]] - w[:, iu[1]]).pow(2).sum(-1).sum(-1)
    expected = (1e-4 * pw + 2e-4 * pg + 1e-2 * pc) / 0.5
    assert torch.allclose(prior.log_prob(w), expected, rtol=1e-5, atol=1e-7)
    assert {type(f) for f in prior.factors} == {GaussianizationFactor, CrossFactor}
    assert [type(f) for f in make_rls_prior(G3, path=str(path), lambda_g=0.0).factors] == [CrossFactor]


def test_train_prior_resume_is_exact(tmp_path):
    G = BananaGenerator()
    opts = dict(TRAIN, steps=60, eval_every=20, ckpt_every=10)
    train_prior(G, tmp_path / "a.safetensors", cfg=CFG, **opts)
    paused = train_prior(G, tmp_path / "b.safetensors", cfg=CFG, stop_after=30, **opts)
    assert paused["stopped"].startswith("paused") and not (tmp_path / "b.safetensors").exists()
    train_prior(G, tmp_path / "b.safetensors", cfg=CFG, resume=True, **opts)
    a, b = load_flow(tmp_path / "a.safetensors"), load_flow(tmp_path / "b.safetensors")
    for (k, u), (_, v) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(u, v), k
    with pytest.raises(BRGMError, match="other settings"):
        train_prior(G, tmp_path / "b.safetensors", cfg=CFG, resume=True, **dict(opts, lr=1e-2))


def _linear_file(tmp_path, seed=0):
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=seed)
    return save_generator(G, tmp_path / f"lin{seed}.safetensors")


def test_cli_train_prior_writes_beside_the_weights(tmp_path):
    weights = _linear_file(tmp_path)
    res = CliRunner().invoke(app, ["train-prior", "--generator", str(weights), "--steps", "40", "--num-train", "500",
                                   "--num-val", "200", "--hidden", "16,16", "--transforms", "2", "--eval-every", "20",
                                   "--threads", "1"])
    assert res.exit_code == 0, res.output
    G = load_generator(weights)
    beside = flow_prior_path(G)
    assert beside.is_file() and beside.name == "lin0.safetensors.flow_prior.safetensors"
    prior = make_prior("flow", G, None, kappa=1.0)
    assert prior.base.wflow.summary["path"] == str(beside)  # the file, not a quick in-memory fit
    bad = CliRunner().invoke(app, ["train-prior", "--generator", str(weights), "--hidden", "16,x"])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0 and "--hidden" in bad.stderr


def _one_line_error(fn, *fragments):
    with pytest.raises(BRGMError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, (f, msg)


def test_corrupted_or_mismatched_prior_files_are_one_line_errors(banana, tmp_path):
    G, path, _ = banana
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    _one_line_error(lambda: load_flow(tmp_path / "cut.safetensors"), "not a readable flow prior file")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    _one_line_error(lambda: load_flow(tmp_path / "junk.safetensors"), "not a readable flow prior file")
    weights = _linear_file(tmp_path)
    _one_line_error(lambda: load_flow(weights), "not a flow prior file", "brgm-generator")
    _one_line_error(lambda: load_flow(tmp_path / "none.safetensors"), "does not exist")
    _one_line_error(lambda: load_flow(path, LinearGenerator(num_ws=1, w_dim=3)), "w_dim=2", "w_dim=3")
    _one_line_error(lambda: load_flow(path, BananaGenerator(bend=0.5)), "another generator")
    wflow = load_flow(path)
    wflow.sigma[0] = float("nan")
    save_flow(wflow, tmp_path / "nan.safetensors")
    _one_line_error(lambda: load_flow(tmp_path / "nan.safetensors"), "non-finite")
    # the same, reached through the registered prior and a file beside the weights
    other = load_generator(_linear_file(tmp_path, seed=1))
    flow_prior_path(other).write_bytes(data)
    _one_line_error(lambda: make_prior("flow", other, None, kappa=1.0), "w_dim=2")


def test_large_generators_without_a_prior_file_are_told_how_to_get_one():
    G = LinearGenerator(num_ws=2, w_dim=32, img_channels=1, img_resolution=4)
    _one_line_error(lambda: make_prior("flow", G, None, kappa=1.0), "brgm train-prior")


def test_cli_train_prior_never_writes_into_the_installed_package(tmp_path, monkeypatch):
    """Issue 26 (3): without --out, train-prior on builtin:faces64 replaced the flow prior inside the
    package (and left a checkpoint there). Now the default is ./flow_prior_out/ and a path inside the
    package is refused in one line."""
    import brgm_pyro
    import brgm_pyro.training.train_prior as tp

    package = Path(brgm_pyro.__file__).resolve().parent
    seen = []
    monkeypatch.setattr(tp, "train_prior", lambda G, out, **kw: seen.append(Path(out)) or {})
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["train-prior", "--generator", "builtin:faces64", "--threads", "1"])
    assert res.exit_code == 0, (res.output, res.stderr)
    assert len(seen) == 1 and package not in seen[0].resolve().parents
    assert seen[0].resolve().parent == (tmp_path / "flow_prior_out").resolve()
    assert "--prior-option path=" in res.output  # how to use it
    inside = package / "assets" / "faces64" / "mine.flow_prior.safetensors"
    bad = CliRunner().invoke(app, ["train-prior", "--generator", "builtin:faces64", "--out", str(inside)])
    assert bad.exit_code == 2 and bad.stderr.strip().count("\n") == 0 and "inside the installed" in bad.stderr
    assert len(seen) == 1 and not inside.exists()
