"""PSIS reweighting of guide draws (issue 28): on the linear Gaussian generator the exact posterior is
known, so the reweighted moments of a wrong guide can be checked against it, and k-hat against how
wrong the guide is."""

import math

import numpy as np

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions.transforms import ReshapeTransform

from brgm_pyro.inference import run_vi
from brgm_pyro.inference.psis import KHAT_WARN, guide_draws, log_joint_per_image, psis, reweight, weighted_quantile
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import LinearGenerator
from tests.helpers import linear_gaussian_posterior

torch.set_num_threads(1)
L, D_W = 2, 3
D = L * D_W


def _problem(B=2, seed=0):
    G = LinearGenerator(num_ws=L, w_dim=D_W, img_channels=1, img_resolution=4, scale=2.0, seed=seed)
    model = build_model(G, SuperResolution(2, "box"), prior="gaussian", sigma_pixel=0.3)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        y = model.predict(model.init_latents(B) + 0.5 * torch.randn(B, L, D_W, generator=g))
    exact = [linear_gaussian_posterior(model, y[b:b + 1]) for b in range(B)]
    return model, y, exact


def _gaussian_guide(exact, scale: float, shift: float):
    """q(w_b) = N(mean_b + shift * sd_b, scale^2 cov_b) per image, independent over the images plate."""
    mean = torch.stack([m + shift * c.diagonal().sqrt() for m, c in exact]).float()
    tril = torch.stack([torch.linalg.cholesky(c) * scale for _, c in exact]).float()

    def guide(y):
        with pyro.plate("images", y.shape[0], dim=-1):
            base = dist.MultivariateNormal(mean, scale_tril=tril)
            pyro.sample("w", dist.TransformedDistribution(base, [ReshapeTransform((D,), (L, D_W))]))
    return guide


def _moments(draws_w, weights):
    """Weighted mean (B, D) and 5 / 95 % quantiles (2, B, D) of the draws (S, B, L, d)."""
    x = draws_w.double().reshape(draws_w.shape[0], draws_w.shape[1], D)
    w = weights[:, :, None]
    q = weighted_quantile(x, w, torch.tensor([0.05, 0.95]))
    return (w * x).sum(0), q


def _exact_moments(exact):
    mean = torch.stack([m for m, _ in exact])
    sd = torch.stack([c.diagonal().sqrt() for _, c in exact])
    return mean, torch.stack([mean - 1.6449 * sd, mean + 1.6449 * sd]), sd


def test_log_ratios_of_the_exact_guide_are_constant():
    """log p(w, y) - log q(w) = log p(y) for every draw when q is the exact posterior, per image."""
    model, y, exact = _problem()
    draws, log_q, joint = guide_draws(model, _gaussian_guide(exact, 1.0, 0.0), y, 50, chunk=16)
    log_p, joint_p = log_joint_per_image(model, y, draws, chunk=16)
    assert not joint and not joint_p and log_p.shape == (50, 2)
    r = log_p - log_q
    assert (r - r.mean(0)).abs().max() < 1e-3
    assert torch.allclose(log_p.sum(1), model.log_joint(draws["w"], y).double(), atol=1e-3)
    res = psis(r)
    assert res.khat.max() < 0.5 and torch.allclose(res.ess, torch.full((2,), 50.0, dtype=torch.float64), rtol=1e-3)


@pytest.mark.parametrize("scale,shift", [(0.85, 0.5), (1.5, 1.0)])
def test_reweighted_moments_of_a_wrong_guide_approach_the_exact_ones(scale, shift):
    model, y, exact = _problem()
    draws, res = reweight(model, _gaussian_guide(exact, scale, shift), y, 16000, chunk=4000)
    mean_x, q_x, sd = _exact_moments(exact)
    S = draws["w"].shape[0]
    raw_mean, raw_q = _moments(draws["w"], torch.full((S, 2), 1.0 / S, dtype=torch.float64))
    w_mean, w_q = _moments(draws["w"], res.weights)
    raw_err, w_err = ((raw_mean - mean_x) / sd).abs().max(), ((w_mean - mean_x) / sd).abs().max()
    # the shift is removed (errors in posterior sds, max over 12 coordinates; ESS ~800: ~0.035 sd noise each)
    assert raw_err > 0.45 and w_err < 0.25 and w_err < raw_err / 3
    raw_qerr, w_qerr = ((raw_q - q_x) / sd).abs().max(), ((w_q - q_x) / sd).abs().max()
    # the 5 / 95 % quantiles: a weighted ESS of ~800 leaves ~0.08 sd of noise per quantile
    assert raw_qerr > 0.75 and w_qerr < 0.45 and w_qerr < raw_qerr / 2.5
    if scale > 1:  # a wider guide has bounded ratios: k-hat well below the threshold
        assert res.khat.max() < 0.5 and res.warning() is None
    else:  # a slightly too narrow one sits near it (its ratios' tail is heavy): flagged or borderline
        assert 0.4 < res.khat.max() < 1.0


@pytest.mark.parametrize("scale,shift", [(0.3, 2.0), (0.5, 0.0)])
def test_khat_is_large_for_a_badly_wrong_guide(scale, shift):
    """Shifted and far too narrow, or only too narrow (half the posterior's sd): k-hat > 0.7."""
    model, y, exact = _problem()
    _, res = reweight(model, _gaussian_guide(exact, scale, shift), y, 1000, chunk=500)
    assert res.khat.min() > KHAT_WARN
    assert res.warning() is not None and "k-hat" in res.warning()


def test_weighted_quantile_is_torch_quantile_for_equal_weights_and_follows_weights():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(33, 4, 5, generator=g, dtype=torch.float64)
    q = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    eq = weighted_quantile(x, torch.full_like(x, 1 / 33), q)
    assert torch.allclose(eq, torch.quantile(x, q, dim=0), atol=1e-12)
    # draws from U(0, 1) weighted by the density ratio 2x of Beta(2, 1) (CDF x^2): its quantiles sqrt(q)
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    got = weighted_quantile(u, 2 * u / (2 * u).sum(), q)
    assert torch.allclose(got, q.sqrt(), atol=0.01)
    assert not torch.allclose(torch.quantile(u, q), q.sqrt(), atol=0.05)


def test_run_vi_reports_khat_and_reweights_on_request():
    model, y, exact = _problem()
    r0 = run_vi(model, y, steps=200, num_samples=64, progress=False)
    info = r0.extra["psis"]
    assert len(info["khat"]) == 2 and info["draws"] == 64 and r0.weights is None
    r1 = run_vi(model, y, steps=200, num_samples=64, progress=False, reweight="psis")
    assert r1.weights is not None and r1.weights.shape == (64, 2)
    assert torch.allclose(r1.weights.sum(0), torch.ones(2, dtype=r1.weights.dtype))
    # the reported mean is the weighted mean of the draws
    wm = (r1.weights.to(r1.samples.dtype)[:, :, None, None, None] * r1.samples).sum(0)
    assert torch.allclose(r1.image, wm, atol=1e-6) and torch.allclose(r1.mean_image(), wm, atol=1e-6)


def _cli(tmp_path, *args):
    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    y, x = np.mgrid[0:16, 0:16] / 16
    img = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(tmp_path / "clean.png")
    return CliRunner().invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", "--reliance-draws", "0",
                                    str(tmp_path / "clean.png"), "--simulate", "--method", "vi", "--steps", "3",
                                    *map(str, args)])


@pytest.mark.parametrize("reweight", [None, "psis"])
def test_cli_reports_khat_everywhere_and_reweights_on_request(tmp_path, reweight):
    """k-hat in metrics.json, run.json and posterior.nc for every VI run; a 3-step guide is far from the
    posterior, so the warning line fires; --reweight psis makes the coverage use the weights."""
    import json

    from brgm_pyro import azcompat
    from brgm_pyro.inference.arviz_io import read_inference_data

    out = tmp_path / "res"
    res = _cli(tmp_path, "--num-samples", "64", "--out", out, *(["--reweight", reweight] if reweight else []))
    assert res.exit_code == 0, (res.output, res.exception)
    m = json.loads((out / "metrics.json").read_text())
    run = json.loads((out / "run.json").read_text())
    assert m["psis"]["draws"] == 64 and len(m["psis"]["khat"]) == 1
    assert run["inference"]["psis"]["reweight"] == (reweight or "none")
    idata = read_inference_data(out / "posterior.nc")
    g = azcompat.group(idata, "psis")
    assert g["log_weight"].shape == (1, 64, 1) and abs(float(np.exp(g["log_weight"].values).sum()) - 1) < 1e-6
    assert float(g["khat"].values[0]) == pytest.approx(m["psis"]["khat"][0], abs=1e-4)
    assert m["psis"]["khat_max"] > KHAT_WARN and "PSIS k-hat" in res.output
    assert any("PSIS k-hat" in w for w in run["warnings"])
    assert int(azcompat.group(idata, "intervals").attrs["weighted"]) == int(reweight == "psis")


def test_reweight_is_refused_for_methods_without_a_guide(tmp_path):
    res = _cli(tmp_path, "--num-samples", "4", "--out", tmp_path / "r", "--reweight", "psis", "--method", "mala")
    assert res.exit_code != 0 and "--reweight psis reweights the draws of a variational guide" in res.output
    res = _cli(tmp_path, "--num-samples", "4", "--out", tmp_path / "r2", "--reweight", "is")
    assert res.exit_code != 0 and "--reweight 'is' is not one of: none, psis" in res.output


def test_too_few_draws_give_no_khat_and_no_warning():
    """ArviZ fits k-hat from 30+ draws; below that the summary says so instead of reporting inf."""
    g = torch.Generator().manual_seed(0)
    few = psis(torch.randn(16, 2, generator=g, dtype=torch.float64))
    assert few.summary()["khat"] == [None, None] and "30+" in few.summary()["note"] and few.warning() is None
    enough = psis(torch.randn(30, 2, generator=g, dtype=torch.float64))
    assert all(k is not None for k in enough.summary()["khat"]) and "note" not in enough.summary()


def test_weighted_std_and_interval_maps_follow_the_weights():
    """std.png and interval90.png of a reweighted run: draws of zero weight do not count."""
    from brgm_pyro.figures import interval_width_map, std_map

    s = np.zeros((4, 2, 2, 3))
    s[1], s[2], s[3] = 1.0, 0.2, 0.4  # draws 0 and 1 carry all the weight: values 0 and 1
    w = np.array([0.5, 0.5, 0.0, 0.0])
    assert np.allclose(std_map(s, w), 0.5)
    assert not np.allclose(std_map(s), 0.5)
    assert np.allclose(interval_width_map(s, 0.9, np.full(4, 0.25)), interval_width_map(s, 0.9))
    # the weighted 5 / 95 % quantiles move towards the heavy draws 0 and 1: wider than unweighted, inside [0, 1]
    ww, wu = interval_width_map(s, 0.9, w), interval_width_map(s, 0.9)
    assert np.all(ww > wu + 0.03) and np.all(ww <= 1.0)
