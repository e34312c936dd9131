"""Separable resampling kernels as explicit 1-D down-sampling matrices.

For an integer factor s the output pixel j covers input pixels [j s, (j+1) s); its centre is at
input coordinate ``c_j = j s + (s - 1) / 2``. A kernel k(t) (t in input pixels) gives the weight
of input pixel i as ``k(i - c_j)``. Weights are normalised over the taps that fall inside the
image, which is what Pillow does at the borders of an anti-aliased reduce, so that our bicubic
matches ``Image.resize(..., BICUBIC)``.

Building the matrix once (h x H) makes the operator exact, cheap (two small matmuls) and easy to
check for linearity; it also gives the transpose for free.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor


def box(t: Tensor, s: int) -> Tensor:
    """Box (block mean) of width s."""
    return ((t >= -s / 2) & (t < s / 2)).to(t.dtype)


def cubic(x: Tensor, a: float = -0.5) -> Tensor:
    """Keys' cubic convolution kernel with parameter a (-0.5 as in Pillow)."""
    x = x.abs()
    x2, x3 = x * x, x * x * x
    near = (a + 2) * x3 - (a + 3) * x2 + 1
    far = a * x3 - 5 * a * x2 + 8 * a * x - 4 * a
    return torch.where(x <= 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def bicubic_aa(t: Tensor, s: int) -> Tensor:
    """Anti-aliased bicubic: the cubic kernel stretched by the factor (support 2 s)."""
    return cubic(t / s)


def make_gaussian(sigma: float) -> Callable[[Tensor, int], Tensor]:
    """Gaussian of standard deviation ``sigma`` input pixels, truncated at 4 sigma."""

    def gauss(t: Tensor, s: int) -> Tensor:
        return torch.exp(-0.5 * (t / sigma) ** 2) * (t.abs() <= 4 * sigma)

    return gauss


def downsample_matrix(size: int, factor: int, kernel: Callable[[Tensor, int], Tensor]) -> Tensor:
    """The (size // factor, size) matrix of a separable down-sampling by ``factor``, float64."""
    out = size // factor
    i = torch.arange(size, dtype=torch.float64)
    c = torch.arange(out, dtype=torch.float64) * factor + (factor - 1) / 2
    w = kernel(i[None, :] - c[:, None], factor)
    norm = w.sum(1, keepdim=True)
    if (norm <= 0).any():
        raise ValueError("kernel has no weight inside the image for some output pixel")
    return w / norm


KERNELS: dict[str, Callable[[Tensor, int], Tensor]] = {"box": box, "bicubic": bicubic_aa}


def default_gauss_sigma(factor: int) -> float:
    """A Gaussian width that suppresses aliasing at factor s: sigma = s / 2 input pixels."""
    return factor / 2.0


__all__ = ["box", "cubic", "bicubic_aa", "make_gaussian", "downsample_matrix", "KERNELS",
           "default_gauss_sigma", "math"]
