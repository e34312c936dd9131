"""Every private Pyro attribute the library reads (brgm_pyro/inference/pyro_internals.py) still
exists and means what the library assumes: this fails first when a Pyro release changes them."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDelta, AutoDiagonalNormal, AutoNormal
from pyro.infer.mcmc import HMC, NUTS

from brgm_pyro.inference import pyro_internals as pi


def _model():
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("sigma_pixel", dist.LogNormal(0.0, 1.0))


def _gaussian():
    pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))


@pytest.mark.parametrize("kind", [HMC, NUTS])
def test_hmc_kernel_internals(kind):
    pyro.set_rng_seed(0)
    k = kind(_gaussian, adapt_step_size=True)
    k.setup(2)
    assert pi.draws_made(k) == 0 and pi.warmup_steps(k) == 2
    assert set(pi.initial_params(k)) == {"w"}
    assert isinstance(pi.potential_energy_like(k), torch.Tensor)
    assert hasattr(pi.step_size_adapter(k), "adapt_step_size")
    assert callable(pi.step_size_adapter(k).reset_step_size_adaptation)
    params = pi.initial_params(k)
    for i in range(4):
        params = k.sample(params)
        assert pi.draws_made(k) == i + 1
        assert 0.0 <= pi.mean_accept_prob(k) <= 1.0
        assert pi.divergence_count(k) >= 0
        assert pi.cached_potential_energy(k) is not None
    if kind is NUTS:
        assert callable(getattr(NUTS, pi.BUILD_TREE))


def test_autoguide_internals():
    pyro.clear_param_store()
    g = AutoNormal(_model)
    g()
    assert pi.autonormal_sites(g) == ["w", "sigma_pixel"]
    assert pi.autonormal_scale(g, "w").shape == (3,)
    d = AutoDiagonalNormal(_model)
    d()
    assert {k: tuple(v) for k, v in pi.autocontinuous_shapes(d).items()} == {"w": (3,), "sigma_pixel": ()}
    delta = AutoDelta(_model)
    delta()
    sites = {pi.param_site(name) for name, _ in delta.named_parameters()}
    assert sites == {"w", "sigma_pixel"}
    assert {pi.param_site(name) for name, _ in g.named_parameters()} == {"w", "sigma_pixel"}
