"""What the reliance map reports, value by value (issue 31: the mutants that survived
tests/test_reliance.py changed these numbers).

Each value is checked against a computation written out here (numpy over the same renders, hand
arithmetic on a small map), not against the module's own helpers: the clipped channel mean and the
per-image summary that run.json and metrics.json carry, the NetCDF group, the picture, the
weighted/unweighted pixel moments (chunked, cached, with the discrepancy's tau^2), the
importance weights and their effective sample size, and the one-line refusals.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
from brgm_pyro.models.priors import make_prior
from brgm_pyro.reliance import (RelianceMap, _moments, _read_moments, prior_image_moments, prior_reliance,
                                reliance_from_draws, reliance_image, sample_prior_latents)

# two images, two channels, 2x2 pixels; r > 1 and r = 1 exactly both occur
R = torch.tensor([[[[0.2, 0.6], [1.5, 3.0]], [[0.0, 1.0], [0.4, 0.2]]],
                  [[[1.0, 1.0], [0.5, 0.5]], [[2.0, 0.0], [0.25, 0.75]]]])


def _map(r: torch.Tensor = R) -> RelianceMap:
    return RelianceMap(r, 2 * r, torch.ones(r.shape[1:]), num_posterior=7, num_prior=11, prior_ess=5.5)


def test_channel_mean_data_reliance_and_summary_by_hand():
    rel = _map()
    clipped = [[[[0.2, 0.6], [1.0, 1.0]], [[0.0, 1.0], [0.4, 0.2]]],
               [[[1.0, 1.0], [0.5, 0.5]], [[1.0, 0.0], [0.25, 0.75]]]]
    c = np.array(clipped)
    np.testing.assert_allclose(rel.channel_mean().numpy(), (c[:, 0] + c[:, 1]) / 2, rtol=1e-6)
    np.testing.assert_allclose(rel.data_reliance.numpy(), 1 - c, rtol=1e-6)
    s = rel.summary()
    np.testing.assert_allclose(s["mean_prior_reliance"], [4.4 / 8, 5.0 / 8], rtol=1e-6)
    np.testing.assert_allclose(s["fraction_above_1"], [2 / 8, 1 / 8], rtol=1e-6)  # r = 1.0 is not above 1
    assert (s["num_posterior_draws"], s["num_prior_draws"], s["prior_ess"]) == (7, 11, 5.5)


def test_to_dataset_carries_the_values_dims_and_counts():
    ds = _map().to_dataset()
    np.testing.assert_array_equal(ds["prior_reliance"].values, R.double().numpy())
    np.testing.assert_array_equal(ds["posterior_var"].values, 2 * R.double().numpy())
    np.testing.assert_array_equal(ds["prior_var"].values, np.ones((2, 2, 2)))
    assert ds["prior_reliance"].dims == ("image", "channel", "row", "col")
    assert ds["prior_var"].dims == ("channel", "row", "col")
    assert list(ds["image"].values) == [0, 1] and "image" in ds.coords
    assert (ds.attrs["num_posterior_draws"], ds.attrs["num_prior_draws"], ds.attrs["prior_ess"]) == (7, 11, 5.5)


def test_reliance_image_colours_each_pixel_and_leaves_white_gaps():
    from matplotlib import colormaps

    img = reliance_image(_map())
    cm = colormaps["magma"]
    assert img.shape == (2, 2 * 2 + 1, 3)
    np.testing.assert_allclose(img[:, 2], 1.0)  # the gap
    np.testing.assert_allclose(img[0, 0], cm(0.1)[:3], atol=1e-6)  # image 0 pixel (0, 0): (0.2 + 0) / 2
    np.testing.assert_allclose(img[1, 1], cm(0.6)[:3], atol=1e-6)  # (1.0 clipped + 0.2) / 2
    np.testing.assert_allclose(img[0, 3], cm(1.0)[:3], atol=1e-6)  # image 1 pixel (0, 0): (1 + 2 clipped) / 2


def test_reliance_from_draws_is_sample_variance_over_prior_variance():
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(6, 2, 1, 2, 3, generator=g, dtype=torch.float64)
    prior_var = torch.tensor([[[0.5, 2.0, 0.0], [1.0, 4.0, 0.25]]], dtype=torch.float64)
    rel = reliance_from_draws(draws, prior_var, num_prior=9, prior_ess=3.0)
    pv = np.var(draws.numpy(), axis=0, ddof=1)
    pr = prior_var.numpy()
    expect = np.where(pr > 0, pv / np.where(pr > 0, pr, 1.0), 0.0)  # a pixel the prior fixes: 0
    np.testing.assert_allclose(rel.prior_reliance.double().numpy(), expect, rtol=1e-6)
    np.testing.assert_allclose(rel.posterior_var.double().numpy(), pv, rtol=1e-6)
    assert (rel.num_posterior, rel.num_prior, rel.prior_ess) == (6, 9, 3.0)
    for bad in (None, draws[:1], draws[0]):
        with pytest.raises(BRGMError, match="at least 2 posterior draws"):
            reliance_from_draws(bad, prior_var)


class _Counting:
    """A model-like object around a linear G: counts renders; ``discrepancy`` with a tau."""

    def __init__(self, prior_name: str, tau: float | None = None, offset: float = 0.0):
        self.generator = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=2, seed=4)
        stats = compute_latent_stats(self.generator, num_samples=200)
        self.prior = make_prior(prior_name, self.generator, stats, kappa=2.0)
        self.discrepancy = None if tau is None else type("D", (), {"tau": tau})()
        self.offset, self.renders = offset, 0

    def render(self, w):
        self.renders += 1
        return self.generator(w) + self.offset


def _numpy_moments(x: np.ndarray, wt: np.ndarray | None):
    if wt is None:
        return x.mean(0), x.var(0, ddof=1)
    m = np.tensordot(wt, x, axes=1)
    return m, np.tensordot(wt, (x - m) ** 2, axes=1)


@pytest.mark.parametrize("prior_name", ["gaussian", "brgm"])
@pytest.mark.parametrize("chunk,num", [(1, 50), (7, 50), (64, 50), (1, 2)])
def test_pixel_moments_match_numpy_over_the_same_renders(prior_name, chunk, num):
    model = _Counting(prior_name, offset=1e7)  # a large offset: the shifted sums must not cancel
    w, wt = sample_prior_latents(model.prior, num, seed=2)
    with torch.no_grad():
        x = model.render(w).double().numpy()
    mean, var = _moments(model, w, wt, chunk, progress=False)
    m, v = _numpy_moments(x, None if wt is None else wt.numpy())
    np.testing.assert_allclose(mean.numpy(), m, rtol=1e-12)
    np.testing.assert_allclose(var.numpy(), v, rtol=1e-6)


def test_importance_weights_and_their_ess():
    model = _Counting("brgm")
    w, wt = sample_prior_latents(model.prior, 40, seed=3)
    w2, _ = sample_prior_latents(model.prior, 40, seed=3)
    assert torch.equal(w, w2) and not torch.equal(w, sample_prior_latents(model.prior, 40, seed=4)[0])
    # the colinearity factor by hand: kappa * sum_{i<j} cos(w_i, w_j), exp-normalised
    wn = w.double().numpy()
    cos = (wn[:, 0] * wn[:, 1]).sum(-1) / np.linalg.norm(wn[:, 0], axis=-1) / np.linalg.norm(wn[:, 1], axis=-1)
    e = np.exp(2.0 * cos - (2.0 * cos).max())
    np.testing.assert_allclose(wt.numpy(), e / e.sum(), rtol=1e-5)
    _, _, ess = prior_image_moments(model, 40, seed=3, chunk=8)
    assert ess == pytest.approx(1.0 / ((e / e.sum()) ** 2).sum(), rel=1e-5)
    _, _, flat_ess = prior_image_moments(_Counting("gaussian"), 40, seed=3, chunk=8)
    assert flat_ess == 40.0


def test_discrepancy_adds_tau_squared_and_the_cache_renders_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BRGM_CACHE_DIR", str(tmp_path))
    plain = _Counting("brgm")
    mean0, var0, _ = prior_image_moments(plain, 30, seed=1, chunk=8)
    model = _Counting("brgm", tau=0.3)
    mean1, var1, _ = prior_image_moments(model, 30, seed=1, chunk=8, cache=True)
    np.testing.assert_allclose(mean1.numpy(), mean0.numpy(), rtol=1e-12)
    np.testing.assert_allclose((var1 - var0).numpy(), 0.09, rtol=1e-9)
    made = model.renders
    assert made > 0 and list(tmp_path.rglob("*prior_pixel_moments*"))
    mean2, var2, _ = prior_image_moments(model, 30, seed=1, chunk=8, cache=True)
    assert model.renders == made  # read from the cache
    np.testing.assert_allclose(mean2.numpy(), mean0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var2.numpy(), var1.numpy(), rtol=1e-12)
    other = _Counting("brgm", tau=0.3)
    prior_image_moments(other, 31, seed=1, chunk=8, cache=True)  # another number of draws: another key
    assert other.renders > 0


def test_no_cache_is_written_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("BRGM_CACHE_DIR", str(tmp_path))
    prior_image_moments(_Counting("brgm"), 20, seed=1, chunk=8)
    assert not list(tmp_path.rglob("*"))


def test_a_cache_file_of_another_shape_or_corrupt_is_ignored(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "m.safetensors"
    save_file({"mean": torch.zeros(1, 2, 2, dtype=torch.float64), "var": torch.ones(1, 2, 2, dtype=torch.float64)},
              str(p))
    got = _read_moments(p, (1, 2, 2))
    assert got is not None and torch.equal(got[1], torch.ones(1, 2, 2, dtype=torch.float64))
    assert _read_moments(p, (1, 4, 4)) is None
    p.write_bytes(b"not a safetensors file")
    assert _read_moments(p, (1, 2, 2)) is None
    assert _read_moments(tmp_path / "missing.safetensors", (1, 2, 2)) is None


def test_prior_reliance_refuses_a_result_without_draws_before_rendering():
    model = _Counting("gaussian")
    res = InferenceResult("map", {}, torch.zeros(1, 1, 2, 2), samples=None)
    with pytest.raises(BRGMError, match="at least 2 posterior draws"):
        prior_reliance(model, res)
    assert model.renders == 0


def test_prior_reliance_with_its_defaults_uses_the_documented_512_prior_draws():
    model = _Counting("brgm")
    g = torch.Generator().manual_seed(5)
    draws = torch.randn(4, 1, 1, 2, 2, generator=g)
    res = InferenceResult("vi", {}, draws.mean(0), samples=draws)
    rel = prior_reliance(model, res)  # every default: num_prior, seed, no cache, no bar
    assert rel.num_prior == 512 and rel.num_posterior == 4 and 1.0 < rel.prior_ess < 512.0
    assert torch.isfinite(rel.prior_reliance).all()
