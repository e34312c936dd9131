"""Super-resolution corruption: blur with a kernel and sub-sample by an integer factor."""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption
from brgm_pyro.models.latents import ScalarLatent
from brgm_pyro.models.corruptions.kernels import KERNELS, default_gauss_sigma, downsample_matrix, make_gaussian


class SuperResolution(Corruption):
    """f(x) = (k * x) sub-sampled by ``factor``.

    Args:
        factor: integer down-sampling factor s; must divide the image resolution.
        kernel: ``"box"`` (block mean), ``"bicubic"`` (anti-aliased, as Pillow's BICUBIC reduce),
            ``"gauss"`` (Gaussian of ``gauss_sigma`` input pixels, default s/2), or a user array:
            1-D (separable, applied to rows and columns) or 2-D (k x k, applied as a stride-s
            convolution centred on each output pixel's block as closely as the parities of k and s
            allow, weights renormalised over the taps inside the image).
        gauss_sigma: width of the Gaussian kernel in input pixels: a number, or a
            :class:`~brgm_pyro.models.latents.ScalarLatent` to infer it (blind reconstruction; the
            site is usually ``kernel_width``, see :func:`blur_width_latent`). ``factor=1`` is a
            plain Gaussian blur.

    Shapes: (..., C, H, W) -> (..., C, H/s, W/s). Units are unchanged (a weighted mean). With a
    latent width, its value may be () or (B,) (per image), with any leading sample dims in the
    plate layout ((*S, 1) or (*S, B)); the kernel is built per value, differentiably in the width.
    """

    name = "superres"
    linear = True  # in x, for every kernel width

    def __init__(self, factor: int, kernel: Union[str, np.ndarray, Tensor] = "box",
                 gauss_sigma: Optional[float] = None) -> None:
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise BRGMError(f"super-resolution factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        self.kernel_name = kernel if isinstance(kernel, str) else "custom"
        self.gauss_sigma = gauss_sigma
        self._kernel_fn = None
        self._kernel2d: Optional[Tensor] = None
        self.width_latent: Optional[ScalarLatent] = None
        if isinstance(gauss_sigma, ScalarLatent):
            if kernel != "gauss":
                raise BRGMError("a latent kernel width needs kernel='gauss'")
            self.width_latent, self.gauss_sigma = gauss_sigma, None
        if isinstance(kernel, str):
            if kernel == "gauss" and self.width_latent is not None:
                pass  # built per value in forward()
            elif kernel == "gauss":
                self.gauss_sigma = float(gauss_sigma or default_gauss_sigma(self.factor))
                self._kernel_fn = make_gaussian(self.gauss_sigma)
            elif kernel in KERNELS:
                self._kernel_fn = KERNELS[kernel]
            else:
                raise BRGMError(f"unknown kernel {kernel!r}; use box, bicubic, gauss or an array")
        else:
            k = torch.as_tensor(np.asarray(kernel), dtype=torch.float64)
            if not torch.isfinite(k).all() or k.sum() <= 0 or k.ndim not in (1, 2):
                raise BRGMError("a user kernel must be a finite 1-D or 2-D array with a positive sum")
            if k.ndim == 1:  # separable: the outer product is the 2-D kernel
                k = torch.outer(k, k)
            if k.shape[0] != k.shape[1]:
                raise BRGMError("a 2-D user kernel must be square (k x k)")
            self._kernel2d = (k / k.sum()).float()
        self._mats: dict[tuple, tuple[Tensor, Tensor]] = {}

    def latents(self) -> list:
        return [] if self.width_latent is None else [self.width_latent]

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        if self.width_latent is None:
            return super().forward(x)
        self.check_input(tuple(x.shape[-3:]))
        width = self.width_latent.read(params, "this super-resolution (its kernel width)", like=x)
        dh = gauss_matrix(x.shape[-2], self.factor, width)[..., None, :, :]  # (*width, 1, h, H)
        dw = gauss_matrix(x.shape[-1], self.factor, width)[..., None, :, :]
        return dh @ x @ dw.transpose(-1, -2)

    def out_shape(self, in_shape):
        c, h, w = in_shape
        return (c, h // self.factor, w // self.factor)

    def in_shape(self, obs_shape):
        c, h, w = obs_shape
        return (c, h * self.factor, w * self.factor)

    def check_input(self, in_shape) -> None:
        _, h, w = in_shape
        if h % self.factor or w % self.factor:
            ok = [s for s in range(2, h + 1) if h % s == 0 and w % s == 0]
            raise BRGMError(
                f"factor {self.factor} does not divide the {h}x{w} resolution; use one of {ok}")

    def gram_diagonal(self, in_shape, params=None, dtype=torch.float32, device=None) -> Tensor:
        """diag(A A^T): for a separable kernel the outer product of the row norms^2 of the two 1-D
        operators (differentiable in a latent width); 1 / s^2 for the block mean; else the exact
        generic computation (2-D user kernels)."""
        c, h, w = in_shape
        if self._kernel2d is None and self.kernel_name == "box" and self.width_latent is None:
            return torch.full(self.out_shape(tuple(in_shape)), 1.0 / self.factor ** 2, dtype=dtype, device=device)
        if self._kernel2d is not None:
            return super().gram_diagonal(in_shape, None, dtype, device)
        dh, dw = self._separable(h, w, params, dtype, device, "diag(A A^T)")
        g = dh.pow(2).sum(-1)[..., :, None] * dw.pow(2).sum(-1)[..., None, :]  # (*width, h/s, w/s)
        return g.unsqueeze(-3).expand(*g.shape[:-2], c, *g.shape[-2:])

    def smoothed_gram_diagonal(self, in_shape, smoother, params=None, dtype=torch.float32, device=None) -> Tensor:
        r"""diag(A R A^T) for a separable kernel and a stationary R with lag covariance c:
        :math:`\sum_{\delta_h, \delta_w} a_h(i, \delta_h)\, c(\delta_h, \delta_w)\, a_w(j, \delta_w)`
        with :math:`a(i, \delta) = \sum_p D_{ip} D_{i,p+\delta}` each 1-D operator's row autocorrelation
        (differentiable in a latent width); else the exact generic computation."""
        c, h, w = in_shape
        if self._kernel2d is not None:
            return super().smoothed_gram_diagonal(in_shape, smoother, None, dtype, device)
        dh, dw = self._separable(h, w, params, dtype, device, "diag(A R A^T)")
        C = smoother.lag_covariance(h, w, dtype=dtype, device=device)  # (2h - 1, 2w - 1)
        g = _row_autocorrelation(dh) @ C @ _row_autocorrelation(dw).transpose(-1, -2)  # (*width, h/s, w/s)
        return g.unsqueeze(-3).expand(*g.shape[:-2], c, *g.shape[-2:])

    def _separable(self, h: int, w: int, params, dtype, device, what: str) -> tuple[Tensor, Tensor]:
        """The 1-D down-sampling matrices (D_h, D_w): (*width, h/s, h) and (*width, w/s, w) for a latent
        width (built from its value in ``params``), else the fixed kernel's (h/s, h), (w/s, w)."""
        if self.width_latent is None:
            return self._matrices(h, w, dtype, device)
        if params is None:
            raise BRGMError(f"this super-resolution infers its kernel width: {what} needs its value")
        width = self.width_latent.read(params, "this super-resolution (its kernel width)",
                                       like=torch.zeros((), dtype=dtype, device=device))
        return gauss_matrix(h, self.factor, width), gauss_matrix(w, self.factor, width)

    def _matrices(self, h: int, w: int, dtype, device) -> tuple[Tensor, Tensor]:
        key = (h, w, dtype, device)
        if key not in self._mats:
            self._mats[key] = (
                downsample_matrix(h, self.factor, self._kernel_fn).to(device=device, dtype=dtype),
                downsample_matrix(w, self.factor, self._kernel_fn).to(device=device, dtype=dtype),
            )
        return self._mats[key]

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(tuple(x.shape[-3:]))
        h, w = x.shape[-2:]
        s = self.factor
        if self._kernel2d is None and self.kernel_name == "box":
            return F.avg_pool2d(x, s)  # the exact block mean, and the fastest path
        if self._kernel2d is None:
            dh, dw = self._matrices(h, w, x.dtype, x.device)
            return dh @ x @ dw.T
        # 2-D kernel: convolution centred on block centres, normalised over in-image taps
        k = self._kernel2d.to(device=x.device, dtype=x.dtype)
        n = k.shape[0]
        # centre of the kernel sits at input coordinate j*s + (s-1)/2; pad so a stride-s conv lands there
        lo = (n - s) // 2 if n >= s else 0
        pad_lo = max(lo, 0)
        pad_hi = max(n - s - lo, 0)
        c = x.shape[1]
        xp = F.pad(x, (pad_lo, pad_hi, pad_lo, pad_hi))
        ones = F.pad(torch.ones(1, 1, h, w, dtype=x.dtype, device=x.device), (pad_lo, pad_hi, pad_lo, pad_hi))
        weight = k.expand(c, 1, n, n)
        num = F.conv2d(xp, weight, stride=s, groups=c)
        den = F.conv2d(ones, k[None, None], stride=s)
        return num / den

    def config(self) -> dict:
        out = {"name": self.name, "factor": self.factor, "kernel": self.kernel_name,
               "gauss_sigma": self.gauss_sigma}
        if self.width_latent is not None:
            out["gauss_sigma"] = "learned"
            out["kernel_width_latent"] = self.width_latent.config()
        return out


def _row_autocorrelation(d: Tensor) -> Tensor:
    """a(i, k) = sum_p d[i, p] d[i, p + k - (n - 1)] for k in 0..2n-2: (..., m, n) -> (..., m, 2n - 1)."""
    lead, (m, n) = d.shape[:-2], d.shape[-2:]
    flat = d.reshape(1, -1, n)
    out = F.conv1d(F.pad(flat, (n - 1, n - 1)), flat.reshape(-1, 1, n), groups=flat.shape[1])
    return out.reshape(*lead, m, 2 * n - 1)


def gauss_matrix(size: int, factor: int, width: Tensor) -> Tensor:
    """Down-sampling matrices of Gaussian kernels of std ``width`` (...,) input pixels: (..., size // s, size).

    The same kernel as :func:`~brgm_pyro.models.corruptions.kernels.make_gaussian` (truncated at
    4 widths, rows normalised), differentiable in the width.
    """
    out = size // factor
    i = torch.arange(size, dtype=width.dtype, device=width.device)
    c = torch.arange(out, dtype=width.dtype, device=width.device) * factor + (factor - 1) / 2
    t = i[None, :] - c[:, None]  # (out, size)
    s = width[..., None, None]
    k = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= 4 * s)
    return k / k.sum(-1, keepdim=True)


def blur_width_latent(factor: int, guess: Optional[float] = None, spread: float = 0.5,
                      per_image: bool = False) -> ScalarLatent:
    """The latent ``kernel_width`` (input pixels) with a LogNormal(log guess, spread) prior.

    ``guess`` defaults to s/2 (:func:`default_gauss_sigma`); ``spread`` 0.5 puts 95 % of the prior
    between guess/2.7 and guess*2.7.
    """
    from brgm_pyro.models.latents import positive_prior

    g = float(guess) if guess is not None else default_gauss_sigma(max(factor, 2))
    return ScalarLatent("kernel_width", positive_prior("lognormal", g, spread), per_image=per_image,
                        units="input pixels (std of the Gaussian kernel)")


def blind_superres(factor: int, guess: Optional[float] = None, spread: float = 0.5,
                   per_image: bool = False) -> SuperResolution:
    """Super-resolution (or, with factor 1, deblurring) with a Gaussian kernel of unknown width,
    inferred as the latent ``kernel_width`` (:func:`blur_width_latent`).

    Args:
        factor: super-resolution factor; must divide the generator resolution.
        guess: prior median of the kernel width (Gaussian std, input pixels; default factor/2).
        spread: std of the log of the width under its prior (0.5: 95 % between guess/2.7 and guess*2.7).
        per_image: infer one kernel width per image instead of one shared by the batch.
    """
    return SuperResolution(factor, "gauss", gauss_sigma=blur_width_latent(factor, guess, spread, per_image))
