"""Our SSIM against pytorch-msssim (a weight-free, well-kept implementation of Wang et al. 2004)."""

import numpy as np
import pytest
import torch

from brgm_pyro import metrics

msssim = pytest.importorskip("pytorch_msssim")


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].double()


@pytest.mark.parametrize("shape,noise,seed", [((32, 32, 3), 0.1, 0), ((64, 64, 3), 0.02, 1), ((16, 24, 1), 0.3, 2),
                                              ((64, 64, 3), 0.5, 3)])
def test_ssim_agrees_with_pytorch_msssim(shape, noise, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:shape[0], 0:shape[1]] / max(shape[:2])
    a = np.clip(0.5 + 0.3 * np.sin(7 * x + 3 * y)[..., None] + 0.1 * rng.random(shape), 0, 1)
    b = np.clip(a + noise * rng.standard_normal(shape), 0, 1)
    ref = float(msssim.ssim(_t(a), _t(b), data_range=1.0, size_average=True, win_size=11, win_sigma=1.5,
                            K=(0.01, 0.03)))
    assert metrics.ssim(a, b) == pytest.approx(ref, abs=1e-5)
    assert metrics.ssim(a, a) == pytest.approx(1.0, abs=1e-12)
