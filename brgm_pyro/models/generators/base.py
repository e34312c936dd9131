"""The generator interface every generator satisfies.

A generator G maps latents in W+ space, ``ws`` of shape ``(..., L, d)`` (L = ``num_ws``,
d = ``w_dim``), to images of shape ``(..., C, H, W)`` with values in [-1, 1]
(C = ``img_channels``, H = W = ``img_resolution``). Any number of leading batch dimensions
is accepted by :meth:`Generator.forward`, so Pyro's vectorised particles and plates can be
passed straight through; subclasses only implement :meth:`synthesis` on ``(B, L, d)``.

The mapping network ``z -> w`` (``(B, z_dim) -> (B, d)``) is used only to estimate the latent
statistics (mu, sigma) of the prior, see :mod:`brgm_pyro.models.generators.stats`.
"""

from __future__ import annotations

import abc

import torch
from torch import Tensor, nn


class Generator(nn.Module, abc.ABC):
    """Abstract generator.

    Attributes:
        num_ws: L, number of latent vectors in W+.
        w_dim: d, size of each latent vector.
        z_dim: size of the mapping network's input noise.
        img_channels: C (1 or 3).
        img_resolution: H = W, in pixels.
        linear: True when G(w) is affine in w (then Laplace approximations are exact).
    """

    linear: bool = False
    num_ws: int
    w_dim: int
    z_dim: int
    img_channels: int
    img_resolution: int

    @abc.abstractmethod
    def synthesis(self, ws: Tensor) -> Tensor:
        """Map ``ws`` (B, L, d) to images (B, C, H, W) in [-1, 1]."""

    @abc.abstractmethod
    def mapping(self, z: Tensor) -> Tensor:
        """Map ``z`` (B, z_dim) to latents ``w`` (B, d)."""

    def forward(self, ws: Tensor) -> Tensor:
        """Synthesis with arbitrary leading batch dims: (..., L, d) -> (..., C, H, W)."""
        if ws.shape[-2:] != (self.num_ws, self.w_dim):
            raise ValueError(
                f"expected latents of shape (..., {self.num_ws}, {self.w_dim}), got {tuple(ws.shape)}"
            )
        lead = ws.shape[:-2]
        img = self.synthesis(ws.reshape(-1, self.num_ws, self.w_dim))
        return img.reshape(*lead, *img.shape[1:])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.img_channels, self.img_resolution, self.img_resolution)

    @property
    def latent_shape(self) -> tuple[int, int]:
        return (self.num_ws, self.w_dim)

    def config(self) -> dict:
        """JSON-serialisable constructor arguments (used when saving weights)."""
        return {}

    def device(self) -> torch.device:  # noqa: D102 - convenience
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")
