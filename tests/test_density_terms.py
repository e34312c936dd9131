"""models/density.py's bookkeeping against log densities written out by hand (scipy): sites that
share a term add up, sample dims are kept, a missing latent is named (mutation-testing survivors)."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity
from brgm_pyro.models.density import log_density_terms, trace_terms
from brgm_pyro.models.generators import LinearGenerator


def _two_sites_one_term(n: int):
    def model():
        with pyro.plate("draws", n, dim=-1):
            pyro.sample("a", dist.Normal(0.5, 2.0))
            pyro.sample("b", dist.Laplace(-1.0, 0.7))
            pyro.sample("c", dist.Normal(0.0, 1.0))
    return model


@pytest.mark.parametrize("keep_dims", [0, 1])
def test_sites_of_one_term_add_up(keep_dims):
    tr = poutine.trace(_two_sites_one_term(5)).get_trace()
    a, b, c = (tr.nodes[k]["value"].double().numpy() for k in "abc")
    got = trace_terms(tr, {"a": "t", "b": "t", "c": "u"}, keep_dims=keep_dims)
    t = stats.norm.logpdf(a, 0.5, 2.0) + stats.laplace.logpdf(b, -1.0, 0.7)
    u = stats.norm.logpdf(c)
    if keep_dims == 0:
        t, u = t.sum(), u.sum()
    np.testing.assert_allclose(got["t"].double().numpy(), t, rtol=1e-5)
    np.testing.assert_allclose(got["u"].double().numpy(), u, rtol=1e-5)
    assert set(got) == {"t", "u"}


def test_log_density_names_a_missing_latent_and_keeps_one_sample_dim():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=1)
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel="learn")
    y = torch.zeros(1, *model.obs_shape)
    with pytest.raises(BRGMError, match="sigma_pixel"):
        log_density_terms(model, y, {"w": model.init_latents(1)})
    w = model.init_latents(1).expand(3, 1, 2, 3) + 0.1 * torch.randn(3, 1, 2, 3)
    sig = torch.tensor([0.1, 0.2, 0.3])
    many = log_density_terms(model, y, {"w": w, "sigma_pixel": sig})
    for s in range(3):
        one = log_density_terms(model, y, {"w": w[s], "sigma_pixel": sig[s]})
        for k in one:
            assert torch.allclose(many[k][s], one[k], rtol=1e-5, atol=1e-5), k
    pred = model.predict(w[1], {"sigma_pixel": sig[1]}).double().numpy()
    assert float(many["pixel"][1]) == pytest.approx(stats.norm.logpdf(0.0, pred, 0.2).sum(), rel=1e-5)


def test_layouts_round_trip_and_leave_per_image_sites_alone():
    """Natural <-> plate layout: a shared scalar gets (and loses) the unit images dim; w and a
    per-image scalar keep their shapes, also with one image (a unit dim that must not go)."""
    from brgm_pyro.models.density import natural_layout, plate_layout

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=1)
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel="learn")
    per = build_model(G, Identity(), prior="gaussian", sigma_pixel="learn", noise_per_image=True)
    w = torch.randn(5, 1, 2, 3)
    plate = plate_layout(model, {"w": w, "sigma_pixel": torch.rand(5)})
    assert plate["w"].shape == (5, 1, 2, 3) and plate["sigma_pixel"].shape == (5, 1)
    back = natural_layout(model, plate, 1)
    assert back["w"].shape == (5, 1, 2, 3) and back["sigma_pixel"].shape == (5,)
    one = natural_layout(per, {"w": w, "sigma_pixel": torch.rand(5, 1)}, 1)
    assert one["w"].shape == (5, 1, 2, 3) and one["sigma_pixel"].shape == (5, 1)


def test_log_density_terms_take_either_layout_and_the_layouts_are_idempotent():
    """The docstring's contract: latents in natural *or* plate layout give the same log density; a
    value already in the target layout is left as it is (mutants 36-37 of the 8 Dec run)."""
    from brgm_pyro.models.density import natural_layout, plate_layout

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=1)
    model = build_model(G, Identity(), prior="gaussian", sigma_pixel="learn")
    y = torch.randn(1, 1, 4, 4)
    natural = {"w": torch.randn(5, 1, 2, 3), "sigma_pixel": torch.rand(5) + 0.1}
    plate = plate_layout(model, natural)
    assert {k: v.shape for k, v in plate_layout(model, plate, 1).items()} == {k: v.shape for k, v in plate.items()}
    assert {k: v.shape for k, v in natural_layout(model, natural, 1).items()} == \
        {k: v.shape for k, v in natural.items()}
    a, b = log_density_terms(model, y, natural), log_density_terms(model, y, plate)
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == (5,) and torch.allclose(a[k], b[k]), k
