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

**Coloured e** (``spectrum``). G's misfit on real faces is not white: neighbouring pixels err
together (lag-1 correlation ~0.4 on the bundled generator), and a blur shrinks it far less than it
shrinks white noise (benchmarks/misfit_whiteness.py: 1.35-1.49x the white prediction), so a model
that infers a blur width explains the excess with a too-narrow kernel. With a spectrum the term is
:math:`e = \tau K z`, z white, :math:`K = F^{-1} \sqrt{P} F` for an isotropic power spectrum P
measured on the same inversion residuals as tau (:func:`residual_spectrum`,
:class:`StationarySmoother`), so every pixel keeps variance :math:`\tau^2` and R = K K^T has the
residuals' correlations. The likelihood uses :math:`\tau^2 \operatorname{diag}(A R A^\top)`
(:meth:`Corruption.smoothed_gram_diagonal`: the exact marginal variance of each observation; the
correlations between observations are dropped, as for white e with an overlapping kernel), and
Matheron's rule solves with the full :math:`S = \sigma^2 I + \tau^2 A R A^\top` by
preconditioned conjugate gradients (:func:`_solve_S`), because with a correlated R the diagonal S
would count each neighbour's residual as independent evidence.

Assumptions (docs/discrepancy.md): e is Gaussian, stationary away from the borders, independent
between channels and independent of w; the perceptual likelihood ignores it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.latents import ScalarLatent, as_image


class StationarySmoother:
    r"""Coloured e as a stationary (periodic) field: :math:`e = \tau K z`, z white, :math:`K = F^{-1}
    \sqrt{P} F`.

    P is an isotropic power spectrum, a table of power against the radius :math:`|f|` of the 2-D
    frequency (cycles per pixel, linear interpolation, constant beyond the table), scaled on each
    image size so that its mean over the DFT grid is 1: every pixel then has variance exactly
    :math:`\tau^2`, and R = K K^T = K^2 has lag covariance :math:`c(\delta) = \mathrm{IDFT}(P)(\delta)`
    with c(0) = 1. K is real and symmetric (P is even), so ``apply`` is its own adjoint. The
    field wraps around the image's borders (a circulant R): a misfit correlated over a pixel or two
    barely feels that.

    Args:
        radius: (n,) increasing radii in [0, 0.75] cycles/pixel. power: (n,) non-negative powers
            (any scale), not all zero.
    """

    def __init__(self, radius, power) -> None:
        r = torch.as_tensor(radius, dtype=torch.float64).flatten()
        p = torch.as_tensor(power, dtype=torch.float64).flatten()
        if r.numel() < 2 or r.shape != p.shape or not bool((r[1:] > r[:-1]).all()) or not torch.isfinite(p).all() \
                or bool((p < 0).any()) or float(p.max()) <= 0:
            raise BRGMError("a discrepancy spectrum needs >= 2 increasing radii and as many non-negative powers, "
                            "not all zero")
        self.radius, self.power = r, p
        self.key = ("spectrum", tuple(r.tolist()), tuple(p.tolist()))
        self._cache: dict = {}

    @classmethod
    def gaussian(cls, length: float) -> "StationarySmoother":
        """K a Gaussian blur of std ``length`` pixels: P(f) = exp(-(2 pi f l)^2), c(d) = exp(-d^2 / 4 l^2)."""
        if not (isinstance(length, (int, float)) and math.isfinite(length) and length > 0):
            raise BRGMError(f"the discrepancy's correlation length must be a positive number of pixels, got {length!r}")
        r = torch.linspace(0, 0.75, 151, dtype=torch.float64)
        return cls(r, torch.exp(-(2 * math.pi * r * length) ** 2))

    def _grid(self, h: int, w: int, dtype, device) -> tuple[Tensor, Tensor]:
        """sqrt(P) on the rfft grid (h, w // 2 + 1) and P on the full grid (h, w), mean(P) = 1."""
        key = (h, w, dtype, str(device))
        if key not in self._cache:
            fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
            rad = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt()
            idx = torch.searchsorted(self.radius, rad.flatten()).clamp(1, self.radius.numel() - 1)
            r0, r1 = self.radius[idx - 1], self.radius[idx]
            a = ((rad.flatten() - r0) / (r1 - r0)).clamp(0, 1)
            full = ((1 - a) * self.power[idx - 1] + a * self.power[idx]).reshape(h, w)
            full = full / full.mean()
            self._cache[key] = (full[:, : w // 2 + 1].sqrt().to(dtype=dtype, device=device),
                                full.to(dtype=dtype, device=device))
        return self._cache[key]

    def apply(self, z: Tensor) -> Tensor:
        """K z over the last two (spatial) dims (K = K^T)."""
        h, w = z.shape[-2:]
        root, _ = self._grid(h, w, z.dtype, z.device)
        return torch.fft.irfft2(torch.fft.rfft2(z) * root, s=(h, w))

    adjoint = apply

    def lag_covariance(self, h: int, w: int, dtype=torch.float64, device=None) -> Tensor:
        """c(dy, dx) for dy in -(h-1)..h-1, dx in -(w-1)..w-1: (2h - 1, 2w - 1), c(0, 0) = 1 at [h-1, w-1]
        (cached: a blind corruption asks for it at every gradient)."""
        key = ("lags", h, w, dtype, str(device))
        if key not in self._cache:
            _, full = self._grid(h, w, torch.float64, None)
            c = torch.fft.ifft2(full).real
            iy = torch.arange(-(h - 1), h) % h
            ix = torch.arange(-(w - 1), w) % w
            self._cache[key] = c[iy][:, ix].to(dtype=dtype, device=device)
        return self._cache[key]

    def correlation(self, lag: int, n: int = 64) -> float:
        """R's correlation at ``lag`` pixels along one axis (an n x n image)."""
        return float(self.lag_covariance(n, n)[n - 1, n - 1 + lag])

    def config(self) -> dict:
        return {"radius": [round(v, 6) for v in self.radius.tolist()],
                "power": [float(f"{v:.6g}") for v in self.power.tolist()]}


class Discrepancy:
    """x = G(w) + e with e ~ N(0, tau^2 R) per channel, in [-1, 1] image units.

    Args:
        tau: the discrepancy scale (> 0), [-1, 1] units: every pixel's std.
        source: where tau came from (stored in the run's config), e.g. the fit's summary.
        spectrum: None (white e, R = I, the default), a :class:`StationarySmoother`, or its
            ``{"radius": [...], "power": [...]}`` (coloured e; the module's docstring).
        length: a shortcut for ``spectrum=StationarySmoother.gaussian(length)`` (pixels).
        colour: None, or ``"learn"`` (or a :class:`~brgm_pyro.models.latents.ScalarLatent` on
            (0, 1)) to make the misfit's colour a per-image latent a (site ``discrepancy_colour``,
            a ~ Beta(1, 1)): R_a = (1 - a) I + a R_spectrum, white at 0, the fitted colour at 1, every
            pixel's variance tau^2 throughout. For a generator whose misfit on *this* image may be
            whiter or more correlated than on the validation images: the uncertainty about the colour
            then widens the posterior of what it confounds (a blur width).
    """

    def __init__(self, tau: float, source: Optional[dict] = None, spectrum=None,
                 length: Optional[float] = None, colour=None) -> None:
        if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
            raise BRGMError(f"the discrepancy scale tau must be a positive number, got {tau!r}")
        if length is not None:
            if spectrum is not None:
                raise BRGMError("give the discrepancy a spectrum or a length, not both")
            spectrum = StationarySmoother.gaussian(length)
        if isinstance(spectrum, dict):
            try:
                spectrum = StationarySmoother(spectrum["radius"], spectrum["power"])
            except (KeyError, TypeError, ValueError):
                raise BRGMError("a discrepancy spectrum is {\"radius\": [...], \"power\": [...]}") from None
        self.tau = float(tau)
        self.smoother: Optional[StationarySmoother] = spectrum
        if isinstance(colour, str):
            if colour != "learn":
                raise BRGMError(f"the discrepancy's colour is None or 'learn', got {colour!r}")
            colour = colour_latent()
        if colour is not None and spectrum is None:
            raise BRGMError("a learned discrepancy colour mixes white e with a spectrum: give spectrum= (or length=)")
        self.colour: Optional[ScalarLatent] = colour
        self.source = dict(source or {})
        self.corruption = None
        self.image_shape: Optional[tuple] = None

    def bind(self, corruption, image_shape: tuple) -> "Discrepancy":
        """A copy attached to a model's corruption (whose diag(A A^T) enters the likelihood); the
        original stays unbound, so one Discrepancy can be given to several models."""
        if not corruption.linear:
            raise BRGMError(f"the discrepancy term needs a linear corruption; {corruption.name!r} is not")
        bound = Discrepancy(self.tau, self.source, self.smoother, colour=self.colour)
        bound.corruption, bound.image_shape = corruption, tuple(image_shape)
        # an operator that cannot state diag(A R A^T) says so now, not at the first step of inference
        probe = {lat.name: torch.as_tensor(float(lat.init)) for lat in corruption.latents()} or None
        bound._gram(probe, torch.float32, None)
        return bound

    def latents(self) -> list:
        """The term's own latent sites (the learned colour), for the model's program."""
        return [] if self.colour is None else [self.colour]

    def _gram(self, params: Optional[dict], dtype, device) -> Tensor:
        """diag(A R A^T) on the observation grid (R of the spectrum; white without one)."""
        if self.smoother is None:
            return self.corruption.gram_diagonal(self.image_shape, params, dtype=dtype, device=device)
        return self.corruption.smoothed_gram_diagonal(self.image_shape, self.smoother, params, dtype=dtype,
                                                      device=device)

    def _mix(self, params: Optional[dict], like: Tensor) -> Optional[Tensor]:
        """The colour a as (..., B, 1, 1, 1), or None when it is not learned."""
        if self.colour is None:
            return None
        return as_image(self.colour.read(params, "the discrepancy term (its colour)", like=like))

    def obs_variance(self, params: Optional[dict], like: Tensor) -> Tensor:
        """tau^2 diag(A R_a A^T): the variance e adds to each observation, (..., C, h, w) like ``like``."""
        if self.corruption is None:
            raise BRGMError("the discrepancy term is not attached to a model (build it with build_model)")
        p = params if self.corruption.latents() else None
        g = self._gram(p, like.dtype, like.device)
        a = self._mix(params, like)
        if a is not None:
            white = self.corruption.gram_diagonal(self.image_shape, p, dtype=like.dtype, device=like.device)
            g = (1 - a) * white + a * g
        return self.tau ** 2 * g

    def covariance_apply(self, v: Tensor, a: Optional[Tensor] = None) -> Tensor:
        """R_a v on clean-image tensors (..., C, H, W) (``a``: the colour, None for R itself)."""
        if self.smoother is None:
            return v
        rv = self.smoother.apply(self.smoother.adjoint(v))
        return rv if a is None else (1 - a) * v + a * rv

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
        if self.smoother is not None:
            a = self._mix(params, x)
            if a is None:
                e0 = self.smoother.apply(e0)
            else:  # covariance (1 - a) I + a K K^T
                e1 = self.tau * torch.randn(x.shape, **gen).to(x.device)
                e0 = (1 - a).sqrt() * e0 + a.sqrt() * self.smoother.apply(e1)
        obs_shape = (*x.shape[:-3], *self.corruption.out_shape(tuple(x.shape[-3:])))
        n0 = torch.randn(obs_shape, **gen).to(x.device) * sigma
        # Matheron: the conditional mean applied to a joint prior draw (x + e0, its observation + n0)
        return self.conditional_mean(x + e0, y - n0, sigma, params, mask)

    def conditional_mean(self, x: Tensor, y: Tensor, sigma: Union[float, Tensor], params: Optional[dict],
                         mask: Optional[Tensor]) -> Tensor:
        r"""G(w) + E[e | w, y] = G(w) + tau^2 R A^T S^{-1} (y - A G(w)), (*S, B, C, H, W).

        For a Gaussian model this is also the joint mode: maximising over (w, e) gives the MAP of w under
        the e-marginalised likelihood and e at its conditional mean, so ``G(w*) + E[e | w*, y]`` is the
        MAP estimate of the clean image x. White e uses S's diagonal (exact where diag(A A^T) is);
        coloured e solves with the full S (:func:`_solve_S`). Arguments as in :meth:`draw`.
        """
        A = self.corruption
        s2 = torch.as_tensor(sigma, dtype=x.dtype, device=x.device) ** 2
        d = s2 + self.obs_variance(params, x)
        r = y - A(x, params)
        if mask is not None:
            r = torch.where(mask, r, torch.zeros((), dtype=r.dtype, device=r.device))
        a = self._mix(params, x)  # None unless the colour is learned (which needs a spectrum)
        if self.smoother is None:
            v = r / d
        else:
            def S(u: Tensor) -> Tensor:
                out = s2 * u + self.tau ** 2 * A(self.covariance_apply(A.A_adjoint(u, params), a), params)
                return out if mask is None else torch.where(mask, out, u)
            v = _solve_S(S, r, d if mask is None else torch.where(mask, d, torch.ones_like(d)))
        return x + self.tau ** 2 * self.covariance_apply(A.A_adjoint(v, params), a)

    def config(self) -> dict:
        return {"tau": self.tau, **({"spectrum": self.smoother.config()} if self.smoother is not None else {}),
                **({"colour": self.colour.config()} if self.colour is not None else {}),
                **({"source": self.source} if self.source else {})}


def colour_latent() -> ScalarLatent:
    """The per-image colour a of a learned-colour discrepancy: Beta(1, 1) on (0, 1) (site
    ``discrepancy_colour``; 0 white, 1 the fitted spectrum)."""
    import pyro.distributions as dist

    return ScalarLatent("discrepancy_colour", dist.Beta(torch.tensor(1.0), torch.tensor(1.0)), per_image=True,
                        units="mixing weight of the fitted spectrum against white (0-1)")


def _solve_S(S, r: Tensor, diag: Tensor, rtol: float = 1e-5, max_iter: int = 200) -> Tensor:
    """S^{-1} r by Jacobi-preconditioned conjugate gradients, one system per leading index.

    Args:
        S: u -> S u for an SPD S on observation tensors (..., *obs_shape).
        r: right-hand sides (..., *obs_shape). diag: S's diagonal (the preconditioner), broadcastable.
    Stops when every system's residual norm is below ``rtol`` times its right-hand side's.
    """
    dims = tuple(range(-3, 0))
    v = r / diag
    res = r - S(v)
    z = res / diag
    p = z
    rz = (res * z).sum(dims, keepdim=True)
    stop = rtol * r.pow(2).sum(dims, keepdim=True).sqrt()
    for _ in range(max_iter):
        if bool((res.pow(2).sum(dims, keepdim=True).sqrt() <= stop).all()):
            break
        q = S(p)
        alpha = rz / (p * q).sum(dims, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        v, res = v + alpha * p, res - alpha * q
        z = res / diag
        rz_new = (res * z).sum(dims, keepdim=True)
        p, rz = z + rz_new / rz.clamp_min(torch.finfo(r.dtype).tiny) * p, rz_new
    return v


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
        return Discrepancy(float(rec["tau"]), source={"file": p.name, **{k: v for k, v in rec.items() if k != "tau"}},
                           spectrum=rec.get("spectrum"))
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


def residual_spectrum(residuals: Tensor, bins: int = 48) -> dict:
    r"""The isotropic power spectrum of coloured e from inversion residuals r = x - G(w*).

    The periodogram :math:`|\mathrm{DFT}(r)|^2`, averaged over images and channels (means are not
    removed: a misfit of the whole image's level is part of what G misses) and then over rings of
    the frequency radius (``bins`` equal rings up to 0.75 cycles/pixel; each ring's power sits at
    its pixels' mean radius), the way :class:`StationarySmoother` reads it. Empty rings are dropped.

    Args:
        residuals: (B, C, H, W) in [-1, 1] units.
    Returns: ``{"spectrum": {"radius", "power"}, "lag_correlations": [lag 1, 2, 3 along rows and
    columns, pooled]}``.
    """
    r = residuals.detach().double()
    h, w = r.shape[-2:]
    per = torch.fft.fft2(r).abs().pow(2).mean(tuple(range(r.ndim - 2)))  # (H, W)
    fy, fx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    rad = (fy[:, None] ** 2 + fx[None, :] ** 2).sqrt().flatten()
    ring = (rad / (0.75 / bins)).long().clamp(max=bins - 1)
    cnt = torch.bincount(ring, minlength=bins).double()
    keep = cnt > 0
    radius = (torch.bincount(ring, rad, minlength=bins) / cnt.clamp_min(1))[keep]
    power = (torch.bincount(ring, per.flatten(), minlength=bins) / cnt.clamp_min(1))[keep]
    var = r.pow(2).mean()
    lags = [float(((r[..., :, k:] * r[..., :, :-k]).mean() + (r[..., k:, :] * r[..., :-k, :]).mean()) / (2 * var))
            for k in (1, 2, 3)]
    spec = StationarySmoother(radius, power / power.mean()).config()  # as stored and read back
    return {"spectrum": spec, "lag_correlations": lags}


__all__ = ["Discrepancy", "StationarySmoother", "discrepancy_path", "load_discrepancy", "residual_scale",
           "residual_spectrum"]
