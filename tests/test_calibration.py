"""brgm_pyro.calibration on cases with known answers: exact Gaussian draws cover at their level,
interval widths are the Gaussian's, regions select the right elements, SBC ranks and their test."""

import math

import numpy as np
import pytest
import torch

from brgm_pyro.calibration import (coverage_report, interval_bounds, interval_coverage, interval_width,
                                   sbc_ranks, sbc_uniformity)

Z = {0.5: 0.6744897501960817, 0.9: 1.6448536269514722, 0.95: 1.959963984540054}  # N(0, 1) quantiles


@pytest.mark.parametrize("level", [0.5, 0.9, 0.95])
def test_exact_gaussian_draws_cover_at_their_level(level):
    g = torch.Generator().manual_seed(1)
    draws = torch.randn(400, 20000, generator=g)  # 400 exact posterior draws for each of 20,000 truths
    truth = torch.randn(20000, generator=g)
    cov = interval_coverage(draws, truth, level)
    # Monte Carlo sd of the coverage: sqrt(level (1 - level) / 20000) <= 0.0036; the 400-draw quantiles add less
    assert abs(cov - level) < 0.02, cov


def test_width_of_gaussian_draws():
    g = torch.Generator().manual_seed(2)
    s = torch.tensor([0.1, 0.5, 2.0])
    draws = torch.randn(20000, 3, generator=g) * s
    w = interval_width(draws, 0.9)
    assert w.shape == (3,) and w.dtype == draws.dtype
    np.testing.assert_allclose(w.numpy(), 2 * Z[0.9] * s.numpy(), rtol=0.03)
    lo, hi = interval_bounds(draws, 0.5)
    np.testing.assert_allclose(lo.numpy(), -Z[0.5] * s.numpy(), rtol=0.05)
    np.testing.assert_allclose(hi.numpy(), Z[0.5] * s.numpy(), rtol=0.05)


def test_level_outside_0_1_is_refused():
    with pytest.raises(ValueError):
        interval_width(torch.zeros(3, 2), 1.0)


def test_region_selects_elements():
    # (S, B, C, H, W) draws; truth inside the interval on the left half, far outside on the right half
    draws = torch.linspace(-1, 1, 101).reshape(101, 1, 1, 1, 1).expand(101, 1, 3, 2, 4).clone()
    truth = torch.zeros(1, 3, 2, 4)
    truth[..., 2:] = 5.0
    missing = torch.zeros(1, 1, 2, 4, dtype=torch.bool)  # broadcast over channels
    missing[..., 2:] = True
    assert interval_coverage(draws, truth, 0.9) == pytest.approx(0.5)
    assert interval_coverage(draws, truth, 0.9, region=missing) == 0.0
    assert interval_coverage(draws, truth, 0.9, region=~missing) == 1.0
    assert math.isnan(interval_coverage(draws, truth, 0.9, region=torch.zeros(2, 4, dtype=torch.bool)))
    rep = coverage_report(draws, truth, missing=missing)
    assert set(rep) == {"all", "observed", "missing"}
    assert set(rep["all"]) == {"0.5", "0.9", "0.95"}
    assert rep["observed"]["0.9"]["coverage"] == 1.0 and rep["missing"]["0.9"]["coverage"] == 0.0
    assert rep["all"]["0.9"]["width"] == pytest.approx(1.8)  # 5 %..95 % of a uniform grid on [-1, 1]
    assert set(coverage_report(draws, truth)) == {"all"}


def test_sbc_ranks_count_draws_below_and_break_ties():
    draws = torch.tensor([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])  # (S=3, 2)
    ranks = sbc_ranks(draws, torch.tensor([1.5, 1.0]))
    assert ranks[0] == 2  # 0 and 1 are below 1.5
    assert 0 <= int(ranks[1]) <= 3  # all three draws tie with the truth: a uniform rank in 0..3


def test_sbc_uniformity_accepts_uniform_and_rejects_skewed_ranks():
    rng = np.random.default_rng(0)
    L = 99  # ranks in 0..99: 100 values, 10 per bin
    uniform = rng.integers(0, L + 1, size=5000)
    res = sbc_uniformity(uniform, L, bins=10)
    assert res["p_value"] > 0.01 and res["dof"] == 9 and sum(res["counts"]) == 5000
    assert np.allclose(res["expected"], 500.0)
    skewed = np.minimum(rng.integers(0, L + 1, size=(5000, 2)).min(1), L)  # min of two: rank density falls
    assert sbc_uniformity(skewed, L, bins=10)["p_value"] < 1e-6
    # ranks of exact draws (truth and draws from the same distribution) are uniform
    g = torch.Generator().manual_seed(3)
    r = sbc_ranks(torch.randn(L, 4000, generator=g), torch.randn(4000, generator=g))
    assert sbc_uniformity(r.numpy(), L)["p_value"] > 0.01


def test_sbc_uniformity_uneven_bins():
    # 0..20 (21 values) in 10 bins: expected counts follow how many rank values each bin holds
    r = np.arange(21).repeat(10)
    res = sbc_uniformity(r, 20, bins=10)
    assert sum(res["expected"]) == pytest.approx(210.0)
    assert res["chi2"] == pytest.approx(0.0) and res["p_value"] == pytest.approx(1.0)


def test_sbc_uniformity_with_fewer_rank_values_than_bins():
    # 5 draws: ranks 0..5, 6 values; 10 equal-width bins would leave 4 of them without a rank value
    r = np.random.default_rng(0).integers(0, 6, 3000)
    res = sbc_uniformity(r, 5, bins=10)
    assert res["dof"] == 5 and len(res["counts"]) == 6 and math.isfinite(res["chi2"]) and res["p_value"] > 0.01


def test_exact_sampler_reference_for_few_draws():
    """With S = 16 exact draws a 90 % interval covers ~0.9 * 15 / 17 = 0.794, not 0.9."""
    from brgm_pyro.calibration import exact_sampler_coverage, interval_coverage

    g = torch.Generator().manual_seed(3)
    for S in (16, 64):
        ref = exact_sampler_coverage(0.9, S)
        u = interval_coverage(torch.rand(S, 40_000, generator=g), torch.rand(40_000, generator=g), 0.9)
        assert abs(u - ref) < 0.008, S  # exact for uniform draws (MC error 0.002)
        n = interval_coverage(torch.randn(S, 40_000, generator=g), torch.randn(40_000, generator=g), 0.9)
        assert -0.005 < n - ref < 0.02, S  # Gaussian tails: a little more (0.806 at S = 16)
    assert abs(exact_sampler_coverage(0.9, 16) - 0.794) < 1e-3
