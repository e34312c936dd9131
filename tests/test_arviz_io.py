"""ArviZ InferenceData from every method: groups, shapes, per-pixel log-likelihood, atomic NetCDF."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from brgm_pyro import azcompat
from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import METHODS, InferenceResult
from brgm_pyro.inference.arviz_io import read_inference_data, to_inference_data, write_inference_data
from brgm_pyro.inference.vi import render_samples
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Inpainting, SuperResolution
from brgm_pyro.models.generators import ConvGenerator

SIG = 0.1


def _problem(corruption, B=2):
    G = ConvGenerator(img_resolution=8, img_channels=3, w_dim=4, channels=4, seed=2)
    model = build_model(G, corruption, sigma_pixel=SIG)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        y = model.predict(model.init_latents(B) + 0.3 * torch.randn(B, G.num_ws, 4, generator=g))
    return model, y


def _fake_mcmc(model, y, C=2, S=5):
    g = torch.Generator().manual_seed(1)
    sw = model.init_latents(y.shape[0]) + 0.1 * torch.randn(C * S, y.shape[0], model.generator.num_ws, 4, generator=g)
    samples = render_samples(model, sw)
    stats = {"accept_prob": np.full((C, S), 0.7), "step_size": np.full((C, S), 0.01),
             "diverging": np.zeros((C, S)), "tree_depth": np.full((C, S), 3.0), "n_steps": np.full((C, S), 7.0)}
    return InferenceResult(method="nuts", latents={"w": sw.mean(0)}, image=samples.mean(0), draws={"w": sw}, samples=samples,
                           extra={"num_chains": C, "num_draws": S, "sample_stats": stats, "grad_evals": 70})


def test_mcmc_groups_shapes_and_pointwise_loglik():
    mask = torch.ones(8, 8)
    mask[2:5, 1:6] = 0
    model, y = _problem(Inpainting(mask))
    res = _fake_mcmc(model, y)
    idata = to_inference_data(res, model, y)
    for g in ("posterior", "sample_stats", "log_likelihood", "observed_data", "constant_data"):
        assert g in azcompat.group_names(idata)
    assert idata.posterior["w"].shape == (2, 5, 2, model.generator.num_ws, 4)
    assert idata.posterior["x"].shape == (2, 5, 2, 3, 8, 8)
    n_obs = 3 * (64 - 15)
    ll = idata.log_likelihood["y"].values
    assert ll.shape == (2, 5, 2, n_obs) and np.isfinite(ll).all()
    # per-pixel Gaussian log density of the observed pixels, checked by hand for one draw
    pred = model.corruption(res.samples[6, 1])
    keep = mask.bool().expand(3, 8, 8)
    ref = -0.5 * ((y[1][keep] - pred[keep]) / SIG) ** 2 - math.log(SIG * math.sqrt(2 * math.pi))
    assert np.allclose(ll[1, 1, 1], ref.numpy(), atol=1e-4)
    # the pixel term of lp is the sum of the pointwise values over pixels and images
    st = idata.sample_stats
    assert np.allclose(st["log_lik_pixel"].values, ll.sum((-1, -2)), rtol=1e-4)
    assert np.allclose(st["lp"].values, st["log_prior"] + st["log_colinearity"] + st["log_lik_pixel"], rtol=1e-5)
    assert st["diverging"].dtype == bool and st["acceptance_rate"].shape == (2, 5)
    assert "tree_depth" in st and "step_size" in st and "n_steps" in st
    assert idata.observed_data["y"].shape == (2, 3, 8, 8)
    assert idata.constant_data["mask"].values.sum() == 64 - 15
    assert float(idata.constant_data["sigma_pixel"]) == pytest.approx(SIG)
    assert idata.posterior.attrs["method"] == "nuts"


def test_map_and_vi_results_convert(tmp_path):
    model, y = _problem(SuperResolution(2, "box"), B=1)
    for method, kw in (("map", {}), ("vi", {"num_samples": 6})):
        res = METHODS.get(method)(model, y, steps=5, progress=False, **kw)
        idata = to_inference_data(res, model, y)
        S = 1 if method == "map" else 6
        assert idata.posterior["w"].shape[:2] == (1, S)
        assert idata.log_likelihood["y"].shape == (1, S, 1, 3 * 4 * 4)
        assert int(idata.constant_data["factor"]) == 2
        assert "optimization" in azcompat.group_names(idata) and idata.optimization.sizes["step"] == 5
        back = read_inference_data(write_inference_data(idata, tmp_path / f"{method}.nc"))
        assert np.allclose(back.posterior["w"].values, idata.posterior["w"].values)
        assert back.posterior.attrs["method"] == method


def test_write_is_atomic_and_read_errors(tmp_path, monkeypatch):
    model, y = _problem(SuperResolution(2, "box"), B=1)
    idata = to_inference_data(_fake_mcmc(model, y), model, y)
    target = tmp_path / "posterior.nc"
    target.write_text("old")

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(type(idata), "to_netcdf", boom)
    with pytest.raises(RuntimeError):
        write_inference_data(idata, target)
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["posterior.nc"]
    monkeypatch.undo()
    write_inference_data(idata, target)
    assert os.listdir(tmp_path) == ["posterior.nc"]
    with pytest.raises(BRGMError):
        read_inference_data(tmp_path / "missing.nc")
    (tmp_path / "junk.nc").write_text("not netcdf")
    with pytest.raises(BRGMError):
        read_inference_data(tmp_path / "junk.nc")
