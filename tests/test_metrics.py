"""Metrics against independent implementations and closed-form values."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from brgm_pyro import metrics


def _ssim_scipy(a, b):
    """Independent SSIM: scipy Gaussian filtering (sigma 1.5, radius 5 = 11 taps), valid region."""
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    vals = []
    for c in range(a.shape[2]):
        x, y = a[:, :, c].astype(np.float64), b[:, :, c].astype(np.float64)
        f = lambda t: ndimage.gaussian_filter(t, 1.5, truncate=5 / 1.5)[5:-5, 5:-5]  # noqa: E731
        mx, my = f(x), f(y)
        sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
        m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
        vals.append(m.mean())
    return float(np.mean(vals))


def test_ssim_matches_independent_scipy_implementation():
    rng = np.random.default_rng(0)
    a = rng.random((32, 40, 3))
    b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1)
    ref = _ssim_scipy(a, b)
    got = metrics.ssim(a, b)
    assert 0.2 < ref < 0.95
    assert got == pytest.approx(ref, abs=1e-9)


def test_ssim_closed_form_for_constant_images():
    a = np.full((16, 16, 1), 0.2)
    b = np.full((16, 16, 1), 0.7)
    c1 = 0.01 ** 2
    expected = (2 * 0.2 * 0.7 + c1) / (0.2 ** 2 + 0.7 ** 2 + c1)  # variances are 0: contrast term is 1
    assert metrics.ssim(a, b) == pytest.approx(expected, rel=1e-9)
    assert metrics.ssim(a, a) == pytest.approx(1.0)


def test_ssim_identical_and_channels_first_and_torch():
    rng = np.random.default_rng(1)
    a = rng.random((20, 20, 3))
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    b = rng.random((20, 20, 3))
    hwc = metrics.ssim(a, b)
    chw = metrics.ssim(torch.from_numpy(a.transpose(2, 0, 1)), torch.from_numpy(b.transpose(2, 0, 1)),
                       channels_first=True)
    assert chw == pytest.approx(hwc, abs=1e-12)
    assert hwc < 0.1  # independent noise images are nearly unrelated


def test_ssim_small_images_use_a_smaller_window():
    rng = np.random.default_rng(2)
    a = rng.random((8, 8, 1))
    v = metrics.ssim(a, a * 0.5)
    assert 0 < v < 1


def test_psnr_mae_rmse_known_values():
    a = np.zeros((4, 4, 3))
    b = np.full((4, 4, 3), 0.1)
    assert metrics.mae(a, b) == pytest.approx(0.1)
    assert metrics.rmse(a, b) == pytest.approx(0.1)
    assert metrics.psnr(a, b) == pytest.approx(20.0)
    b2 = a.copy()
    b2[0, 0, 0] = 1.0  # one pixel off by 1 out of 48 values
    assert metrics.mae(a, b2) == pytest.approx(1 / 48)
    assert metrics.rmse(a, b2) == pytest.approx(math.sqrt(1 / 48))
    assert metrics.psnr(a, b2) == pytest.approx(10 * math.log10(48))
    assert metrics.psnr(a, a) == metrics.PSNR_MAX_DB  # capped, finite


def test_image_metrics_and_summary():
    rng = np.random.default_rng(3)
    a = rng.random((16, 16, 3))
    m1 = metrics.image_metrics(a, a)
    m2 = metrics.image_metrics(np.clip(a + 0.05, 0, 1), a)
    assert set(m1) == {"psnr", "ssim", "mae", "rmse"}
    s = metrics.summarize([m1, m2])
    assert s["mae"] == pytest.approx((m1["mae"] + m2["mae"]) / 2)
    with pytest.raises(ValueError):
        metrics.mae(a, a[:8])
