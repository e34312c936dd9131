"""Image-quality metrics on images in [0, 1]: PSNR, SSIM, MAE, RMSE, and LPIPS when a VGG16 is given.

Images are numpy arrays or torch tensors shaped (H, W), (H, W, C) with C in {1, 3} (channels
last, as :mod:`brgm_pyro.io` reads them), or torch/numpy (C, H, W) when ``channels_first=True``.
All metrics assume the data range is 1.

* PSNR = 10 log10(1 / MSE), capped at 100 dB (MSE <= 1e-10) so that it is always finite.
* SSIM follows Wang et al. (2004): an 11x11 Gaussian window with sigma 1.5, K1 = 0.01,
  K2 = 0.03, local statistics over the *valid* part of the image (no padding, as the authors'
  reference code), averaged over positions and then over channels. Images smaller than 11 pixels
  use the largest odd window that fits, with sigma scaled in proportion (1.5 * win / 11).
* MAE and RMSE are over all pixels and channels.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
PSNR_MAX_DB = 100.0


def _hwc(x, channels_first: bool = False) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    if a.ndim == 2:
        a = a[:, :, None]
    elif a.ndim == 3 and channels_first:
        a = a.transpose(1, 2, 0)
    elif a.ndim != 3:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C), got {a.shape}")
    return a


def _pair(x, y, channels_first: bool):
    a, b = _hwc(x, channels_first), _hwc(y, channels_first)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def mse(x, y, channels_first: bool = False) -> float:
    a, b = _pair(x, y, channels_first)
    return float(np.mean((a - b) ** 2))


def psnr(x, y, channels_first: bool = False) -> float:
    m = mse(x, y, channels_first)
    if m <= 10 ** (-PSNR_MAX_DB / 10):
        return PSNR_MAX_DB
    return float(10.0 * math.log10(1.0 / m))


def mae(x, y, channels_first: bool = False) -> float:
    a, b = _pair(x, y, channels_first)
    return float(np.mean(np.abs(a - b)))


def rmse(x, y, channels_first: bool = False) -> float:
    return math.sqrt(mse(x, y, channels_first))


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """1-D normalised Gaussian of odd length ``size``."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(r ** 2) / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim(x, y, channels_first: bool = False, window: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> float:
    """Mean structural similarity (see the module docstring for the exact definition)."""
    import torch
    import torch.nn.functional as F

    a, b = _pair(x, y, channels_first)
    h, w, _ = a.shape
    win = min(window, h, w)
    if win % 2 == 0:
        win -= 1
    if win < 1:
        raise ValueError("image too small for SSIM")
    sig = sigma * win / window
    g = torch.from_numpy(gaussian_window(win, sig))
    kx = g.view(1, 1, 1, win)
    ky = g.view(1, 1, win, 1)

    def filt(t):  # t: (C, H, W) -> valid separable Gaussian filter
        t = t.unsqueeze(1)  # (C, 1, H, W)
        return F.conv2d(F.conv2d(t, kx), ky).squeeze(1)

    ta = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
    tb = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1)))
    c1, c2 = (SSIM_K1 * 1.0) ** 2, (SSIM_K2 * 1.0) ** 2
    mu_a, mu_b = filt(ta), filt(tb)
    s_aa = filt(ta * ta) - mu_a ** 2
    s_bb = filt(tb * tb) - mu_b ** 2
    s_ab = filt(ta * tb) - mu_a * mu_b
    num = (2 * mu_a * mu_b + c1) * (2 * s_ab + c2)
    den = (mu_a ** 2 + mu_b ** 2 + c1) * (s_aa + s_bb + c2)
    smap = num / den
    return float(smap.mean(dim=(1, 2)).mean())


def image_metrics(x, truth, channels_first: bool = False) -> dict:
    """PSNR, SSIM, MAE and RMSE of ``x`` against ``truth`` (both in [0, 1])."""
    return {"psnr": psnr(x, truth, channels_first), "ssim": ssim(x, truth, channels_first),
            "mae": mae(x, truth, channels_first), "rmse": rmse(x, truth, channels_first)}


_LPIPS_NETS: dict = {}


def lpips(x, truth, vgg16, channels_first: bool = False) -> float:
    """LPIPS distance of ``x`` to ``truth`` (both in [0, 1]).

    ``vgg16`` is the path of a VGG16 file (NVIDIA's ``vgg16.pt`` or a torchvision-layout state
    dict; loaded once and cached) or an already loaded ``phi``. Uses the perceptual module's
    ``lpips_distance``: the squared distance of unit-normalised, LPIPS-weighted VGG16 features.
    """
    import torch

    from brgm_pyro.models.perceptual import load_vgg16_perceptual, lpips_distance

    if isinstance(vgg16, (str, bytes)) or hasattr(vgg16, "__fspath__"):
        key = str(vgg16)
        if key not in _LPIPS_NETS:
            _LPIPS_NETS[key] = load_vgg16_perceptual(key)
        phi = _LPIPS_NETS[key]
    else:
        phi = vgg16
    a, b = _pair(x, truth, channels_first)
    if a.shape[-1] == 1:
        a, b = np.repeat(a, 3, -1), np.repeat(b, 3, -1)
    ta = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float()[None] * 2 - 1
    tb = torch.from_numpy(np.ascontiguousarray(b.transpose(2, 0, 1))).float()[None] * 2 - 1
    return float(lpips_distance(ta, tb, phi).reshape(-1)[0])


def summarize(per_image: list[dict]) -> dict:
    """Mean of every numeric metric over images."""
    keys = [k for k in (per_image[0] if per_image else {}) if isinstance(per_image[0][k], (int, float))]
    return {k: float(np.mean([d[k] for d in per_image if d.get(k) is not None])) for k in keys}


__all__ = ["psnr", "ssim", "mae", "rmse", "mse", "image_metrics", "lpips", "summarize", "gaussian_window"]
