"""Corruption operators f: clean image -> observation, on one base class.

Every operator is a differentiable, batched torch module mapping ``x`` of shape (..., C, H, W)
to the observation (..., C, h, w). Leading dims are free (images, Pyro particles, samples).
``mask`` says which output pixels are observed (True) and therefore enter the likelihood;
``None`` means all. Missing pixels are *not observed*: they are dropped from the likelihood,
never compared with a fill value.

A corruption with an unknown parameter (blind reconstruction, e.g. the width of a blur kernel)
owns a :class:`~brgm_pyro.models.latents.ScalarLatent` (:meth:`Corruption.latents`) and reads
its value from ``params`` in :meth:`Corruption.forward`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class Corruption(nn.Module):
    """Base class. Subclasses implement :meth:`apply` on (N, C, H, W) and :meth:`out_shape`."""

    name: str = "corruption"

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Observation shape (C, h, w) for a clean image of shape (C, H, W)."""
        return tuple(in_shape)  # type: ignore[return-value]

    @property
    def mask(self) -> Optional[Tensor]:
        """Bool tensor broadcastable to the observation, True = observed; None = all observed."""
        return None

    def apply(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, h, w)
        raise NotImplementedError

    def latents(self) -> list:
        """The scalar latents this operator owns (none by default)."""
        return []

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        """f(x): (..., C, H, W) -> (..., C, h, w); ``params`` holds the values of :meth:`latents`."""
        lead = x.shape[:-3]
        out = self.apply(x.reshape(-1, *x.shape[-3:]))
        return out.reshape(*lead, *out.shape[-3:])

    def check_input(self, in_shape: tuple[int, int, int]) -> None:
        """Raise BRGMError if this operator cannot act on images of ``in_shape``."""

    def config(self) -> dict:
        return {"name": self.name}
