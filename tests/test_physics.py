"""Property tests over every registered corruption, in the style of deepinv's test_physics.py.

Each registered corruption's ``example`` is built for 3-channel 16x16 images and checked for:
declared output shape, linearity (where ``linear``), the adjoint identity <A x, y> = <x, A^T y>
(float64), leading sample dims, finite gradients (also with respect to its latents), device
moves, and a small model built on it. Then exact known values of each operator, and bad input.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.brgm import BRGMModel
from brgm_pyro.models.corruptions import (CORRUPTIONS, Blur, Colorization, Compose, CompressedSensing, Denoising,
                                          Inpainting, SuperResolution, make_corruption)
from brgm_pyro.models.corruptions.deblur import PADDINGS, blind_deblur, conv_matrix, motion_kernel
from brgm_pyro.models.density import log_density_terms
from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
from brgm_pyro.models.likelihoods import PixelGaussian
from brgm_pyro.models.priors import make_prior

SHAPE = (3, 16, 16)
NAMES = CORRUPTIONS.names()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


def _op(name):
    return CORRUPTIONS.example(name)(SHAPE)


def _params(op, lead=()):
    """Values of the operator's latents at their starting values: shared ``lead`` dims."""
    return {lat.name: torch.full(lead, lat.init) for lat in op.latents()}


def _rand(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_is_declared(name):
    op = _op(name)
    out = op(_rand(2, *SHAPE), _params(op))
    assert tuple(out.shape) == (2, *op.out_shape(SHAPE))
    assert op.obs_channels(SHAPE) == op.out_shape(SHAPE)[0]
    assert op.config()["name"] == op.name


@pytest.mark.parametrize("name", [n for n in NAMES if _op(n).linear])
def test_linearity(name):
    op = _op(name)
    p = _params(op)
    a, b = _rand(2, *SHAPE, seed=1), _rand(2, *SHAPE, seed=2)
    lhs = op(2.5 * a - 1.5 * b, p)
    rhs = 2.5 * op(a, p) - 1.5 * op(b, p)
    assert torch.allclose(lhs, rhs, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("name", [n for n in NAMES if _op(n).linear])
def test_adjoint(name):
    op = _op(name)
    p = {k: v.double() for k, v in _params(op).items()}
    x = _rand(2, *SHAPE, seed=3, dtype=torch.float64)
    y = _rand(2, *op.out_shape(SHAPE), seed=4, dtype=torch.float64)
    at_y = op.A_adjoint(y, p)
    assert tuple(at_y.shape) == (2, *SHAPE)
    lhs, rhs = (op.A(x, p) * y).sum(), (x * at_y).sum()
    assert abs(float(lhs - rhs)) <= 1e-9 * max(1.0, abs(float(lhs))), (float(lhs), float(rhs))


@pytest.mark.parametrize("name", NAMES)
def test_leading_dims(name):
    op = _op(name)
    x = _rand(4, 2, *SHAPE, seed=5)
    p = _params(op, (4, 1))  # a shared latent inside a particle plate
    out = op(x, p)
    assert tuple(out.shape) == (4, 2, *op.out_shape(SHAPE))
    ref = torch.stack([op(x[i], {k: v[i, 0] for k, v in p.items()}) for i in range(4)])
    assert torch.allclose(out, ref, atol=1e-5)
    if op.linear:
        y = _rand(4, 2, *op.out_shape(SHAPE), seed=6)
        adj = op.A_adjoint(y, p)
        ref = torch.stack([op.A_adjoint(y[i], {k: v[i, 0] for k, v in p.items()}) for i in range(4)])
        assert torch.allclose(adj, ref, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_gradients(name):
    op = _op(name)
    x = _rand(2, *SHAPE, seed=7).requires_grad_(True)
    p = {k: v.clone().requires_grad_(True) for k, v in _params(op).items()}
    (op(x, p) * _rand(2, *op.out_shape(SHAPE), seed=8)).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for k, v in p.items():  # a latent kernel width gets a gradient too
        assert v.grad is not None and torch.isfinite(v.grad) and v.grad != 0, k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", NAMES)
def test_device_move(name, device):
    op = _op(name)
    x = _rand(2, *SHAPE, seed=9)
    ref = op(x, _params(op))
    moved = op.to(device)
    out = moved(x.to(device), {k: v.to(device) for k, v in _params(op).items()})
    assert out.device.type == device
    assert torch.allclose(out.cpu(), ref, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_a_model_on_it(name):
    """The operator inside the BRGM model on a 3-channel linear generator: finite log density, gradients."""
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=3, img_resolution=16, seed=1)
    stats = compute_latent_stats(G, num_samples=500)
    op = _op(name)
    model = BRGMModel(G, make_prior("gaussian", G, stats), op, [PixelGaussian(0.1)])
    w = model.init_latents(2) + 0.2 * _rand(2, *G.latent_shape, seed=10)
    params = {lat.name: lat.init_value(2) for lat in model.scalar_latents}
    with torch.no_grad():
        y = op.simulate(model.render(w), torch.Generator().manual_seed(0), params)
    model.check_observation(y)
    wv = w.clone().requires_grad_(True)
    lp = sum(log_density_terms(model, y, {model.image_site: wv, **params}).values())
    lp.backward()
    assert torch.isfinite(lp) and torch.isfinite(wv.grad).all() and wv.grad.abs().sum() > 0


# --- exact known values ---------------------------------------------------------------------------
@pytest.mark.parametrize("padding", [p for p in PADDINGS if p != "zero"])
@pytest.mark.parametrize("kernel", ["gauss", "motion", "user"])
def test_constant_image_stays_constant_under_blur(kernel, padding):
    k = {"gauss": "gauss", "motion": "motion", "user": np.arange(1.0, 13.0).reshape(3, 4) / 78.0}[kernel]
    op = Blur(k, sigma=1.3, length=5, angle=30.0, padding=padding)
    y = op(torch.full((2, *SHAPE), 0.37))
    assert torch.allclose(y, torch.full_like(y, 0.37), atol=1e-6)


def test_zero_padding_darkens_only_the_border():
    op = Blur("gauss", sigma=1.0, padding="zero")
    y = op(torch.ones(1, *SHAPE))
    assert torch.allclose(y[..., 4:-4, 4:-4], torch.ones_like(y[..., 4:-4, 4:-4]), atol=1e-6)
    assert float(y[..., 0, 0].max()) < 0.5  # a corner keeps about a quarter of its kernel


def test_blur_of_a_delta_is_the_kernel_at_its_stated_centre():
    k = torch.arange(1.0, 13.0).reshape(3, 4) / 78.0  # asymmetric, even width: centre (1, 1)
    op = Blur(k.numpy(), padding="zero")
    x = torch.zeros(1, 1, 9, 9)
    x[..., 4, 4] = 1.0
    y = op(x)[0, 0]
    assert torch.allclose(y[3:6, 3:7], k, atol=1e-7)  # convolution: not flipped, entry (1, 1) at (4, 4)
    assert float(y.sum()) == pytest.approx(1.0)


def test_gaussian_matrix_path_equals_the_2d_convolution():
    op = Blur("gauss", sigma=1.7, padding="reflect")
    as_2d = Blur(op.kernel2d().numpy(), padding="reflect")
    x = _rand(2, *SHAPE, seed=11)
    assert torch.allclose(op(x), as_2d(x), atol=1e-5)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kernel", ["gauss", "motion", "user"])
def test_blur_variants_adjoint(kernel, padding):
    k = {"gauss": "gauss", "motion": "motion", "user": np.arange(1.0, 13.0).reshape(3, 4) / 78.0}[kernel]
    op = Blur(k, sigma=1.3, length=5, angle=30.0, padding=padding)
    x = _rand(2, *SHAPE, seed=20, dtype=torch.float64)
    y = _rand(2, *op.out_shape(SHAPE), seed=21, dtype=torch.float64)
    lhs, rhs = (op(x) * y).sum(), (x * op.A_adjoint(y)).sum()
    assert abs(float(lhs - rhs)) <= 1e-9 * abs(float(lhs))


def test_paddings_match_numpy_pad():
    x = _rand(1, 1, 7, 6, seed=12, dtype=torch.float64)
    k = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    modes = {"reflect": "reflect", "replicate": "edge", "circular": "wrap", "zero": "constant"}
    for ours, theirs in modes.items():
        xp = np.pad(x[0, 0].numpy(), ((1, 1), (0, 0)), mode=theirs)
        ref = sum(k[2 - a].item() * xp[a:a + 7] for a in range(3))  # convolution along rows
        got = conv_matrix(7, k, ours) @ x[0, 0]
        np.testing.assert_allclose(got.numpy(), ref, atol=1e-12, err_msg=ours)


def test_motion_kernel():
    k = motion_kernel(5, 0.0)
    row = k[k.shape[0] // 2]
    assert torch.allclose(k.sum(), torch.tensor(1.0, dtype=k.dtype))
    assert torch.allclose(row[row > 0], torch.full((5,), 0.2, dtype=k.dtype))
    assert torch.allclose(motion_kernel(5, 90.0), k.T, atol=1e-12)  # vertical = transposed horizontal
    assert torch.allclose(motion_kernel(1, 17.0)[1:-1, 1:-1].sum(), torch.tensor(1.0, dtype=k.dtype))


def test_colorization_exact_values():
    op = Colorization()
    gray = _rand(2, 1, 16, 16, seed=13).expand(2, 3, 16, 16)
    assert torch.allclose(op(gray), gray[:, :1], atol=1e-6)  # a gray image is itself
    x = torch.zeros(1, 3, 2, 2)
    x[0, 0], x[0, 1], x[0, 2] = 1.0, 2.0, 4.0
    assert torch.allclose(op(x), torch.full((1, 1, 2, 2), 0.299 + 2 * 0.587 + 4 * 0.114))
    # Pillow's convert("L") uses the same weights (on 0..255, rounded)
    from PIL import Image

    rgb = (np.random.default_rng(0).random((8, 8, 3)) * 255).round().astype(np.uint8)
    pil = np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float64)
    ours = op(torch.from_numpy(rgb.astype(np.float64)).permute(2, 0, 1)[None])[0, 0].numpy()
    assert np.abs(ours - pil).max() <= 0.5 + 1e-9


def test_denoising_is_the_identity_with_seeded_noise():
    op = Denoising()
    x = _rand(2, *SHAPE, seed=14)
    assert torch.equal(op(x), x)
    g = torch.Generator().manual_seed(3)
    y = op.simulate(x, g)
    e = (y - x).flatten()
    assert abs(float(e.std()) - op.noise_sigma) < 0.02 and abs(float(e.mean())) < 0.02
    assert torch.equal(y, op.simulate(x, torch.Generator().manual_seed(3)))


def test_fourier_cs_has_orthonormal_rows_and_gaussian_cs_is_seeded():
    op = CompressedSensing(70, (2, 8, 6), kind="fourier", matrix_seed=1)
    a = op.matrix
    assert torch.allclose(a @ a.T, torch.eye(70), atol=1e-5)
    y = _rand(3, 1, 1, 70, seed=22)
    assert torch.allclose(op.A_adjoint(y)[:, :, :, :].flatten(1), y[:, 0, 0] @ a, atol=1e-5)
    full = CompressedSensing(96, (2, 8, 6), kind="fourier")
    x = _rand(3, 2, 8, 6, seed=15)
    assert torch.allclose(full.A_adjoint(full(x)), x, atol=1e-5)  # m = n: an orthonormal change of basis
    g1, g2 = CompressedSensing(50, (1, 8, 8), matrix_seed=4), CompressedSensing(50, (1, 8, 8), matrix_seed=4)
    assert torch.equal(g1.matrix, g2.matrix)
    assert not torch.equal(g1.matrix, CompressedSensing(50, (1, 8, 8), matrix_seed=5).matrix)
    assert abs(float(g1.matrix.pow(2).sum(0).mean()) - 1.0) < 0.3  # N(0, 1/m) entries: E||a_j||^2 = 1


def test_cs_pinv_is_least_squares():
    for kind in ("gaussian", "fourier"):
        op = CompressedSensing(40, (1, 8, 8), kind=kind, matrix_seed=2)
        x = _rand(2, 1, 8, 8, seed=16, dtype=torch.float64)
        xh = op.pinv(op(x))
        assert torch.allclose(op(xh), op(x), atol=1e-6)  # consistent with the measurements
        # minimum norm: the part of x in the null space is gone
        assert float(xh.norm()) <= float(x.norm()) + 1e-9
    user = CompressedSensing(matrix=np.eye(64)[:10], img_shape=(1, 8, 8))
    x = _rand(1, 1, 8, 8, seed=17)
    assert torch.allclose(user(x)[0, 0, 0], x.flatten()[:10])


def test_composition_is_the_parts_in_order_and_passes_latents():
    mask = torch.ones(8, 8, dtype=torch.bool)
    mask[2:4] = False
    parts = [Blur("gauss", sigma=1.0), SuperResolution(2, "bicubic"), Inpainting(mask)]
    op = Compose(parts)
    x = _rand(2, *SHAPE, seed=18)
    assert torch.allclose(op(x), parts[2](parts[1](parts[0](x))))
    assert op.mask is parts[2].mask and op.out_shape(SHAPE) == (3, 8, 8)
    spec = Compose([{"name": "deblur", "sigma": 1.0}, {"name": "colorize"}])
    assert spec.out_shape(SHAPE) == (1, 16, 16) and spec.linear
    blind = Compose([blind_deblur(1.2), SuperResolution(2)])
    assert [lat.name for lat in blind.latents()] == ["kernel_width"]
    p = {"kernel_width": torch.tensor(0.8)}
    assert torch.allclose(blind(x, p), SuperResolution(2)(Blur("gauss", sigma=0.8)(x)), atol=1e-5)
    assert torch.allclose(make_corruption("compose", steps=[{"name": "denoise"}, {"name": "colorize"}])(x),
                          Colorization()(x))


def test_perceptual_network_takes_one_channel_observations():
    from brgm_pyro.models.perceptual import load_faces64_percept

    phi = load_faces64_percept()
    gray = _rand(2, 1, 64, 64, seed=19).clamp(-1, 1)
    assert torch.allclose(phi(gray), phi(gray.expand(2, 3, 64, 64)))
    assert phi(gray[..., :8, :8]).shape[0] == 2  # an 8x8 grayscale observation too


# --- bad input: one-line BRGMErrors ---------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: Blur(np.ones((3, 3))), "sums to 9"),
    (lambda: Blur(np.full((3, 3), 0.1)), "not 1"),
    (lambda: Blur(np.array([[np.nan, 1.0]])), "finite"),
    (lambda: Blur("box"), "unknown blur kernel"),
    (lambda: Blur("gauss", sigma=-1.0), "positive"),
    (lambda: Blur("gauss", padding="mirror"), "unknown padding"),
    (lambda: Blur("motion", length=0.5), "length"),
    (lambda: Colorization([0.5, 0.6, 0.1]), "sum to 1"),
    (lambda: Colorization("lab"), "unknown luma"),
    (lambda: Denoising(0.0), "positive"),
    (lambda: CompressedSensing(0, (3, 8, 8)), "1..192"),
    (lambda: CompressedSensing(500, (3, 8, 8)), "1..192"),
    (lambda: CompressedSensing(10, (3, 8, 8), kind="hadamard"), "unknown compressed-sensing"),
    (lambda: CompressedSensing(matrix=np.zeros((10, 100)), img_shape=(3, 8, 8)), r"\(m, 192\)"),
    (lambda: Compose([Inpainting(torch.eye(16) > 0), Blur()]), "last step"),
    (lambda: Compose([{"name": "deblur", "sigmaa": 1.0}]), "bad options"),
    (lambda: Compose([blind_deblur(), blind_deblur()]), "same latent"),
])
def test_bad_construction(build, match):
    with pytest.raises(BRGMError, match=match) as e:
        build()
    assert "\n" not in str(e.value)


def test_bad_shapes():
    with pytest.raises(BRGMError, match="needs images with 3 channels"):
        Colorization()(torch.zeros(1, 1, 8, 8))
    with pytest.raises(BRGMError, match="built for images of shape"):
        CompressedSensing(10, (3, 8, 8))(torch.zeros(1, 3, 16, 16))
    with pytest.raises(BRGMError, match="too large to reflect"):
        Blur("gauss", sigma=3.0)(torch.zeros(1, 3, 8, 8))
    with pytest.raises(BRGMError, match="not linear"):
        class Clip(Denoising):
            linear = False

            def A_adjoint(self, y, params=None):  # the base class's: refuses non-linear operators
                return super(Denoising, self).A_adjoint(y, params)
        Clip().A_adjoint(torch.zeros(1, 3, 4, 4))
    with pytest.raises(BRGMError, match="kernel_width"):
        blind_deblur()(torch.zeros(1, 3, 8, 8))
    assert math.isclose(Blur("gauss", sigma=1.0, padding="valid").out_shape((3, 16, 16))[1], 16 - 8)
