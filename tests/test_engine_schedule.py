"""Learning-rate schedules of the optimiser shared by MAP and VI."""

from __future__ import annotations

import math

import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_map
from brgm_pyro.inference.engine import lr_factor
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import LinearGenerator
from tests.helpers import linear_gaussian_posterior


def test_geometric_schedule_matches_exponential_decay():
    steps, decay = 300, 0.1
    f = [lr_factor(i, steps, decay) for i in range(steps + 1)]
    assert f[0] == 1.0 and f[steps] == pytest.approx(decay)
    ratios = [b / a for a, b in zip(f, f[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) == pytest.approx(decay ** (1 / steps))


def test_rampdown_is_flat_then_a_half_cosine_to_the_decay():
    steps, decay, r = 400, 0.1, 0.25
    f = [lr_factor(i, steps, decay, r) for i in range(steps)]
    assert all(v == 1.0 for v in f[:300])  # (i + 1) / steps <= 0.75
    assert f[-1] == pytest.approx(decay)
    assert all(b < a for a, b in zip(f[300:], f[301:]))  # strictly decreasing in the ramp
    mid = 300 + 50 - 1  # u = 0.5: halfway down the cosine
    assert f[mid] == pytest.approx(decay + (1 - decay) * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_map_with_rampdown_reaches_the_closed_form_mode():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=0)
    model = build_model(G, SuperResolution(2, "box"), prior="gaussian", sigma_pixel=0.3)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        y = model.predict(model.init_latents(1) + 0.3 * torch.randn(1, 2, 3, generator=g))
    mean, _ = linear_gaussian_posterior(model, y[0])
    res = run_map(model, y, steps=800, lr=0.05, lr_decay=0.001, lr_rampdown=0.5, progress=False)
    assert torch.allclose(res.w.reshape(-1).double(), mean.reshape(-1), rtol=1e-3, atol=1e-4)
    assert res.extra["lr_rampdown"] == 0.5
    with pytest.raises(BRGMError, match="lr_rampdown"):
        run_map(model, y, steps=5, lr_rampdown=1.5, progress=False)
