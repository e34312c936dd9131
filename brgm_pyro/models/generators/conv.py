"""A small randomly initialised convolutional generator with a style-based layout.

It has the shape of a StyleGAN (a learned constant, one latent vector per layer modulating the
features, upsampling by 2 until the target resolution) but none of its cost, so that unit tests
and CPU examples run in milliseconds. Layer i uses ``w_i``; ``num_ws = 2 * log2(res/4) + 2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brgm_pyro.models.generators.base import Generator


class _StyledConv(nn.Module):
    def __init__(self, cin: int, cout: int, w_dim: int, up: bool) -> None:
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.affine = nn.Linear(w_dim, 2 * cout)  # per-channel scale and shift from w_i
        nn.init.zeros_(self.affine.weight)
        nn.init.zeros_(self.affine.bias)
        with torch.no_grad():
            self.affine.weight.normal_(0.0, 1.0 / math.sqrt(w_dim))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv(x)
        scale, shift = self.affine(w).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return F.leaky_relu(x * (1 + scale) + shift, 0.2)


class ConvGenerator(Generator):
    """A tiny style-based conv generator.

    Args:
        img_resolution: H = W, a power of two >= 4.
        img_channels: C.
        w_dim: d. z_dim: mapping input size.
        channels: feature channels of every layer.
        mapping_layers: depth of the z -> w MLP.
        seed: initialisation seed (weights are random; this generator is not trained).
    """

    def __init__(self, img_resolution: int = 16, img_channels: int = 3, w_dim: int = 16,
                 z_dim: int = 16, channels: int = 16, mapping_layers: int = 2, seed: int = 0) -> None:
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError("img_resolution must be a power of two >= 4")
        self._cfg = dict(img_resolution=img_resolution, img_channels=img_channels, w_dim=w_dim,
                         z_dim=z_dim, channels=channels, mapping_layers=mapping_layers, seed=seed)
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.w_dim, self.z_dim = w_dim, z_dim
        n_up = int(math.log2(img_resolution)) - 2
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.const = nn.Parameter(torch.randn(1, channels, 4, 4))
            layers = [_StyledConv(channels, channels, w_dim, up=False)]
            for _ in range(n_up):
                layers += [_StyledConv(channels, channels, w_dim, up=True),
                           _StyledConv(channels, channels, w_dim, up=False)]
            self.layers = nn.ModuleList(layers)
            self.to_rgb = nn.Conv2d(channels, img_channels, 1)
            mlp: list[nn.Module] = []
            for i in range(mapping_layers):
                mlp += [nn.Linear(z_dim if i == 0 else w_dim, w_dim), nn.LeakyReLU(0.2)]
            self.mapping_net = nn.Sequential(*mlp)
            # inside the seeded block too: drawn from the global RNG it made every process's
            # "seeded" generator different (dataset ranks, reruns)
            self.rgb_affine = nn.Linear(w_dim, img_channels)
        self.num_ws = len(self.layers) + 1  # one per styled conv, one for to_rgb's gain
        for p in self.parameters():
            p.requires_grad_(False)

    def synthesis(self, ws: Tensor) -> Tensor:
        x = self.const.expand(ws.shape[0], -1, -1, -1)
        for i, layer in enumerate(self.layers):
            x = layer(x, ws[:, i])
        rgb = self.to_rgb(x) * (1 + 0.1 * self.rgb_affine(ws[:, -1])).unsqueeze(-1).unsqueeze(-1)
        return torch.tanh(rgb)

    def mapping(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + 1e-8)
        return self.mapping_net(z)

    def config(self) -> dict:
        return dict(self._cfg)
