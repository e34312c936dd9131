"""StyleGAN2 generator (config-e/f of StyleGAN2 / StyleGAN2-ADA), written for brgm-pyro.

One readable file: the mapping network ``z -> w`` and the synthesis network ``W+ -> image`` with
the formulas of NVIDIA's stylegan2-ada-pytorch (``training/networks.py``), so that the weights of
an NVIDIA network pickle (mapped by :mod:`brgm_pyro.models.generators.nvidia_pickle`) give the
same images. See ``docs/stylegan2.md`` for how each formula was checked.

Conventions (all NVIDIA's):

* Equalized learning rate. A fully connected layer stores ``weight ~ N(0, 1) / lr_multiplier``
  and uses ``weight * lr_multiplier / sqrt(in_features)`` and ``bias * lr_multiplier``; the
  mapping network uses ``lr_multiplier = 0.01``.
* ``lrelu`` is ``leaky_relu(x + b, 0.2) * sqrt(2)``, then clamped to ``+-conv_clamp`` when
  ``conv_clamp`` is set (NVIDIA's ``conv_clamp * gain`` with the residual gain 1 of the skip
  architecture); ToRGB output is clamped to ``+-conv_clamp`` as well.
* Modulated convolution: styles ``s = affine(w)`` (affine bias initialised to 1) scale the input
  channels, the output channels are demodulated by ``1 / sqrt(sum_{i,k} (W_oik s_i)^2 + 1e-8)``.
  ToRGB uses ``s * 1/sqrt(C_in)`` and no demodulation.
* Upsampling by 2 uses the [1,3,3,1] filter (outer product, normalised to sum 1, times 4):
  ``upsample2d`` for the skip images, a stride-2 transposed convolution followed by the same
  filter (padding 1) for the first convolution of each block.
* Noise: ``noise_const * noise_strength`` (mode ``'const'``, the default: fixed per generator,
  as BRGM needs), fresh ``N(0, 1) * noise_strength`` per call (``'random'``), or none (``'none'``).
* Architectures (NVIDIA's ``architecture``): ``'skip'`` (default, config-e/f):
  ``img = upsample2d(img) + torgb_r(x)`` at every resolution r; ``'orig'``: one ToRGB, at the last
  resolution; ``'resnet'``: one ToRGB at the last resolution, and each block r > 4 adds a residual
  ``skip(x) = sqrt(1/2) * upsample2d(conv1x1(x) / sqrt(C_in))`` to its second convolution run with
  gain ``sqrt(1/2)`` (activation gain ``sqrt(2) * sqrt(1/2) = 1``, clamp ``conv_clamp * sqrt(1/2)``).
* Conditional networks (``c_dim > 0``): the mapping network embeds a one-hot class label
  ``c`` (B, c_dim) with a dense layer, 2nd-moment normalises it, and concatenates it after the
  normalised z (NVIDIA's ``MappingNetwork``). ``G.class_index = K`` fixes the class used by
  :meth:`StyleGAN2Generator.mapping` when no ``c`` is passed.
* ``num_ws = 2 * log2(res) - 2``: block r uses ``ws[:, i : i + num_conv + num_torgb]`` and then
  advances ``i`` by ``num_conv`` only, so a block's ToRGB shares its latent with the next block's
  first convolution (NVIDIA's counting).

Images come out in float32, nominally in [-1, 1] but NOT clamped (NVIDIA's raw output, which is
what BRGM optimises through). Parameter names below the two sub-networks follow NVIDIA
(``b{res}.conv0|conv1|torgb``, ``fc{i}``), so checkpoints map one to one.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.base import Generator

NOISE_MODES = ("const", "random", "none")
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_SQRT2 = math.sqrt(2.0)


def setup_filter(taps=(1, 3, 3, 1)) -> Tensor:
    """The 2-D resampling filter: outer product of ``taps`` normalised to sum 1, shape (k, k)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def _lrelu(x: Tensor, gain: float, clamp: Optional[float]) -> Tensor:
    # NVIDIA's bias_act order: act, then gain, then clamp (bias is added by the caller).
    # In-place gain: leaky_relu's backward uses its input, not its output, so this is autograd-safe
    # and saves one full-size allocation per layer.
    x = F.leaky_relu(x, 0.2).mul_(gain)
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Equalized-lr dense layer: (..., in_features) -> (..., out_features).

    Stored weight ~ N(0, 1) / lr_multiplier, used as weight * lr_multiplier / sqrt(in_features);
    stored bias = bias_init, used as bias * lr_multiplier.
    """

    def __init__(self, in_features: int, out_features: int, activation: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"unknown activation {activation!r}")
        self.in_features, self.out_features = in_features, out_features
        self.activation = activation
        self.weight = nn.Parameter(
            torch.randn(out_features, in_features, generator=generator) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        x = F.linear(x, w, b)
        if self.activation == "lrelu":
            x = _lrelu(x, _SQRT2, None)
        return x


class MappingNetwork(nn.Module):
    """z (B, z_dim) [and class labels c (B, c_dim)] -> w (B, w_dim).

    2nd-moment normalisation of z; if ``c_dim > 0`` the label is embedded by a linear dense layer
    ``embed`` (c_dim -> embed_features, lr multiplier 1), normalised likewise and concatenated after z;
    then ``num_layers`` lrelu dense layers with learning-rate multiplier ``lr_multiplier``
    (widths ``layer_features`` between layers, ``w_dim`` out; NVIDIA's ``features_list``).
    """

    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 8, lr_multiplier: float = 0.01,
                 generator: Optional[torch.Generator] = None, c_dim: int = 0,
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.num_layers, self.c_dim = z_dim, w_dim, num_layers, c_dim
        embed = (w_dim if embed_features is None else embed_features) if c_dim > 0 else 0
        hidden = w_dim if layer_features is None else layer_features
        features = [z_dim + embed] + [hidden] * (num_layers - 1) + [w_dim]
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed, generator=generator)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(features[i], features[i + 1], "lrelu",
                                                        lr_multiplier, generator=generator))

    def forward(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        dtype = self.fc0.weight.dtype  # float32, as NVIDIA (float64 after .double())
        x = _normalize_2nd_moment(z.to(dtype))
        if self.c_dim > 0:
            if c is None or c.shape[-1] != self.c_dim:
                raise BRGMError(f"this mapping network is conditional (c_dim={self.c_dim}): "
                                f"pass class labels c of shape (B, {self.c_dim})")
            y = _normalize_2nd_moment(self.embed(c.to(dtype)))
            x = torch.cat([x, y.expand(x.shape[0], -1)], dim=1)
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


def _normalize_2nd_moment(x: Tensor) -> Tensor:
    """``x * rsqrt(mean(x^2, dim=1) + 1e-8)`` on (B, F)."""
    return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution with demodulation, optional 2x upsampling, noise, bias, lrelu.

    (B, C_in, r/up, r/up) and w (B, w_dim) -> (B, C_out, r, r).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 up: int = 1, conv_clamp: Optional[float] = None,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0, generator=generator)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3, generator=generator))
        self.register_buffer("noise_const", torch.randn(resolution, resolution, generator=generator))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str, gain: float = 1.0) -> Tensor:
        """``gain`` scales the activation gain and the clamp (NVIDIA's residual gain: sqrt(1/2) for
        the second convolution of a resnet block, else 1)."""
        B = x.shape[0]
        styles = self.affine(w)  # (B, C_in), in the parameters' dtype (float32)
        weight = self.weight
        if x.dtype in (torch.float16, torch.bfloat16):
            # NVIDIA's pre-normalisation against fp16 overflow; demodulation cancels it exactly.
            weight = weight * (1 / math.sqrt(weight[0].numel())
                               / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
            styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
        # Demodulation: sum_{i,k} (W_oik s_i)^2 = sum_i s_i^2 sum_k W_oik^2 (no (B,O,I,k,k) tensor).
        dcoefs = (styles.square() @ weight.square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()  # (B, C_out)
        # Non-fused modulation (scale activations before and after one shared convolution):
        # identical to NVIDIA's fused grouped convolution, and faster for batches on CPU.
        x = x * styles.to(x.dtype).reshape(B, -1, 1, 1)
        wt = weight.to(x.dtype)
        if self.up == 1:
            x = F.conv2d(x, wt, padding=1)
        else:
            # Transposed stride-2 convolution (no weight flip, as NVIDIA's flip_weight=False path),
            # (H -> 2H+1), then the [1,3,3,1] low-pass with padding 1 and gain 4 (2H+1 -> 2H).
            x = F.conv_transpose2d(x, wt.transpose(0, 1), stride=2)
            x = _blur_pad1(x)
        # The additions below are in place on the fresh product (mul saves its inputs, not its
        # output, for backward): fewer full-size temporaries, which dominate CPU time at 1024 px.
        x = x * dcoefs.to(x.dtype).reshape(B, -1, 1, 1)
        if noise_mode == "const":
            x.add_((self.noise_const * self.noise_strength).to(x.dtype))
        elif noise_mode == "random":
            noise = torch.randn(B, 1, self.resolution, self.resolution, device=x.device, dtype=x.dtype)
            x.add_(noise * self.noise_strength.to(x.dtype))
        x.add_(self.bias.to(x.dtype).reshape(1, -1, 1, 1))
        # NVIDIA clamps at conv_clamp * gain where gain is the block's residual gain (1 in the skip
        # architecture), not the activation gain sqrt(2): so the clamp is +-conv_clamp there.
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return _lrelu(x, _SQRT2 * gain, clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution without demodulation, linear: (B, C_in, r, r) -> (B, C_img, r, r)."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int,
                 conv_clamp: Optional[float] = None, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0, generator=generator)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1, generator=generator))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)  # 1 / sqrt(C_in * k^2), k = 1

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w) * self.weight_gain
        x = x * styles.to(x.dtype).reshape(x.shape[0], -1, 1, 1)
        x = F.conv2d(x, self.weight.to(x.dtype), self.bias.to(x.dtype))
        if self.conv_clamp is not None:
            x = x.clamp(-self.conv_clamp, self.conv_clamp)
        return x


# The 2-D filter outer([1,3,3,1], [1,3,3,1]) / 64 * 4 (gain 4 = up^2) is separable: per axis the taps
# are [1,3,3,1] / 4. We apply it per axis with shifted slices: depthwise convolutions with one channel
# per group are very slow on CPU (forward and, worse, backward), these element-wise ops are not.
_T0, _T1 = 0.25, 0.75  # taps [t0, t1, t1, t0]; symmetric, so NVIDIA's filter flip does not matter


def _fir4(x: Tensor, dim: int) -> Tensor:
    n = x.shape[dim] - 3
    outer = (x.narrow(dim, 0, n) + x.narrow(dim, 3, n)).mul_(_T0)  # in place on fresh sums: 2 allocations
    return outer.add_(x.narrow(dim, 1, n) + x.narrow(dim, 2, n), alpha=_T1)


def _blur_pad1(x: Tensor) -> Tensor:
    """NVIDIA's upfirdn2d(x, f, padding=1, gain=4) for the [1,3,3,1] filter: (B,C,h,w) -> (B,C,h-1,w-1)."""
    x = F.pad(x, [1, 1, 1, 1])
    return _fir4(_fir4(x, 3), 2)


def _up_axis(x: Tensor, dim: int) -> Tensor:
    # Zero insertion + padding (2, 1) + taps [1,3,3,1]/4, in polyphase form:
    # out[2i] = x[i-1]/4 + 3x[i]/4, out[2i+1] = 3x[i]/4 + x[i+1]/4 (zeros outside).
    n = x.shape[dim]
    pad = [0, 0] * (x.dim() - 1 - dim) + [1, 1]
    xp = F.pad(x, pad)
    mid = xp.narrow(dim, 1, n) * _T1
    even = xp.narrow(dim, 0, n) * _T0 + mid
    odd = xp.narrow(dim, 2, n) * _T0 + mid
    y = torch.stack([even, odd], dim=dim + 1)
    return y.reshape(*x.shape[:dim], 2 * n, *x.shape[dim + 1:])


def upsample2d(x: Tensor) -> Tensor:
    """NVIDIA's ``upfirdn2d.upsample2d`` with the [1,3,3,1] filter: (B, C, H, W) -> (B, C, 2H, 2W)."""
    return _up_axis(_up_axis(x, 3), 2)


ARCHITECTURES = ("skip", "orig", "resnet")
_SQRT_HALF = math.sqrt(0.5)


class SkipLayer(nn.Module):
    """The resnet shortcut: 1x1 convolution without bias, 2x upsampling, gain sqrt(1/2), no clamp.

    (B, C_in, r/2, r/2) -> (B, C_out, r, r). NVIDIA's ``Conv2dLayer(kernel_size=1, bias=False, up=2)``
    called with ``gain=sqrt(0.5)``: weight used as ``weight / sqrt(C_in)``; a 1x1 convolution commutes
    with the (linear, per-channel) upsampling, so we convolve first, at the lower resolution.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1, generator=generator))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: Tensor) -> Tensor:
        w = self.weight.to(x.dtype) * (self.weight_gain * _SQRT_HALF)
        return upsample2d(F.conv2d(x, w))


class SynthesisBlock(nn.Module):
    """One resolution r: [const | conv0 (up)] -> conv1 [+ skip] -> [torgb]; returns (x, img).

    ``torgb`` exists in every block of the skip architecture and only in the last block otherwise;
    ``skip`` (resnet) exists in every block but the first.
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int, conv_clamp: Optional[float] = None, use_fp16: bool = False,
                 generator: Optional[torch.Generator] = None, architecture: str = "skip",
                 is_last: bool = True) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        self.architecture = architecture
        self.num_conv, self.num_torgb = 0, 0
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution, generator=generator))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp, generator=generator)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp, generator=generator)
        self.num_conv += 1
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp,
                                    generator=generator)
            self.num_torgb += 1
        if in_channels != 0 and architecture == "resnet":
            self.skip = SkipLayer(in_channels, out_channels, generator=generator)

    def forward(self, x: Optional[Tensor], img: Optional[Tensor], ws: Tensor, noise_mode: str,
                dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
        """x (B, C_in, r/2, r/2) or None, img (B, C_img, r/2, r/2) or None, ws (B, n, w_dim)."""
        if self.in_channels == 0:
            x = self.const.to(dtype).unsqueeze(0).expand(ws.shape[0], -1, -1, -1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        elif self.architecture == "resnet":
            x = x.to(dtype)
            y = self.skip(x)
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = y + self.conv1(x, ws[:, 1], noise_mode, gain=_SQRT_HALF)
        else:
            x = self.conv0(x.to(dtype), ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        if img is not None:
            img = upsample2d(img)
        if self.num_torgb:
            y = self.torgb(x, ws[:, self.num_conv]).to(ws.dtype)
            img = y if img is None else img + y
        return x, img


class SynthesisNetwork(nn.Module):
    """W+ (B, num_ws, w_dim) -> image (B, img_channels, R, R).

    Channels at resolution r: ``min(channel_base // r, channel_max)``.
    """

    def __init__(self, w_dim: int, img_resolution: int, img_channels: int,
                 channel_base: int = 32768, channel_max: int = 512, num_fp16_res: int = 0,
                 conv_clamp: Optional[float] = None, generator: Optional[torch.Generator] = None,
                 architecture: str = "skip") -> None:
        super().__init__()
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2 ** i for i in range(2, log2 + 1)]
        channels = {r: min(channel_base // r, channel_max) for r in self.block_resolutions}
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.num_ws = 0
        for r in self.block_resolutions:
            block = SynthesisBlock(channels[r // 2] if r > 4 else 0, channels[r], w_dim, r, img_channels,
                                   conv_clamp=conv_clamp, use_fp16=r >= fp16_resolution,
                                   generator=generator, architecture=architecture,
                                   is_last=r == img_resolution)
            self.num_ws += block.num_conv
            setattr(self, f"b{r}", block)
        self.num_ws += 1  # the last block's ToRGB has its own latent
        self.checkpoint = False

    def forward(self, ws: Tensor, noise_mode: str = "const",
                half_dtype: Optional[torch.dtype] = None) -> Tensor:
        """``self.checkpoint`` (with gradients enabled): activation checkpointing per block. Only each
        block's inputs are kept for backward, and the block is run again during backward, one block at a
        time: the memory of one image drops from all blocks' activations to the largest block's (plus
        the blocks' inputs), for about one more forward pass. Gradients are the same (tested); the random
        noise mode replays its random numbers (``preserve_rng_state``)."""
        base = self.b4.const.dtype  # float32 (float64 after .double(), used by the tests)
        ws = ws.to(base)
        x = img = None
        i = 0
        ckpt = self.checkpoint and torch.is_grad_enabled()
        for r in self.block_resolutions:
            block = getattr(self, f"b{r}")
            n = block.num_conv + block.num_torgb
            dtype = half_dtype if (half_dtype is not None and block.use_fp16) else base
            if ckpt:
                x, img = torch.utils.checkpoint.checkpoint(block, x, img, ws[:, i:i + n], noise_mode, dtype,
                                                           use_reentrant=False)
            else:
                x, img = block(x, img, ws[:, i:i + n], noise_mode, dtype)
            i += block.num_conv
        return img


def _check_sizes(z_dim: int, w_dim: int, img_resolution: int, img_channels: int, mapping_layers: int,
                 channel_base: int, channel_max: int, c_dim: int, architecture: str,
                 embed_features: Optional[int], layer_features: Optional[int]) -> None:
    """One-line BRGMError for a configuration StyleGAN2Generator cannot build."""
    if img_resolution < 4 or img_resolution & (img_resolution - 1):
        raise BRGMError(f"StyleGAN2 img_resolution must be a power of two >= 4, got {img_resolution}")
    if min(z_dim, w_dim, img_channels, mapping_layers, channel_base, channel_max) < 1:
        raise BRGMError("StyleGAN2 sizes (z_dim, w_dim, img_channels, mapping_layers, "
                        "channel_base, channel_max) must all be >= 1")
    if channel_base // img_resolution < 1:
        raise BRGMError(f"channel_base {channel_base} gives 0 channels at {img_resolution}px; "
                        f"use channel_base >= {img_resolution}")
    if c_dim < 0 or min(embed_features or 1, layer_features or 1) < 1:
        raise BRGMError("StyleGAN2 c_dim must be >= 0 and embed_features/layer_features >= 1 (or None)")
    if architecture not in ARCHITECTURES:
        raise BRGMError(f"unknown StyleGAN2 architecture {architecture!r}; use one of {', '.join(ARCHITECTURES)}")


class StyleGAN2Generator(Generator):
    """StyleGAN2 satisfying the :class:`Generator` interface.

    Args (NVIDIA's names and defaults):
        z_dim: mapping input size. w_dim: latent size d.
        img_resolution: output H = W, a power of two in 4..1024 (larger works, untested).
        img_channels: 1 or 3 (any positive number works).
        mapping_layers: depth of the mapping MLP (8).
        channel_base, channel_max: channels at resolution r are min(channel_base // r, channel_max).
        conv_clamp: clamp of every conv output (NVIDIA's trained models use 256; None = off).
        num_fp16_res: number of highest resolutions that run in reduced precision on CUDA
            (only when ``precision`` is 'fp16' or 'bf16'; always fp32 on CPU).
        noise_mode: 'const' (stored noise, fixed), 'random' (fresh per call) or 'none'.
        lr_multiplier: learning-rate multiplier of the mapping network (0.01).
        precision: 'fp32' (default), 'fp16' or 'bf16'.
        seed: initialisation seed of the random weights (None: torch's global RNG).
        c_dim: number of classes of a conditional network (0: unconditional).
        architecture: 'skip' (default), 'orig' or 'resnet' (see the module docstring).
        embed_features: label embedding width of a conditional mapping network (None: w_dim).
        layer_features: width of the hidden mapping layers (None: w_dim).

    Attributes: ``mapping_network``, ``synthesis_network``, buffer ``w_avg`` (w_dim,) (the
    running mean of w that NVIDIA keeps; update it in training with :meth:`update_w_avg`),
    ``class_index`` (conditional networks: the class :meth:`mapping` uses when no ``c`` is given).
    """

    def __init__(self, z_dim: int = 512, w_dim: int = 512, img_resolution: int = 1024,
                 img_channels: int = 3, mapping_layers: int = 8, channel_base: int = 32768,
                 channel_max: int = 512, conv_clamp: Optional[float] = None, num_fp16_res: int = 0,
                 noise_mode: str = "const", lr_multiplier: float = 0.01, precision: str = "fp32",
                 seed: Optional[int] = 0, c_dim: int = 0, architecture: str = "skip",
                 embed_features: Optional[int] = None, layer_features: Optional[int] = None) -> None:
        super().__init__()
        _check_sizes(z_dim, w_dim, img_resolution, img_channels, mapping_layers, channel_base,
                     channel_max, c_dim, architecture, embed_features, layer_features)
        self.z_dim, self.w_dim, self.c_dim = z_dim, w_dim, c_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self._cfg = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=img_resolution,
                         img_channels=img_channels, mapping_layers=mapping_layers,
                         channel_base=channel_base, channel_max=channel_max,
                         conv_clamp=None if conv_clamp is None else float(conv_clamp),
                         num_fp16_res=num_fp16_res, lr_multiplier=lr_multiplier, seed=seed)
        # Only non-default new settings are recorded, so configs of existing generators are unchanged.
        extra = dict(c_dim=c_dim, architecture=architecture, embed_features=embed_features,
                     layer_features=layer_features)
        defaults = dict(c_dim=0, architecture="skip", embed_features=None, layer_features=None)
        self._cfg.update({k: v for k, v in extra.items() if v != defaults[k]})
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.mapping_network = MappingNetwork(z_dim, w_dim, mapping_layers, lr_multiplier, generator=gen,
                                              c_dim=c_dim, embed_features=embed_features,
                                              layer_features=layer_features)
        self.synthesis_network = SynthesisNetwork(w_dim, img_resolution, img_channels, channel_base,
                                                  channel_max, num_fp16_res, conv_clamp, generator=gen,
                                                  architecture=architecture)
        self.num_ws = self.synthesis_network.num_ws
        self.register_buffer("w_avg", torch.zeros(w_dim))
        self.noise_mode = noise_mode
        self.precision = precision
        self._class_index: Optional[int] = None

    # -- settings ---------------------------------------------------------------------------
    @property
    def noise_mode(self) -> str:
        return self._noise_mode

    @noise_mode.setter
    def noise_mode(self, mode: str) -> None:
        if mode not in NOISE_MODES:
            raise BRGMError(f"unknown noise_mode {mode!r}; use one of {', '.join(NOISE_MODES)}")
        self._noise_mode = mode

    @property
    def precision(self) -> str:
        return self._precision

    @precision.setter
    def precision(self, p: str) -> None:
        if p not in PRECISIONS:
            raise BRGMError(f"unknown precision {p!r}; use one of {', '.join(PRECISIONS)}")
        self._precision = p

    @property
    def checkpoint(self) -> bool:
        """Activation checkpointing per synthesis block when gradients are taken (default False; the
        memory budget turns it on when one image's backward does not fit, :mod:`brgm_pyro.memory`)."""
        return bool(self.synthesis_network.checkpoint)

    @checkpoint.setter
    def checkpoint(self, on: bool) -> None:
        self.synthesis_network.checkpoint = bool(on)

    @property
    def class_index(self) -> Optional[int]:
        """The class (0..c_dim-1) that :meth:`mapping` conditions on; None until chosen."""
        return self._class_index

    @class_index.setter
    def class_index(self, k: Optional[int]) -> None:
        if k is None:
            self._class_index = None
            return
        if self.c_dim == 0:
            raise BRGMError(f"a class ({k}) was given, but this generator is unconditional (c_dim=0)")
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.c_dim:
            raise BRGMError(f"class {k!r} is out of range: this generator has {self.c_dim} classes, "
                            f"give 0..{self.c_dim - 1}")
        self._class_index = k

    # -- interface ----------------------------------------------------------------------------
    def synthesis(self, ws: Tensor) -> Tensor:
        """ws (B, num_ws, w_dim) -> images (B, img_channels, R, R), float32, nominal [-1, 1]."""
        half = None
        if self._precision != "fp32" and ws.device.type == "cuda":
            half = PRECISIONS[self._precision]
        return self.synthesis_network(ws, self._noise_mode, half)

    def mapping(self, z: Tensor, c: Optional[Tensor] = None) -> Tensor:
        """z (B, z_dim) [, c (B, c_dim) or (c_dim,) labels] -> w (B, w_dim) (no truncation, no
        broadcast to W+). A conditional generator uses the one-hot label of ``class_index``
        when ``c`` is not given."""
        if self.c_dim > 0 and c is None:
            if self._class_index is None:
                raise BRGMError(f"this generator is conditional ({self.c_dim} classes): choose a class "
                                f"(--class K, load_generator(..., class_index=K) or G.class_index = K)")
            c = F.one_hot(torch.tensor(self._class_index), self.c_dim).to(z.device, torch.float32)
        if c is not None and c.dim() == 1:
            c = c.unsqueeze(0)
        return self.mapping_network(z, c)

    @torch.no_grad()
    def update_w_avg(self, w: Tensor, beta: float = 0.995) -> None:
        """NVIDIA's training update ``w_avg <- lerp(mean(w), w_avg, beta)``; w (B, w_dim)."""
        self.w_avg.copy_(w.detach().float().mean(0).lerp(self.w_avg, beta))

    def config(self) -> dict:
        cfg = dict(self._cfg)
        cfg["noise_mode"] = self._noise_mode
        cfg["precision"] = self._precision
        return cfg

    def extra_repr(self) -> str:
        c = self._cfg
        extra = "".join(f", {k}={c[k]!r}" for k in ("architecture", "c_dim") if k in c)
        return (f"res={c['img_resolution']}, channels={c['img_channels']}, w_dim={c['w_dim']}, "
                f"num_ws={self.num_ws}, noise_mode={self._noise_mode!r}{extra}")
def check_state_dict(state: "dict[str, Tensor]", G: "StyleGAN2Generator") -> None:
    """Error naming unknown, missing or mis-shaped tensors of ``state`` (our names) for ``G``."""
    expected = G.state_dict()
    unknown = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown tensors {_few(unknown)}")
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        raise BRGMError("the weights do not match a StyleGAN2 of this configuration: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise BRGMError(f"tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")


def _few(names, n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


