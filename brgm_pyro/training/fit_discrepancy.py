"""Fit the discrepancy scale tau of a generator from W+ inversions of clean images.

Each clean validation image x is inverted by MAP under the model x = G(w) (identity corruption,
the generator's prior, Gaussian pixel noise), and tau comes from the residuals x - G(w*) with the
degrees-of-freedom correction of :func:`~brgm_pyro.models.discrepancy.residual_scale`, and the
power spectrum of coloured e from the same residuals
(:func:`~brgm_pyro.models.discrepancy.residual_spectrum`; only with ``white=False``). The result
is written beside the weights as ``<weights>.discrepancy.json``, where ``--discrepancy auto``
finds it (:func:`~brgm_pyro.models.discrepancy.load_discrepancy`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError

DEFAULT_FIT_STEPS = 1000
DEFAULT_FIT_SIGMA = 0.02  # a small pixel noise: the inversion should fit as closely as G allows


def invert(G, images: Tensor, steps: int = DEFAULT_FIT_STEPS, seed: int = 0, batch: int = 16,
           progress: bool = False) -> Tensor:
    """MAP W+ inversions G(w*) of ``images`` (B, C, H, W) in [-1, 1]: (B, C, H, W)."""
    from brgm_pyro.inference import run_map
    from brgm_pyro.models.brgm import build_model
    from brgm_pyro.models.corruptions import Identity

    if tuple(images.shape[1:]) != tuple(G.image_shape):
        raise BRGMError(f"clean images must be {tuple(G.image_shape)} for this generator; got "
                        f"{tuple(images.shape[1:])}")
    model = build_model(G, Identity(), sigma_pixel=DEFAULT_FIT_SIGMA)
    out = []
    for s in range(0, images.shape[0], batch):
        res = run_map(model, images[s:s + batch].to(G.device()), steps=steps, seed=seed, progress=progress)
        if res.stopped:
            raise BRGMError(f"the inversion stopped early ({res.stopped}); nothing written")
        out.append(res.image.detach())
    return torch.cat(out)


def fit_discrepancy(G, images: Tensor, out: Optional[Path] = None, steps: int = DEFAULT_FIT_STEPS, seed: int = 0,
                    source: str = "", log: Callable[[str], None] = print, white: bool = True) -> dict:
    """Invert ``images``, estimate tau (and the residuals' spectrum unless ``white``), write ``out``
    (JSON, atomically) if given; returns the record."""
    from brgm_pyro.io import save_json
    from brgm_pyro.metrics import psnr
    from brgm_pyro.models.discrepancy import residual_scale, residual_spectrum

    t0 = time.perf_counter()
    recon = invert(G, images, steps=steps, seed=seed)
    resid = images.to(recon.device) - recon
    rec = residual_scale(resid, num_latents=int(torch.tensor(G.latent_shape).prod()))
    if not white:
        rec.update(residual_spectrum(resid))
    per_image = [psnr((recon[i] + 1) / 2, (images[i] + 1) / 2, channels_first=True) for i in range(len(images))]
    rec.update({"method": f"MAP W+ inversion, {steps} Adam steps, identity corruption, sigma_pixel "
                          f"{DEFAULT_FIT_SIGMA}, the generator's default prior", "steps": steps, "seed": seed,
                "images_source": source, "inversion_psnr_db_mean": sum(per_image) / len(per_image),
                "seconds": time.perf_counter() - t0, "units": "[-1, 1] image units"})
    colour = "white" if white else f"lag-1 correlation {rec['lag_correlations'][0]:.2f}"
    log(f"tau = {rec['tau']:.4f}, {colour} (residual RMS {rec['residual_rms']:.4f} over {rec['images']} images, "
        f"inversion PSNR {rec['inversion_psnr_db_mean']:.2f} dB, {rec['seconds']:.0f} s)")
    if out is not None:
        save_json(out, rec)
        log(f"wrote {out}")
    return rec


__all__ = ["fit_discrepancy", "invert", "DEFAULT_FIT_STEPS"]
