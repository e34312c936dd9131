import numpy as np
import pytest
import torch
from PIL import Image

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions import Identity, Inpainting, SuperResolution, make_corruption


@pytest.mark.parametrize("factor", [1, 2, 4, 8, 16, 32])
def test_box_is_block_mean_and_shapes(factor):
    x = torch.randn(2, 3, 32, 32)
    y = SuperResolution(factor, "box")(x)
    assert y.shape == (2, 3, 32 // factor, 32 // factor)
    ref = x.reshape(2, 3, 32 // factor, factor, 32 // factor, factor).mean((3, 5))
    assert torch.allclose(y, ref, atol=1e-6)


@pytest.mark.parametrize("factor", [2, 4, 8])
def test_bicubic_matches_pillow_reduce(factor):
    rng = np.random.default_rng(factor)
    img = rng.random((64, 64)).astype(np.float32)
    ours = SuperResolution(factor, "bicubic")(torch.from_numpy(img)[None, None])[0, 0].numpy()
    pil = np.asarray(Image.fromarray(img, mode="F").resize((64 // factor,) * 2, Image.BICUBIC))
    assert np.abs(ours - pil).max() < 1e-5


@pytest.mark.parametrize("kernel", ["box", "bicubic", "gauss", np.ones(3), np.outer([1, 2, 1], [1, 2, 1])])
def test_linear_and_shapes_for_every_divisor(kernel):
    for factor in [2, 4, 8]:
        op = SuperResolution(factor, kernel)
        a, b = torch.randn(2, 1, 3, 16, 16).unbind(0)
        lhs = op(2.0 * a - 3.0 * b)
        rhs = 2.0 * op(a) - 3.0 * op(b)
        assert lhs.shape == (1, 3, 16 // factor, 16 // factor)
        assert torch.allclose(lhs, rhs, atol=1e-5)
        # a weighted mean: constants are preserved (also at the borders)
        assert torch.allclose(op(torch.full((1, 3, 16, 16), 0.7)), torch.full((1, 3, 16 // factor, 16 // factor), 0.7), atol=1e-6)


def test_leading_dims_pass_through():
    op = SuperResolution(4, "bicubic")
    x = torch.randn(5, 2, 3, 16, 16)
    assert torch.allclose(op(x), op(x.reshape(10, 3, 16, 16)).reshape(5, 2, 3, 4, 4))


def test_gauss_width_changes_the_result():
    x = torch.randn(1, 1, 32, 32)
    assert not torch.allclose(SuperResolution(4, "gauss", gauss_sigma=0.5)(x), SuperResolution(4, "gauss", gauss_sigma=3.0)(x))


def test_bad_factor_and_kernel():
    with pytest.raises(BRGMError, match="does not divide"):
        SuperResolution(3)(torch.zeros(1, 3, 16, 16))
    with pytest.raises(BRGMError, match="unknown kernel"):
        SuperResolution(2, "lanczos")
    with pytest.raises(BRGMError):
        SuperResolution(0)


def test_inpainting_mask_semantics():
    mask = torch.ones(8, 8)
    mask[2:5, 3:6] = 0
    op = Inpainting(mask)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(op(x)[..., 2:5, 3:6], torch.zeros(2, 3, 3, 3))
    assert op.mask.shape == (1, 8, 8) and op.mask.dtype == torch.bool
    with pytest.raises(BRGMError, match="no missing pixel"):
        Inpainting(torch.ones(8, 8))
    with pytest.raises(BRGMError, match="mask is"):
        op.check_input((3, 16, 16))


def test_registry():
    assert isinstance(make_corruption("none"), Identity)
    assert make_corruption("superres", factor=2).factor == 2
    with pytest.raises(BRGMError, match="choose one of"):
        make_corruption("dehaze")  # not a registered corruption
