"""The coloured discrepancy's spectrum, value by value (issue 31's mutation run of
models/discrepancy.py): which tables and lengths are accepted (the boundaries: two radii, a zero
power, a length below one pixel) and refused, and the lag covariance of a tabulated spectrum
against numpy's own interpolation and inverse FFT of the same table on the DFT grid.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.discrepancy import Discrepancy, StationarySmoother


@pytest.mark.parametrize("radius,power", [([0.0, 0.5], [1.0, 0.0]), ([0.0, 0.3, 0.75], [0.0, 2.0, 0.0]),
                                          ([0.1, 0.2], [0.5, 0.5])])
def test_valid_tables_are_accepted(radius, power):
    s = StationarySmoother(radius, power)
    assert s.config() == {"radius": radius, "power": power}
    assert s.key == ("spectrum", tuple(radius), tuple(power))


@pytest.mark.parametrize("radius,power", [([0.0], [1.0]), ([0.0, 0.5], [1.0]), ([0.0, 0.5, 0.6], [1.0, 1.0]),
                                          ([0.0, 0.5, 0.5], [1.0, 1.0, 1.0]), ([0.5, 0.0], [1.0, 1.0]),
                                          ([0.0, 0.5], [1.0, float("nan")]), ([0.0, 0.5], [1.0, -0.1]),
                                          ([0.0, 0.5], [0.0, 0.0])])
def test_bad_tables_are_refused_in_one_line(radius, power):
    with pytest.raises(BRGMError, match="needs >= 2 increasing radii and as many non-negative powers, not all zero"):
        StationarySmoother(radius, power)


def test_gaussian_length_boundaries():
    for ok in (0.5, 2, 1e-3):
        s = StationarySmoother.gaussian(ok)
        r = s.radius.numpy()  # the docstring's P(f) = exp(-(2 pi f l)^2) on a table over [0, 0.75]
        assert r[0] == 0.0 and r[-1] == pytest.approx(0.75) and len(r) > 50
        np.testing.assert_allclose(s.power.numpy(), np.exp(-(2 * np.pi * r * ok) ** 2), rtol=1e-12)
    for bad in (0.0, -1.0, math.inf, math.nan, "1"):
        with pytest.raises(BRGMError, match="correlation length must be a positive number of pixels"):
            StationarySmoother.gaussian(bad)


def _numpy_lags(radius, power, h, w):
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    rad = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    P = np.interp(rad, radius, power)  # linear, constant beyond the table
    P = P / P.mean()
    c = np.fft.ifft2(P).real
    iy, ix = np.arange(-(h - 1), h) % h, np.arange(-(w - 1), w) % w
    return c[iy][:, ix], P


@pytest.mark.parametrize("h,w", [(8, 8), (6, 10)])
def test_lag_covariance_of_a_table_is_the_inverse_fft_of_the_interpolated_power(h, w):
    radius, power = [0.05, 0.2, 0.4], [3.0, 1.0, 0.25]  # starts above 0: constant below the table too
    s = StationarySmoother(radius, power)
    c, P = _numpy_lags(radius, power, h, w)
    got = s.lag_covariance(h, w)
    assert tuple(got.shape) == (2 * h - 1, 2 * w - 1)
    np.testing.assert_allclose(got.numpy(), c, atol=1e-12)
    assert got[h - 1, w - 1].item() == pytest.approx(1.0)  # unit variance per pixel
    if h == w:
        assert s.correlation(2, n=h) == pytest.approx(c[h - 1, w - 1 + 2])
    # K z with K = F^-1 sqrt(P) F: its covariance K K^T is the circulant of c
    z = torch.eye(h * w, dtype=torch.float64).reshape(h * w, h, w)
    K = s.apply(z).reshape(h * w, h * w)
    idx = np.arange(h * w)
    dy = (idx[:, None] // w - idx[None, :] // w) % h
    dx = (idx[:, None] % w - idx[None, :] % w) % w
    np.testing.assert_allclose((K @ K.T).numpy(), np.fft.ifft2(P).real[dy, dx], atol=1e-10)


def test_a_discrepancy_states_its_tau_and_colour():
    d = Discrepancy(0.25, spectrum={"radius": [0.0, 0.5], "power": [1.0, 0.5]})
    assert d.tau == 0.25
    assert d.config()["spectrum"] == {"radius": [0.0, 0.5], "power": [1.0, 0.5]}
    for bad in (0.0, -0.1, math.inf, math.nan):
        with pytest.raises(BRGMError):
            Discrepancy(bad)
