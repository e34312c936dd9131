"""In-painting corruption: an arbitrary mask of observed pixels."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption


class Inpainting(Corruption):
    """f(x) = x on observed pixels; missing pixels are not observed.

    Args:
        mask: (H, W), (1|C, H, W) or (B, 1|C, H, W) array, nonzero/True = observed. A batch of
            masks (one per image) is allowed.

    ``forward`` returns ``x * mask`` (missing pixels set to 0, i.e. mid-grey on [-1, 1]) only so that
    images can be shown and fed to a perceptual network; the pixel likelihood uses ``mask`` to drop
    missing pixels entirely.
    """

    name = "inpaint"
    linear = True
    pixelwise = True

    def __init__(self, mask) -> None:
        super().__init__()
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
        if m.ndim == 2:
            m = m[None]
        if m.ndim not in (3, 4):
            raise BRGMError(f"mask must be (H, W), (C, H, W) or (B, C, H, W); got shape {tuple(m.shape)}")
        m = m != 0
        if bool(m.all()):
            raise BRGMError("mask has no missing pixel: nothing to in-paint (black = missing, white = observed)")
        if not bool(m.any()):
            raise BRGMError("mask has no observed pixel: every pixel is missing (white = observed)")
        self.register_buffer("_mask", m, persistent=False)

    @property
    def mask(self) -> Optional[Tensor]:
        return self._mask

    def check_input(self, in_shape) -> None:
        c, h, w = in_shape
        mh, mw = self._mask.shape[-2:]
        mc = self._mask.shape[-3]
        if (mh, mw) != (h, w) or mc not in (1, c):
            raise BRGMError(f"mask is {mw}x{mh} with {mc} channel(s) but images are {w}x{h} with {c}; "
                            f"give a {w}x{h} mask")

    def in_shape(self, obs_shape):
        return tuple(obs_shape)

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        return y * self._mask.to(y.dtype)  # a diagonal 0/1 operator is its own transpose

    def gram_diagonal(self, in_shape, params=None, dtype=torch.float32, device=None) -> Tensor:
        return torch.ones(tuple(in_shape), dtype=dtype, device=device)  # 1 on observed pixels (mask drops the rest)

    def apply(self, x: Tensor) -> Tensor:
        return x * self._mask.to(x.dtype)

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        # broadcast directly: a batch of masks lines up with the images dimension
        self.check_input(tuple(x.shape[-3:]))
        return x * self._mask.to(x.dtype)

    def config(self) -> dict:
        return {"name": self.name, "observed_fraction": float(self._mask.float().mean())}


class Identity(Corruption):
    """f(x) = x: plain inversion (all pixels observed)."""

    name = "none"
    linear = True
    pixelwise = True

    def in_shape(self, obs_shape):
        return tuple(obs_shape)

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        return y

    def gram_diagonal(self, in_shape, params=None, dtype=torch.float32, device=None) -> Tensor:
        return torch.ones(tuple(in_shape), dtype=dtype, device=device)

    def apply(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        return x
