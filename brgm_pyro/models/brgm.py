"""The BRGM generative model as a Pyro program (paper Eq. 2, 4, 9; graphical model Fig. 7).

    for each image b (plate "images"):
        w_b ~ prior                                   # site "w", (L, d); plus factor sites
        x_b = G(w_b)                                  # clean image, (C, H, W), in [-1, 1]
        y_b ~ N(f(x_b), sigma_pixel^2 I)              # site "y", observed pixels only
        phi(y_b) ~ N(phi(f(x_b)), sigma_percept^2 I)  # site "y_percept", if a phi is given

Every box is an object with a narrow interface (generator, prior, corruption, likelihoods), so
swapping one is one argument. Extra leading dims on ``w`` (Pyro's vectorised particles,
posterior samples) pass through the generator, corruption and likelihoods unchanged.

Noise levels, not loss weights, are the parameters: the paper's Eq. 6 loss is
``-2 log p(w, y) + const`` with lambda_pixel = sigma_pixel^-2, lambda_percept = sigma_percept^-2,
lambda_c = -2 kappa (see docs/defaults.md).
"""

from __future__ import annotations

from typing import Optional, Sequence

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions import Corruption
from brgm_pyro.models.generators import Generator, LatentStats, compute_latent_stats
from brgm_pyro.models.likelihoods import Likelihood, PerceptualGaussian, PixelGaussian
from brgm_pyro.models.priors import DEFAULT_KAPPA, Prior, make_prior

DEFAULT_SIGMA_PIXEL = 0.05
DEFAULT_SIGMA_PERCEPT = 1.0


class BRGMModel:
    """Callable Pyro model ``model(y)`` for a batch of observations y (B, C, h, w).

    Args:
        generator: G, frozen (its parameters get no gradients).
        prior: a :class:`Prior` adding the site ``w`` (and factor sites).
        corruption: f.
        likelihoods: observed terms, e.g. ``[PixelGaussian(0.05), PerceptualGaussian(phi, 1.0)]``.
        temperature: T; likelihoods are scaled by 1/T (T = 1 is the Bayesian posterior; T > 1
            widens it, T < 1 sharpens it).
    """

    def __init__(self, generator: Generator, prior: Prior, corruption: Corruption,
                 likelihoods: Sequence[Likelihood], temperature: float = 1.0) -> None:
        if not likelihoods:
            raise BRGMError("the model needs at least one likelihood (pixel and/or perceptual)")
        if not temperature > 0:
            raise BRGMError(f"temperature must be positive, got {temperature}")
        self.generator = generator.requires_grad_(False)
        self.prior = prior
        self.corruption = corruption
        self.likelihoods = list(likelihoods)
        self.temperature = float(temperature)
        corruption.check_input(generator.image_shape)
        self.obs_shape = tuple(corruption.out_shape(generator.image_shape))

    # --- the Pyro program -------------------------------------------------------------------
    def __call__(self, y: Tensor) -> Tensor:
        self.check_observation(y)
        with pyro.plate("images", y.shape[0], dim=-1):
            w = self.prior.sample("w")
            pred = self.predict(w)
            with poutine.scale(scale=1.0 / self.temperature):
                for lik in self.likelihoods:
                    lik.observe(pred, y, self.mask)
        return w

    # --- pieces reused by inference, diagnostics and the CLI ---------------------------------
    @property
    def mask(self) -> Optional[Tensor]:
        return self.corruption.mask

    def render(self, w: Tensor) -> Tensor:
        """G(w): (..., L, d) -> (..., C, H, W)."""
        return self.generator(w)

    def predict(self, w: Tensor) -> Tensor:
        """f(G(w)): (..., L, d) -> (..., C, h, w)."""
        return self.corruption(self.generator(w))

    def site_terms(self) -> dict[str, str]:
        """Site name -> loss-term name (e.g. ``{"w": "prior", "y": "pixel", ...}``)."""
        out = self.prior.sites()
        for lik in self.likelihoods:
            out[lik.site] = lik.term
        return out

    def log_joint(self, w: Tensor, y: Tensor) -> Tensor:
        """log p(w, y) up to a constant, per image, computed directly (no Pyro): (..., B)."""
        pred = self.predict(w)
        out = self.prior.log_prob(w)
        for lik in self.likelihoods:
            out = out + lik.log_prob(pred, y, self.mask) / self.temperature
        return out

    def init_latents(self, batch: int) -> Tensor:
        """The prior mean repeated for each image: (B, L, d)."""
        return self.prior.init_value().expand(batch, *self.generator.latent_shape).clone()

    def check_observation(self, y: Tensor) -> None:
        if y.ndim != 4 or tuple(y.shape[1:]) != self.obs_shape:
            raise BRGMError(f"observation must have shape (B, {', '.join(map(str, self.obs_shape))}) "
                            f"for this generator and corruption; got {tuple(y.shape)}")

    def config(self) -> dict:
        return {"generator": {"class": type(self.generator).__name__, **self.generator.config()},
                "prior": {"class": type(self.prior).__name__, **self.prior.config()},
                "corruption": self.corruption.config(),
                "likelihoods": [{"class": type(l).__name__, **l.config()} for l in self.likelihoods],
                "temperature": self.temperature}


def build_model(
    generator: Generator,
    corruption: Corruption,
    *,
    prior: str | Prior = "brgm",
    sigma_pixel: Optional[float] = DEFAULT_SIGMA_PIXEL,
    sigma_percept: Optional[float] = None,
    phi: Optional[nn.Module] = None,
    kappa: float = DEFAULT_KAPPA,
    image_scale: float = 1.0,
    temperature: float = 1.0,
    stats: Optional[LatentStats] = None,
    prior_options: Optional[dict] = None,
) -> BRGMModel:
    """The BRGM model with defaults stated as noise levels.

    Args:
        generator, corruption: G and f.
        prior: a registered prior name (``brgm``, ``gaussian``, ``standard_normal``, ``geocross``,
            ``flat``) or a :class:`Prior`.
        sigma_pixel: pixel noise std in units of ``image_scale`` (None: no pixel likelihood).
        sigma_percept: perceptual noise std in feature units (default: ``phi.default_sigma`` if
            phi has it, else 1.0). Ignored without ``phi``.
        phi: perceptual feature network (None: no perceptual likelihood).
        kappa: von Mises concentration of the colinearity factor (``brgm`` prior).
        image_scale: how many of your units span half the [-1, 1] image range; sigma_pixel is
            divided by it (1.0: sigma in [-1, 1] units; 127.5: sigma in 0..255 units).
        temperature: likelihood tempering (VI option; 1 = exact posterior).
        stats: latent statistics (default: 10,000 mapped samples, seed 0, cached).
        prior_options: extra options for the prior factory.
    """
    if stats is None:
        stats = compute_latent_stats(generator)
    stats = stats.to(generator.device())
    if isinstance(prior, str):
        p = make_prior(prior, generator, stats, kappa=kappa, **(prior_options or {}))
    else:
        p = prior
    liks: list[Likelihood] = []
    if sigma_pixel is not None:
        liks.append(PixelGaussian(sigma_pixel / image_scale))
    if phi is not None:
        if sigma_percept is None:
            sigma_percept = float(getattr(phi, "default_sigma", DEFAULT_SIGMA_PERCEPT))
        liks.append(PerceptualGaussian(phi, sigma_percept))
    return BRGMModel(generator, p, corruption.to(generator.device()), liks, temperature=temperature)


__all__ = ["BRGMModel", "build_model", "DEFAULT_SIGMA_PIXEL", "DEFAULT_SIGMA_PERCEPT", "DEFAULT_KAPPA"]
