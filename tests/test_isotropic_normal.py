"""IsotropicNormal (the perceptual likelihood's fast density) equals Normal(...).to_event(1)."""

import pyro.distributions as dist
import torch

from brgm_pyro.models.likelihoods.isotropic import IsotropicNormal


def test_log_prob_equals_normal_float_and_tensor_scale():
    g = torch.Generator().manual_seed(0)
    loc = torch.randn(3, 4, 50, generator=g, dtype=torch.float64)
    v = torch.randn(4, 50, generator=g, dtype=torch.float64)
    for scale in (0.3, torch.tensor([[[0.2]], [[0.5]], [[1.5]]], dtype=torch.float64)):  # float, (3, 1, 1)
        ref = dist.Normal(loc, scale).to_event(1).log_prob(v)
        got = IsotropicNormal(loc, scale).log_prob(v)
        assert got.shape == ref.shape == (3, 4)
        assert torch.allclose(got, ref, rtol=1e-12, atol=1e-10)


def test_shapes_expand_and_gradient():
    loc = torch.zeros(4, 7, requires_grad=True)
    d = IsotropicNormal(loc, 0.5)
    assert d.batch_shape == (4,) and d.event_shape == (7,)
    e = d.expand((2, 4))
    assert e.batch_shape == (2, 4) and e.rsample().shape == (2, 4, 7)
    lp = d.log_prob(torch.ones(4, 7)).sum()
    lp.backward()
    assert torch.allclose(loc.grad, torch.full((4, 7), 4.0))  # (v - loc) / s^2
    s = IsotropicNormal(torch.zeros(2, 1, 3), torch.tensor([[[2.0]], [[3.0]]]))
    assert s.batch_shape == (2, 1) and torch.allclose(s.variance[:, 0, 0], torch.tensor([4.0, 9.0]))
