"""Colorization: the observation is the grayscale (luma) image of the clean colour image.

    y = sum_c w_c x_c,    x: (..., C, H, W) -> y: (..., 1, H, W)

with Rec. 601 luma weights by default, w = (0.299, 0.587, 0.114), as Pillow's ``convert("L")``
and deepinv's ``Decolorize`` use (deepinv rounds them to 0.2989, 0.5870, 0.1140, which sum to
0.9999; ours sum to exactly 1). Because the weights sum to 1, the formula is the same on [0, 1]
and on [-1, 1] images (it commutes with the affine map between them), and a gray image (all
channels equal) is mapped to itself. ``weights="rec709"`` gives (0.2126, 0.7152, 0.0722).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption

LUMA_WEIGHTS = {"rec601": (0.299, 0.587, 0.114), "rec709": (0.2126, 0.7152, 0.0722)}


class Colorization(Corruption):
    """f(x) = the luma of x, one channel (the task: colourise a grayscale observation).

    Args:
        weights: ``"rec601"`` (default), ``"rec709"``, or C non-negative numbers summing to 1
            (one per channel of the clean image; C = 3 for RGB).

    Linear; the adjoint spreads a gray value back over the channels with the same weights.
    """

    name = "colorize"
    linear = True
    pixelwise = True
    cli_task = "brgm_pyro.pipeline.corruption_tasks:ColorizeTask"  # brgm reconstruct --task colorize

    def __init__(self, weights: Union[str, Sequence[float]] = "rec601") -> None:
        super().__init__()
        if isinstance(weights, str):
            if weights not in LUMA_WEIGHTS:
                raise BRGMError(f"unknown luma weights {weights!r}; use {', '.join(LUMA_WEIGHTS)} or C numbers")
            self.weights_name = weights
            w = torch.tensor(LUMA_WEIGHTS[weights], dtype=torch.float64)
        else:
            self.weights_name = "custom"
            w = torch.as_tensor(list(weights), dtype=torch.float64)
        if w.ndim != 1 or w.numel() < 1 or not torch.isfinite(w).all() or (w < 0).any():
            raise BRGMError("luma weights must be a list of non-negative numbers, one per channel")
        if abs(float(w.sum()) - 1.0) > 1e-6:
            raise BRGMError(f"luma weights must sum to 1 (a gray image must stay gray); they sum to "
                            f"{float(w.sum()):.6g}")
        self.register_buffer("_w", w.float(), persistent=False)

    @property
    def weights(self) -> Tensor:
        """(C,) luma weights."""
        return self._w

    def out_shape(self, in_shape):
        _, h, w = in_shape
        return (1, h, w)

    def in_shape(self, obs_shape):
        _, h, w = obs_shape
        return (self._w.numel(), h, w)

    def check_input(self, in_shape) -> None:
        if in_shape[0] != self._w.numel():
            raise BRGMError(f"colorization with {self._w.numel()} luma weights needs images with "
                            f"{self._w.numel()} channels; these have {in_shape[0]}")

    def apply(self, x: Tensor) -> Tensor:
        self.check_input(tuple(x.shape[-3:]))
        w = self._w.to(device=x.device, dtype=x.dtype)
        return torch.einsum("c,...chw->...hw", w, x)[..., None, :, :]

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        return self.apply(x)  # einsum broadcasts over any leading dims

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        w = self._w.to(device=y.device, dtype=y.dtype)
        return y * w[:, None, None]

    def config(self) -> dict:
        return {"name": self.name, "weights": self.weights_name, "luma_weights": self._w.tolist()}
