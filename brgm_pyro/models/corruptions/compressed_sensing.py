"""Compressed sensing: m linear measurements of the whole image, y = A vec(x).

The image (C, H, W) is flattened in C-order (channel, row, column) to n = C H W numbers, and the
observation is stored as a (1, 1, m) "image" so that it passes through the model's
(..., C, h, w) conventions (likelihoods, ArviZ); it is not a picture (``image_observation``
False: no PNG, no perceptual likelihood).

Matrices (``kind``):

* ``"gaussian"``: i.i.d. N(0, 1/m) entries, drawn with a seeded ``torch.Generator`` (CPU,
  float32; the same matrix on every machine for a given seed); deepinv's
  ``CompressedSensing(fast=False)`` convention (E ||A x||^2 = ||x||^2). Dense: 4 m n bytes
  (m = n / 8 on a 3x64x64 image: 75 MB).
* ``"fourier"``: m rows of the orthonormal *real* 2-D Fourier basis of each channel, chosen
  uniformly at random without replacement (seeded). The basis: for each frequency of the
  half-plane ``rfft2`` keeps, sqrt(2) Re and sqrt(2) Im of the orthonormal DFT coefficient (only
  Re for the self-conjugate frequencies: DC and the Nyquist ones), which is an orthonormal basis
  of R^n; so A A^T = I, the pseudo-inverse is A^T and applying A costs one FFT (no matrix).
* ``matrix=``: a user array (m, n), n = C H W of the images it will see (checked).

Linear; the adjoint is A^T (the Fourier kind: scatter into the spectrum and inverse FFT).
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption

CS_KINDS = ("gaussian", "fourier")


def real_fourier_index(h: int, w: int) -> tuple[Tensor, Tensor, Tensor]:
    """The orthonormal real Fourier basis of (h, w) images, as rfft2 positions and parts.

    Returns ``(u, v, part)`` of length h w: frequency row u, column v (of the ``rfft2`` half
    spectrum, v <= w // 2) and part 0 = Re, 1 = Im. Each frequency appears once with its
    conjugate left out; self-conjugate ones (2u = 0 mod h and 2v = 0 mod w) have Re only.
    """
    us, vs, parts = [], [], []
    for v in range(w // 2 + 1):
        edge = v == 0 or 2 * v == w  # column whose conjugate partner is in the same column
        for u in range(h):
            if edge and u > h - u and u != 0:
                continue  # (h - u, v) already listed
            self_conj = edge and (u == 0 or 2 * u == h)
            for p in ((0,) if self_conj else (0, 1)):
                us.append(u), vs.append(v), parts.append(p)
    out = (torch.tensor(us), torch.tensor(vs), torch.tensor(parts))
    assert len(us) == h * w, (len(us), h, w)
    return out


class CompressedSensing(Corruption):
    """y = A vec(x), A (m, n); see the module docstring.

    Args:
        m: number of measurements, 1 <= m <= n (any number; m = n is a change of basis).
        img_shape: (C, H, W) of the clean images (n = C H W); needed to draw the matrix.
        kind: ``"gaussian"`` or ``"fourier"``. matrix_seed: the matrix / row selection seed (not
            ``seed``: that name is the observation noise's and the inference's).
        matrix: a user (m, n) array instead (``m``, ``kind`` and ``matrix_seed`` are then ignored).
        noise_sigma: std of the noise :meth:`simulate` adds, or None.

    Shapes: (..., C, H, W) -> (..., 1, 1, m).
    """

    name = "cs"
    linear = True
    cli_task = "brgm_pyro.pipeline.corruption_tasks:CompressedSensingTask"  # brgm reconstruct --task cs
    image_observation = False

    def __init__(self, m: Optional[int] = None, img_shape: tuple = (3, 64, 64), kind: str = "gaussian",
                 matrix_seed: int = 0, matrix=None, noise_sigma: Optional[float] = None) -> None:
        super().__init__()
        self.img_shape = tuple(int(s) for s in img_shape)
        if len(self.img_shape) != 3 or min(self.img_shape) < 1:
            raise BRGMError(f"img_shape must be (C, H, W), got {img_shape!r}")
        n = math.prod(self.img_shape)
        self.matrix_seed, self.noise_sigma = int(matrix_seed), noise_sigma
        self._fidx: Optional[tuple] = None
        self.register_buffer("_A", None, persistent=False)
        self.register_buffer("_rows", None, persistent=False)
        if matrix is not None:
            a = torch.as_tensor(np.asarray(matrix, dtype=np.float32))
            if a.ndim != 2 or not torch.isfinite(a).all():
                raise BRGMError(f"a CS matrix must be a finite 2-D array (m, n); got shape {tuple(a.shape)}")
            if a.shape[1] != n:
                raise BRGMError(f"the CS matrix has {a.shape[1]} columns but images of shape "
                                f"{'x'.join(map(str, self.img_shape))} have n = {n} values; give an (m, {n}) matrix")
            self.kind, self.m, self._A = "matrix", int(a.shape[0]), a
            return
        if kind not in CS_KINDS:
            raise BRGMError(f"unknown compressed-sensing matrix {kind!r}; use {', '.join(CS_KINDS)} or matrix=")
        if m is None or int(m) != m or not 1 <= m <= n:
            raise BRGMError(f"the number of measurements m must be an integer in 1..{n} (n = C H W), got {m!r}")
        self.kind, self.m = kind, int(m)
        g = torch.Generator().manual_seed(self.matrix_seed)
        if kind == "gaussian":
            self._A = torch.randn(self.m, n, generator=g) / math.sqrt(self.m)
        else:
            self._rows = torch.randperm(n, generator=g)[: self.m].sort().values

    def out_shape(self, in_shape):
        return (1, 1, self.m)

    def in_shape(self, obs_shape):
        return self.img_shape

    def check_input(self, in_shape) -> None:
        if tuple(in_shape) != self.img_shape:
            raise BRGMError(f"this CS operator was built for images of shape {self.img_shape}; "
                            f"got {tuple(in_shape)} (build it with img_shape={tuple(in_shape)})")

    @property
    def matrix(self) -> Tensor:
        """The dense (m, n) matrix (built from the FFT for the Fourier kind: n FFTs)."""
        if self._A is not None:
            return self._A
        eye = torch.eye(math.prod(self.img_shape)).reshape(-1, *self.img_shape)
        return self(eye).reshape(-1, self.m).T

    # --- the real orthonormal Fourier transform (all channels): (..., C, H, W) <-> (..., n) -------
    def _index(self, device):
        if self._fidx is None or self._fidx[0].device != device:
            self._fidx = tuple(t.to(device) for t in real_fourier_index(*self.img_shape[1:]))
        return self._fidx

    def _fourier(self, x: Tensor) -> Tensor:
        u, v, part = self._index(x.device)
        z = torch.fft.rfft2(x, norm="ortho")[..., u, v]  # (..., C, H W)
        scale = torch.where((part == 0) & self._selfconj(u, v), 1.0, math.sqrt(2.0)).to(x.dtype)
        return (torch.where(part == 0, z.real, z.imag) * scale).flatten(-2)

    def _selfconj(self, u: Tensor, v: Tensor) -> Tensor:
        h, w = self.img_shape[1:]
        return ((2 * u) % h == 0) & ((2 * v) % w == 0)

    def _fourier_adjoint(self, c: Tensor) -> Tensor:
        C, h, w = self.img_shape
        u, v, part = self._index(c.device)
        c = c.reshape(*c.shape[:-1], C, h * w)
        sc = self._selfconj(u, v)
        # coefficient a of the basis vector sqrt(2) Re(e_f) adds a / sqrt(2) to Z[f] and Z[-f]
        re = torch.where(part == 0, c, torch.zeros_like(c)) * torch.where(sc, 1.0, 1 / math.sqrt(2.0)).to(c.dtype)
        im = torch.where(part == 1, c, torch.zeros_like(c)) / math.sqrt(2.0)
        f, g = u * w + v, ((-u) % h) * w + (-v) % w  # flat positions of each frequency and its conjugate
        other = (~sc).to(c.dtype)
        zero = torch.zeros(*c.shape[:-1], h * w, dtype=c.dtype, device=c.device)
        # index_add: the Re and Im entries of one frequency land on the same position
        sre = zero.index_add(-1, f, re).index_add(-1, g, re * other)
        sim = zero.index_add(-1, f, im).index_add(-1, g, -im * other)
        spec = torch.complex(sre, sim).reshape(*c.shape[:-1], h, w)
        return torch.fft.ifft2(spec, norm="ortho").real

    # --- the operator -------------------------------------------------------------------------
    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        self.check_input(tuple(x.shape[-3:]))
        if self._A is not None:
            y = x.flatten(-3) @ self._A.to(x.dtype).T
        else:
            y = self._fourier(x)[..., self._rows.to(x.device)]
        return y[..., None, None, :]

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        yv = y[..., 0, 0, :]
        if self._A is not None:
            return (yv @ self._A.to(y.dtype)).reshape(*yv.shape[:-1], *self.img_shape)
        full = torch.zeros(*yv.shape[:-1], math.prod(self.img_shape), dtype=y.dtype, device=y.device)
        full[..., self._rows.to(y.device)] = yv
        return self._fourier_adjoint(full).to(y.dtype)

    def pinv(self, y: Tensor) -> Tensor:
        """The minimum-norm least-squares image A^+ y: (..., 1, 1, m) -> (..., C, H, W), in float64."""
        if self._A is None:
            return self.A_adjoint(y)  # orthonormal rows: A^+ = A^T
        a = self._A.to(device=y.device, dtype=torch.float64)
        yv = y[..., 0, 0, :].to(torch.float64).reshape(-1, self.m).T  # (m, N)
        if self.m <= a.shape[1]:  # under-determined: x = A^T (A A^T)^-1 y
            x = a.T @ torch.linalg.solve(a @ a.T, yv)
        else:  # over-determined: least squares
            x = torch.linalg.lstsq(a, yv).solution
        return x.T.to(y.dtype).reshape(*y.shape[:-3], *self.img_shape)

    def config(self) -> dict:
        return {"name": self.name, "kind": self.kind, "m": self.m, "n": math.prod(self.img_shape),
                "img_shape": list(self.img_shape), "matrix_seed": self.matrix_seed, "noise_sigma": self.noise_sigma}
