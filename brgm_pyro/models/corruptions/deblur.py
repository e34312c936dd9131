"""Deblurring with a known kernel: y = k * x (a convolution, per channel, same size as x).

Kernels (all normalised to sum 1, so constant images stay constant):

* ``"gauss"``: isotropic Gaussian of std ``sigma`` input pixels, truncated at 4 sigma (radius
  ``ceil(4 sigma)``); separable, applied as two small matrices. ``sigma`` may be a
  :class:`~brgm_pyro.models.latents.ScalarLatent` (blind deblurring: the width is inferred as the
  latent ``kernel_width``, the mechanism of ``blind_superres``; see :func:`blind_deblur`).
* ``"motion"``: linear motion blur of ``length`` pixels at ``angle`` degrees (counter-clockwise
  from the +x axis, image rows pointing down): a 1-pixel-wide anti-aliased line segment through
  the kernel centre, weight ``max(0, 1 - d)`` at distance d (pixels) from the segment of length
  ``length - 1`` between the first and last pixel centres (``length`` 1 is the identity).
* a user array: 2-D (kh x kw) or 1-D (separable, outer product with itself); it must be finite
  and sum to 1 (a kernel that does not is refused rather than silently renormalised: a sum of
  0.5 would otherwise claim the image is half as bright as observed).

Convolution, not correlation (the kernel is flipped, as in deepinv's ``conv2d``); the kernel's
centre is entry ``(kh // 2, kw // 2)`` for odd sizes and ``(kh // 2 - 1, kw // 2 - 1)`` for even
sizes (deepinv's convention). Boundary handling (``padding``): ``"reflect"`` (default; the image
mirrored about its edge pixels, numpy/torch ``reflect``), ``"replicate"``, ``"circular"``,
``"zero"``, all same-size, or ``"valid"`` (no padding; the observation shrinks by kh - 1 rows and
kw - 1 columns: deepinv's default). Padding is done by index (gather), so the adjoint is the
transposed convolution followed by a scatter-add of the padded border back onto the image, exact.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption
from brgm_pyro.models.latents import ScalarLatent

PADDINGS = ("reflect", "replicate", "circular", "zero", "valid")
DEFAULT_BLUR_SIGMA = 2.0


def pad_index(size: int, lo: int, hi: int, mode: str) -> tuple[Tensor, Tensor]:
    """Source index (size + lo + hi,) of each padded position and whether it holds image data.

    ``mode``: one of :data:`PADDINGS` (``valid`` needs lo = hi = 0). For ``zero`` the border
    positions point at pixel 0 with ``valid`` False (they are multiplied by 0).
    """
    t = torch.arange(-lo, size + hi)
    inside = (t >= 0) & (t < size)
    if mode in ("zero", "valid"):
        return t.clamp(0, size - 1), inside
    if mode == "replicate":
        return t.clamp(0, size - 1), torch.ones_like(inside)
    if mode == "circular":
        return t % size, torch.ones_like(inside)
    if mode == "reflect":
        if max(lo, hi) > size - 1:
            raise BRGMError(f"a kernel of radius {max(lo, hi)} is too large to reflect a {size}-pixel image; "
                            "use a smaller kernel or padding='zero'")
        period = 2 * (size - 1) if size > 1 else 1
        r = t % period
        return torch.where(r < size, r, period - r), torch.ones_like(inside)
    raise BRGMError(f"unknown padding {mode!r}; use one of {', '.join(PADDINGS)}")


def _margins(k: int, padding: str) -> tuple[int, int]:
    """(lo, hi) padding for a kernel of k taps centred at k // 2 (odd) or k // 2 - 1 (even)."""
    if padding == "valid":
        return 0, 0
    centre = k // 2 if k % 2 else k // 2 - 1
    return k - 1 - centre, centre


def conv_matrix(size: int, kernel: Tensor, padding: str) -> Tensor:
    """The matrix (..., out, size) of a 1-D convolution with ``kernel`` (..., k) and ``padding``.

    Row i holds the weights of input pixels in output pixel i, borders folded in by the padding.
    Differentiable in ``kernel`` (a latent width builds it per value).
    """
    k = kernel.shape[-1]
    lo, hi = _margins(k, padding)
    idx, inside = pad_index(size, lo, hi, padding)
    onehot = F.one_hot(idx, size).to(kernel) * inside[:, None].to(kernel)  # (size + lo + hi, size)
    taps = onehot.unfold(0, k, 1)  # (out, size, k): padded position i + a for tap a
    return torch.einsum("...a,isa->...is", kernel.flip(-1), taps)  # convolution: flipped kernel


def gaussian_kernel_1d(sigma: Tensor, radius: int) -> Tensor:
    """Normalised Gaussian taps (..., 2 radius + 1) of std ``sigma`` (...,), truncated at 4 sigma."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype, device=sigma.device)
    s = sigma[..., None]
    k = torch.exp(-0.5 * (t / s) ** 2) * (t.abs() <= 4 * s)
    return k / k.sum(-1, keepdim=True)


def motion_kernel(length: float, angle: float) -> Tensor:
    """Linear motion kernel (n, n), n odd, sum 1; see the module docstring."""
    if not (length >= 1 and math.isfinite(length)):
        raise BRGMError(f"motion blur length must be >= 1 pixel, got {length!r}")
    half = (length - 1) / 2
    n = 2 * math.ceil(half) + 3
    c = torch.arange(n, dtype=torch.float64) - n // 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    a = math.radians(angle)
    ux, uy = math.cos(a), -math.sin(a)  # rows point down
    along = (xx * ux + yy * uy).clamp(-half, half)
    d = torch.hypot(xx - along * ux, yy - along * uy)
    k = (1 - d).clamp_min(0)
    return k / k.sum()


class Blur(Corruption):
    """f(x) = k * x, per channel; see the module docstring for kernels and boundaries.

    Args:
        kernel: ``"gauss"``, ``"motion"`` or an array (1-D separable or 2-D, sum 1).
        sigma: Gaussian std in input pixels (a number or a ScalarLatent); default 2.
        length: motion blur length in pixels (--kernel motion).
        angle: motion blur direction in degrees, counter-clockwise from the +x axis (--kernel motion).
        padding: boundary handling, one of :data:`PADDINGS`.
        noise_sigma: std of the Gaussian noise :meth:`simulate` adds ([-1, 1] units), or None.

    Shapes: (..., C, H, W) -> (..., C, H, W) (``valid``: (..., C, H - kh + 1, W - kw + 1)).
    """

    name = "deblur"
    linear = True  # in x, for every kernel width
    cli_task = "brgm_pyro.pipeline.corruption_tasks:DeblurTask"  # brgm reconstruct --task deblur

    def __init__(self, kernel: Union[str, np.ndarray, Tensor] = "gauss",
                 sigma: Union[float, ScalarLatent] = DEFAULT_BLUR_SIGMA, length: float = 9.0,
                 angle: float = 0.0, padding: str = "reflect", noise_sigma: Optional[float] = None) -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise BRGMError(f"unknown padding {padding!r}; use one of {', '.join(PADDINGS)}")
        self.padding, self.noise_sigma = padding, noise_sigma
        self.kernel_name = kernel if isinstance(kernel, str) else "custom"
        self.width_latent: Optional[ScalarLatent] = None
        self.sigma: Optional[float] = None
        self.length, self.angle = float(length), float(angle)
        self._k1d: Optional[Tensor] = None
        k2d: Optional[Tensor] = None
        if isinstance(kernel, str) and kernel == "gauss":
            if isinstance(sigma, ScalarLatent):
                if padding == "valid":
                    raise BRGMError("a latent blur width needs a same-size padding, not 'valid'")
                self.width_latent = sigma
            else:
                if not (isinstance(sigma, (int, float)) and sigma > 0):
                    raise BRGMError(f"Gaussian blur sigma must be a positive number of pixels, got {sigma!r}")
                self.sigma = float(sigma)
                self._k1d = gaussian_kernel_1d(torch.tensor(self.sigma, dtype=torch.float64),
                                               max(1, math.ceil(4 * self.sigma)))
        elif isinstance(kernel, str) and kernel == "motion":
            k2d = motion_kernel(self.length, self.angle)
        elif isinstance(kernel, str):
            raise BRGMError(f"unknown blur kernel {kernel!r}; use gauss, motion or an array")
        else:
            k2d = _user_kernel(kernel)
        self.register_buffer("_k2d", None if k2d is None else k2d.float(), persistent=False)
        self._mats: dict[tuple, tuple[Tensor, Tensor]] = {}

    # --- shapes -------------------------------------------------------------------------------
    def kernel_size(self) -> tuple[int, int]:
        if self._k2d is not None:
            return tuple(self._k2d.shape)  # type: ignore[return-value]
        n = self._k1d.numel() if self._k1d is not None else 1
        return (n, n)

    def out_shape(self, in_shape):
        c, h, w = in_shape
        if self.padding != "valid":
            return (c, h, w)
        kh, kw = self.kernel_size()
        return (c, h - kh + 1, w - kw + 1)

    def in_shape(self, obs_shape):
        c, h, w = obs_shape
        if self.padding != "valid":
            return (c, h, w)
        kh, kw = self.kernel_size()
        return (c, h + kh - 1, w + kw - 1)

    def check_input(self, in_shape) -> None:
        _, h, w = in_shape
        kh, kw = self.kernel_size()
        if self.width_latent is not None:
            return  # its taps span the image (radius size - 1), which every padding allows
        if self.padding == "valid" and (kh > h or kw > w):
            raise BRGMError(f"the {kh}x{kw} blur kernel is larger than the {h}x{w} image; use a smaller kernel")
        if self.padding == "reflect" and max(*_margins(kh, "reflect"), *_margins(kw, "reflect")) > min(h, w) - 1:
            raise BRGMError(f"the {kh}x{kw} blur kernel is too large to reflect a {h}x{w} image; use a smaller "
                            "kernel or another padding")

    def latents(self) -> list:
        return [] if self.width_latent is None else [self.width_latent]

    # --- the operator -------------------------------------------------------------------------
    def _gauss_mats(self, h: int, w: int, params: Optional[dict], like: Tensor) -> tuple[Tensor, Tensor]:
        """(Mh (..., h', h), Mw (..., w', w)); per width value when the width is latent."""
        if self.width_latent is None:
            key = (h, w, like.dtype, like.device)
            if key not in self._mats:
                k = self._k1d.to(like.device)
                self._mats[key] = tuple(conv_matrix(n, k, self.padding).to(like.dtype) for n in (h, w))
            return self._mats[key]
        width = self.width_latent.read(params, "this deblurring (its kernel width)", like=like)
        out = []
        for n in (h, w):  # radius n - 1: the truncation at 4 sigma is in the taps, differentiably
            k = gaussian_kernel_1d(width, n - 1)
            out.append(conv_matrix(n, k, self.padding)[..., None, :, :])  # (*width, 1, n, n)
        return out[0], out[1]

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        self.check_input(tuple(x.shape[-3:]))
        if self._k2d is None:
            mh, mw = self._gauss_mats(x.shape[-2], x.shape[-1], params, x)
            return mh @ x @ mw.transpose(-1, -2)
        return super().forward(x)

    def apply(self, x: Tensor) -> Tensor:  # (N, C, H, W), 2-D kernels
        k = self._k2d.to(device=x.device, dtype=x.dtype)
        kh, kw = k.shape
        (lh, hh), (lw, hw) = _margins(kh, self.padding), _margins(kw, self.padding)
        ih, mh = pad_index(x.shape[-2], lh, hh, self.padding)
        iw, mw = pad_index(x.shape[-1], lw, hw, self.padding)
        border = (mh[:, None] & mw[None, :]).to(device=x.device, dtype=x.dtype)
        xp = x[..., ih.to(x.device), :][..., iw.to(x.device)] * border
        c = x.shape[1]
        return F.conv2d(xp, k.flip(-1, -2).expand(c, 1, kh, kw), groups=c)

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        c, h, w = self.in_shape(tuple(y.shape[-3:]))
        if self._k2d is None:
            mh, mw = self._gauss_mats(h, w, params, y)
            return mh.transpose(-1, -2) @ y @ mw
        lead = y.shape[:-3]
        yf = y.reshape(-1, *y.shape[-3:])
        k = self._k2d.to(device=y.device, dtype=y.dtype)
        kh, kw = k.shape
        (lh, hh), (lw, hw) = _margins(kh, self.padding), _margins(kw, self.padding)
        ih, mh = pad_index(h, lh, hh, self.padding)
        iw, mw = pad_index(w, lw, hw, self.padding)
        z = F.conv_transpose2d(yf, k.flip(-1, -2).expand(c, 1, kh, kw), groups=c)  # (N, C, Hp, Wp)
        z = z * (mh[:, None] & mw[None, :]).to(device=y.device, dtype=y.dtype)
        rows = torch.zeros(*z.shape[:-2], h, z.shape[-1], dtype=y.dtype, device=y.device)
        rows.index_add_(-2, ih.to(y.device), z)  # fold the padded rows back onto their sources
        out = torch.zeros(*z.shape[:-2], h, w, dtype=y.dtype, device=y.device)
        out.index_add_(-1, iw.to(y.device), rows)
        return out.reshape(*lead, c, h, w)

    def gram_diagonal(self, in_shape, params=None, dtype=torch.float32, device=None) -> Tensor:
        """diag(A A^T), (*width, C, H, W): for a latent Gaussian width the outer product of the row
        norms^2 of the two 1-D convolution matrices, built from the width's value in ``params``
        (differentiable in it: blind deblurring with a discrepancy term); else the exact generic
        computation (kept for fixed kernels, whose numbers must not move)."""
        if self.width_latent is None:
            return super().gram_diagonal(in_shape, params, dtype, device)
        c = in_shape[0]
        mh, mw = self._latent_mats(in_shape, params, dtype, device, "diag(A A^T)")
        g = mh.pow(2).sum(-1)[..., :, None] * mw.pow(2).sum(-1)[..., None, :]  # (*width, H, W)
        return g.unsqueeze(-3).expand(*g.shape[:-2], c, *g.shape[-2:])

    def smoothed_gram_diagonal(self, in_shape, smoother, params=None, dtype=torch.float32, device=None) -> Tensor:
        """diag(A R A^T) for a latent Gaussian width and a stationary R (coloured discrepancy): the
        separable closed form of :meth:`SuperResolution.smoothed_gram_diagonal`; else the generic one."""
        if self.width_latent is None:
            return super().smoothed_gram_diagonal(in_shape, smoother, params, dtype, device)
        from brgm_pyro.models.corruptions.superres import _row_autocorrelation

        c, h, w = in_shape
        mh, mw = self._latent_mats(in_shape, params, dtype, device, "diag(A R A^T)")
        C = smoother.lag_covariance(h, w, dtype=dtype, device=device)  # (2h - 1, 2w - 1)
        g = _row_autocorrelation(mh) @ C @ _row_autocorrelation(mw).transpose(-1, -2)  # (*width, H, W)
        return g.unsqueeze(-3).expand(*g.shape[:-2], c, *g.shape[-2:])

    def _latent_mats(self, in_shape, params, dtype, device, what: str) -> tuple[Tensor, Tensor]:
        """(Mh (*width, H, H), Mw (*width, W, W)) of the latent width's value in ``params``."""
        if params is None:
            raise BRGMError(f"this deblurring infers its kernel width: {what} needs its value")
        like = torch.zeros((), dtype=dtype, device=device)
        mh, mw = self._gauss_mats(in_shape[-2], in_shape[-1], params, like)
        return mh[..., 0, :, :], mw[..., 0, :, :]  # drop the channel axis _gauss_mats adds

    def kernel2d(self) -> Tensor:
        """The 2-D kernel (kh, kw) (the outer product of the taps for a fixed Gaussian)."""
        if self._k2d is not None:
            return self._k2d
        if self._k1d is None:
            raise BRGMError("a latent-width blur has no single kernel; read kernel_width from the posterior")
        return torch.outer(self._k1d, self._k1d).float()

    def config(self) -> dict:
        out = {"name": self.name, "kernel": self.kernel_name, "padding": self.padding,
               "kernel_size": list(self.kernel_size()), "noise_sigma": self.noise_sigma}
        if self.kernel_name == "gauss":
            out["sigma"] = self.sigma if self.width_latent is None else "learned"
            if self.width_latent is not None:
                out["kernel_width_latent"] = self.width_latent.config()
        if self.kernel_name == "motion":
            out.update(length=self.length, angle=self.angle)
        return out


def _user_kernel(kernel) -> Tensor:
    k = torch.as_tensor(np.asarray(kernel, dtype=np.float64))
    if k.ndim == 1:
        k = torch.outer(k, k)
    if k.ndim != 2 or k.numel() == 0 or not torch.isfinite(k).all():
        raise BRGMError(f"a blur kernel must be a finite 1-D or 2-D array; got shape {tuple(k.shape)}")
    if abs(float(k.sum()) - 1.0) > 1e-3:
        raise BRGMError(f"the blur kernel sums to {float(k.sum()):.6g}, not 1; normalise it (k / k.sum())")
    return k / k.sum()


def blind_deblur(guess: float = DEFAULT_BLUR_SIGMA, spread: float = 0.5, per_image: bool = False,
                 padding: str = "reflect") -> Blur:
    """Gaussian deblurring with an unknown width, inferred as the latent ``kernel_width``
    (LogNormal(log guess, spread) prior, input pixels; as :func:`blind_superres`).

    Args:
        guess: prior median of the blur width (Gaussian std, input pixels).
        spread: std of the log of the width under its prior (0.5: 95 % between guess/2.7 and guess*2.7).
        per_image: infer one blur width per image instead of one shared by the batch.
        padding: blur boundary handling: reflect | replicate | circular | zero.
    """
    from brgm_pyro.models.corruptions.superres import blur_width_latent

    return Blur("gauss", sigma=blur_width_latent(1, guess, spread, per_image), padding=padding)


blind_deblur.cli_task = "brgm_pyro.pipeline.corruption_tasks:BlindDeblurTask"  # brgm reconstruct --task deblur_blind
