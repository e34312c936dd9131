"""Super-resolution's operator, value by value, against loops written out here (issue 31's mutation
run of models/corruptions/superres.py): which factors and user kernels are accepted and refused
(factor 1 is valid: deblurring), the shapes, what run.json records, and a user's 2-D kernel
against its definition (a kernel centred on each block centre, normalised over the taps that fall
inside the image).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.corruptions.superres import blind_superres


def test_factors_accepted_and_refused():
    x = torch.randn(2, 3, 6, 6)
    assert torch.equal(SuperResolution(1, "box")(x), x)  # factor 1: nothing averaged
    assert SuperResolution(2.0).factor == 2
    for bad in (0, -2, 2.5):
        with pytest.raises(BRGMError, match=f"factor must be a positive integer, got {bad!r}"):
            SuperResolution(bad)
    f = SuperResolution(4)
    with pytest.raises(BRGMError, match=r"factor 4 does not divide the 6x6 resolution; use one of \[2, 3, 6\]"):
        f(x)
    with pytest.raises(BRGMError, match=r"the 6x9 resolution; use one of \[3\]"):  # both sides divided
        SuperResolution(4)(torch.randn(1, 1, 6, 9))
    assert f.out_shape((3, 8, 12)) == (3, 2, 3) and f.in_shape((3, 2, 3)) == (3, 8, 12)


def test_config_records_the_kernel():
    assert SuperResolution(2).config() == {"name": "superres", "factor": 2, "kernel": "box", "gauss_sigma": None}
    cfg = SuperResolution(2, np.ones((3, 3))).config()
    assert cfg["kernel"] == "custom" and cfg["gauss_sigma"] is None
    assert SuperResolution(4, "gauss", gauss_sigma=1.5).config()["gauss_sigma"] == 1.5
    blind = blind_superres(2).config()
    assert blind["gauss_sigma"] == "learned" and blind["kernel"] == "gauss" and "kernel_width_latent" in blind
    assert SuperResolution(2).latents() == [] and len(blind_superres(2).latents()) == 1
    with pytest.raises(BRGMError, match="needs kernel='gauss'"):
        SuperResolution(2, "box", gauss_sigma=blind_superres(2).width_latent)
    with pytest.raises(BRGMError, match="unknown kernel 'lanczos'"):
        SuperResolution(2, "lanczos")


def _by_hand(x: np.ndarray, k: np.ndarray, s: int) -> np.ndarray:
    """Output (i, j) = sum_ab k[a, b] x[i s - lo + a, j s - lo + b] over in-image taps / sum of those k."""
    n = k.shape[0]
    lo = (n - s) // 2 if n >= s else 0
    h, w = x.shape[-2:]
    out = np.zeros(x.shape[:-2] + (h // s, w // s))
    for i in range(h // s):
        for j in range(w // s):
            num, den = 0.0, 0.0
            for a in range(n):
                for b in range(n):
                    r, c = i * s - lo + a, j * s - lo + b
                    if 0 <= r < h and 0 <= c < w:
                        num = num + k[a, b] * x[..., r, c]
                        den += k[a, b]
            out[..., i, j] = num / den
    return out


@pytest.mark.parametrize("n,s", [(5, 2), (4, 2), (3, 3), (1, 2)])
def test_a_user_kernel_is_centred_on_each_block_and_normalised_inside_the_image(n, s):
    g = np.random.default_rng(n + s)
    k2 = g.uniform(0.1, 1.0, (n, n))
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    got = SuperResolution(s, k2).double()(x)
    np.testing.assert_allclose(got.numpy(), _by_hand(x.numpy(), k2 / k2.sum(), s), rtol=1e-5, atol=1e-6)
    k1 = g.uniform(0.1, 1.0, n)  # separable: the outer product
    np.testing.assert_allclose(SuperResolution(s, k1).double()(x).numpy(),
                               _by_hand(x.numpy(), np.outer(k1, k1) / np.outer(k1, k1).sum(), s), rtol=1e-5, atol=1e-6)


def test_bad_user_kernels_are_refused():
    for bad in (np.array([[1.0, np.nan], [1.0, 1.0]]), np.zeros((3, 3)), -np.ones((3, 3)), np.ones((2, 2, 2))):
        with pytest.raises(BRGMError, match="finite 1-D or 2-D array with a positive sum"):
            SuperResolution(2, bad)
    with pytest.raises(BRGMError, match="must be square"):
        SuperResolution(2, np.ones((3, 2)))
    SuperResolution(2, np.array([[0.0, 1.0], [0.0, 0.0]]))  # one positive tap is a kernel


@pytest.mark.parametrize("kernel", ["box", "bicubic", "gauss", np.ones((3, 3))])
def test_superres_is_linear_and_says_so_so_the_discrepancy_term_accepts_it(kernel):
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.generators import LinearGenerator

    f = SuperResolution(2, kernel).double()
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(2, 1, 3, 8, 8, generator=g, dtype=torch.float64)
    torch.testing.assert_close(f(2.0 * x - 0.5 * z), 2.0 * f(x) - 0.5 * f(z))
    assert f.linear is True
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, seed=3)
    m = build_model(G, SuperResolution(2, kernel), prior="gaussian", discrepancy=0.1)  # needs a linear A
    assert m.discrepancy.tau == 0.1
