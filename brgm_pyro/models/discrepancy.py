r"""What the generator cannot draw: a discrepancy term on the clean image.

The BRGM model says the clean image is exactly :math:`G(w)`. A real face is not: W+ inversion of
clean held-out faces with the bundled generator stops at ~28 dB, a residual no posterior over w
can express, so intervals built from draws of :math:`G(w)` alone are too narrow wherever the data
pin w down. The discrepancy model (Kennedy & O'Hagan's model inadequacy term, on pixels):

.. math::

    x = G(w) + e, \qquad e \sim N(0, \tau^2 I), \qquad y = A x + n, \quad n \sim N(0, \sigma^2 I)

with :math:`\tau` a property of the generator (its inversion residual on validation images,
:func:`fit_discrepancy`), not of the image. Integrating e out is exact for a linear corruption A:

.. math::

    y \mid w \sim N\big(A G(w),\ \sigma^2 I + \tau^2 A A^\top\big),

which the Gaussian pixel likelihood uses with :math:`A A^\top` replaced by its diagonal
(:meth:`Corruption.gram_diagonal`): exact for masks, identity/denoising, block-mean
down-sampling and colorization (their :math:`A A^\top` is diagonal), an approximation that drops
the correlation between neighbouring observations for overlapping kernels (bicubic, blur) and for
compressed sensing. The predictive image is :math:`G(w) + e` with e drawn from
:math:`p(e \mid w, y)` by Matheron's rule (exact when the diagonal is):

.. math::

    e = e_0 + \tau^2 A^\top S^{-1} \big(y - A G(w) - A e_0 - n_0\big), \quad
    e_0 \sim N(0, \tau^2 I),\ n_0 \sim N(0, \sigma^2 I),\ S = \sigma^2 + \tau^2 \operatorname{diag}(A A^\top)

so a missing pixel gets :math:`e \sim N(0, \tau^2)` and an observed one is pulled towards the data.
Assumptions (docs/discrepancy.md): e is white (independent per pixel and channel, one scale),
Gaussian, and independent of w; the perceptual likelihood ignores it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError


class Discrepancy:
    """x = G(w) + e with e ~ N(0, tau^2 I) per pixel, in [-1, 1] image units.

    Args:
        tau: the discrepancy scale (> 0), [-1, 1] units.
        source: where tau came from (stored in the run's config), e.g. the fit's summary.
    """

    def __init__(self, tau: float, source: Optional[dict] = None) -> None:
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise BRGMError(f"the discrepancy scale tau must be a positive number, got {tau!r}")
        self.tau = float(tau)
        self.source = dict(source or {})
        self.corruption = None
        self.image_shape: Optional[tuple] = None

    def bind(self, corruption, image_shape: tuple) -> "Discrepancy":
        """A copy attached to a model's corruption (whose diag(A A^T) enters the likelihood); the
        original stays unbound, so one Discrepancy can be given to several models."""
        if not corruption.linear:
            raise BRGMError(f"the discrepancy term needs a linear corruption; {corruption.name!r} is not")
        bound = Discrepancy(self.tau, self.source)
        bound.corruption, bound.image_shape = corruption, tuple(image_shape)
        # an operator that cannot state diag(A A^T) says so now, not at the first step of inference
        probe = {lat.name: torch.as_tensor(float(lat.init)) for lat in corruption.latents()} or None
        corruption.gram_diagonal(bound.image_shape, probe)
        return bound

    def obs_variance(self, params: Optional[dict], like: Tensor) -> Tensor:
        """tau^2 diag(A A^T): the variance e adds to each observation, (..., C, h, w) like ``like``."""
        if self.corruption is None:
            raise BRGMError("the discrepancy term is not attached to a model (build it with build_model)")
        p = params if self.corruption.latents() else None
        g = self.corruption.gram_diagonal(self.image_shape, p, dtype=like.dtype, device=like.device)
        return self.tau ** 2 * g

    def draw(self, x: Tensor, y: Tensor, sigma: Union[float, Tensor], params: Optional[dict],
             mask: Optional[Tensor], generator: Optional[torch.Generator] = None) -> Tensor:
        """One draw of G(w) + e from p(e | w, y) per leading index (Matheron's rule).

        Args:
            x: G(w), (*S, B, C, H, W). y: observations (B, *obs_shape).
            sigma: the pixel noise std (a float, or broadcastable to (*S, B, 1, 1, 1)).
            params: the scalar latents (plate layout, for corruptions that have some).
            mask: observed elements (None: all).
        """
        gen = dict(generator=generator, dtype=x.dtype)
        e0 = self.tau * torch.randn(x.shape, **gen).to(x.device)
        obs_shape = (*x.shape[:-3], *self.corruption.out_shape(tuple(x.shape[-3:])))
        n0 = torch.randn(obs_shape, **gen).to(x.device) * sigma
        # Matheron: the conditional mean applied to a joint prior draw (x + e0, its observation + n0)
        return self.conditional_mean(x + e0, y - n0, sigma, params, mask)

    def conditional_mean(self, x: Tensor, y: Tensor, sigma: Union[float, Tensor], params: Optional[dict],
                         mask: Optional[Tensor]) -> Tensor:
        r"""G(w) + E[e | w, y] = G(w) + tau^2 A^T S^{-1} (y - A G(w)), (*S, B, C, H, W).

        For a Gaussian model this is also the joint mode: maximising over (w, e) gives the MAP of w under
        the e-marginalised likelihood and e at its conditional mean, so ``G(w*) + E[e | w*, y]`` is the
        MAP estimate of the clean image x (exact where diag(A A^T) is). Arguments as in :meth:`draw`.
        """
        A = self.corruption
        S = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2 + self.obs_variance(params, x)
        r = (y - A(x, params)) / S
        if mask is not None:
            r = torch.where(mask, r, torch.zeros((), dtype=r.dtype, device=r.device))
        return x + self.tau ** 2 * A.A_adjoint(r, params)

    def config(self) -> dict:
        return {"tau": self.tau, **({"source": self.source} if self.source else {})}


def discrepancy_path(generator, path=None) -> Optional[Path]:
    """``<weights>.discrepancy.json`` beside the generator's weights (``.class<K>`` for class K), the way
    the latent statistics and the flow prior are found; None without a weights file."""
    from brgm_pyro.models.generators.loading import sidecar_path

    return sidecar_path(generator, ".discrepancy.json", path)


def load_discrepancy(generator) -> Discrepancy:
    """The generator's stored discrepancy (written by ``brgm fit-discrepancy``), or a one-line error."""
    p = discrepancy_path(generator)
    if p is None or not p.exists():
        raise BRGMError("no discrepancy scale is stored for this generator; run `brgm fit-discrepancy "
                        "--generator SPEC --images DIR` or give a number (--discrepancy 0.08)")
    try:
        rec = json.loads(p.read_text())
        return Discrepancy(float(rec["tau"]), source={"file": p.name, **{k: v for k, v in rec.items() if k != "tau"}})
    except (ValueError, KeyError, TypeError) as e:
        raise BRGMError(f"{p}: not a discrepancy file ({type(e).__name__}: {e}); rerun brgm fit-discrepancy") from None


def residual_scale(residuals: Tensor, num_latents: int) -> dict:
    r"""The discrepancy scale from inversion residuals r = x - G(w*) of clean images.

    With n pixels per image and p = ``num_latents`` fitted coordinates, :math:`E\|r\|^2 \approx
    (n - p)\tau^2` for a locally linear G (the fit absorbs p directions of e), so
    :math:`\hat\tau^2 = \sum_b \|r_b\|^2 / (B (n - p))` (the REML-style degrees-of-freedom correction;
    the plain RMS under-states tau by a factor sqrt(1 - p/n)).

    Args:
        residuals: (B, C, H, W) in [-1, 1] units. num_latents: p = L * d.
    """
    B = residuals.shape[0]
    n = residuals[0].numel()
    if num_latents >= n:
        raise BRGMError(f"the generator has {num_latents} latent coordinates for {n} pixels: its residuals do not "
                        "identify a discrepancy scale")
    ss = float(residuals.detach().double().pow(2).sum())
    rms = math.sqrt(ss / (B * n))
    tau = math.sqrt(ss / (B * (n - num_latents)))
    return {"tau": tau, "residual_rms": rms, "pixels": n, "latent_coordinates": int(num_latents), "images": int(B)}


__all__ = ["Discrepancy", "discrepancy_path", "load_discrepancy", "residual_scale"]
