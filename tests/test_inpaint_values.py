"""In-painting's operator and what it declares (issue 31's mutation run of
models/corruptions/inpaint.py): it is linear and pixelwise (numerically: f(x) = m * x, each pixel
from itself alone) and says so, so the discrepancy term accepts it; run.json records its name and
observed fraction; a batch of masks (B, 1, H, W) is accepted and a 5-D one refused."""

from __future__ import annotations

import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions import Inpainting


def _mask(h=4, w=4):
    return (torch.arange(h * w).reshape(h, w) % 3 != 0)


def test_inpainting_is_linear_pixelwise_and_says_so():
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.generators import LinearGenerator

    f = Inpainting(_mask())
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 2, 3, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(f(2.0 * x - 0.5 * z), 2.0 * f(x) - 0.5 * f(z))
    torch.testing.assert_close(f(x), x * _mask().double())  # each pixel from itself alone
    assert f.linear is True and f.pixelwise is True
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=3)
    assert build_model(G, Inpainting(_mask()), prior="gaussian", discrepancy=0.1).discrepancy.tau == 0.1
    assert f.config() == {"name": "inpaint", "observed_fraction": pytest.approx(10 / 16)}


def test_mask_shapes_accepted_and_refused():
    batch = torch.stack([_mask(), ~_mask()])[:, None]  # (2, 1, 4, 4): one mask per image
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(Inpainting(batch)(x), x * batch.float())
    with pytest.raises(BRGMError, match=r"mask must be \(H, W\), \(C, H, W\) or \(B, C, H, W\); got shape"):
        Inpainting(batch[None])
    with pytest.raises(BRGMError, match="no missing pixel"):
        Inpainting(torch.ones(4, 4))
    with pytest.raises(BRGMError, match="no observed pixel"):
        Inpainting(torch.zeros(4, 4))
