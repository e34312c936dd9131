"""The BRGM generative model as a Pyro program (paper Eq. 2, 4, 9; graphical model Fig. 7).

    theta ~ p(theta)                                  # shared scalar latents (a learned noise level)
    for each image b (plate "images"):
        w_b ~ prior                                   # site "w", (L, d); plus factor sites
        x_b = G(w_b)                                  # clean image, (C, H, W), in [-1, 1]
        y_b ~ N(f(x_b), sigma_pixel^2 I)              # site "y", observed pixels only
                                                      # (sigma_pixel may be a latent site too)
        phi(y_b) ~ N(phi(f(x_b)), sigma_percept^2 I)  # site "y_percept", if a phi is given

Every box is an object with a narrow interface (generator, prior, corruption, likelihoods), so
swapping one is one argument. Extra leading dims on ``w`` (Pyro's vectorised particles,
posterior samples) pass through the generator, corruption and likelihoods unchanged.

Noise levels, not loss weights, are the parameters: the paper's Eq. 6 loss is
``-2 log p(w, y) + const`` with lambda_pixel = sigma_pixel^-2, lambda_percept = sigma_percept^-2,
lambda_c = -2 kappa (see docs/defaults.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import pyro
import torch
from pyro import poutine
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions import Corruption
from brgm_pyro.models.generators import Generator, LatentStats, compute_latent_stats
from brgm_pyro.models.latents import ScalarLatent, positive_prior
from brgm_pyro.models.discrepancy import Discrepancy, load_discrepancy
from brgm_pyro.models.likelihoods import Likelihood, PerceptualGaussian, PixelGaussian, PixelNoise
from brgm_pyro.models.priors import DEFAULT_KAPPA, Prior, make_prior

DEFAULT_SIGMA_PIXEL = 0.05
DEFAULT_SIGMA_PERCEPT = 1.0


E_DRAW_BLOCK = 16  # draws of the discrepancy e made together (fixed: results do not depend on chunks)


@dataclass(frozen=True)
class LatentSite:
    """What inference needs to know about one latent site of the model.

    ``per_image``: inside the images plate (value (B, *event_shape)) or shared by the batch
    (value ``event_shape``); ``component``: the prior / likelihood / corruption that owns it.
    """

    name: str
    event_shape: tuple
    per_image: bool
    component: Any
    dims: tuple = ()

    def value_shape(self, batch: int) -> tuple:
        return ((batch,) if self.per_image else ()) + tuple(self.event_shape)


class BRGMModel:
    """Callable Pyro model ``model(y)`` for a batch of observations y (B, C, h, w).

    Args:
        generator: G, frozen (its parameters get no gradients).
        prior: a :class:`Prior` adding the site ``w`` (and factor sites).
        corruption: f (it may own latents, e.g. an inferred kernel width).
        likelihoods: observed terms, e.g. ``[PixelGaussian(0.05), PerceptualGaussian(phi, 1.0)]``
            (they may own latents, e.g. a learned noise level).
        temperature: T; likelihoods are scaled by 1/T (T = 1 is the Bayesian posterior; T > 1
            widens it, T < 1 sharpens it).

    The latent sites are the prior's ``w`` plus every :class:`~brgm_pyro.models.latents.ScalarLatent`
    the components own (:meth:`latent_sites`); shared ones are sampled before the images plate,
    per-image ones inside it.
    """

    #: memory budget in bytes for batches through G (None: the device's default), :mod:`brgm_pyro.memory`
    max_memory: Optional[int] = None

    def __init__(self, generator: Generator, prior: Prior, corruption: Corruption,
                 likelihoods: Sequence[Likelihood], temperature: float = 1.0,
                 discrepancy: Optional[Discrepancy] = None) -> None:
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
        self.scalar_latents = [*prior.latents(), *corruption.latents(), *[l for k in self.likelihoods
                                                                          for l in k.latents()]]
        self.discrepancy = self._attach(discrepancy) if discrepancy is not None else None
        if self.discrepancy is not None:
            self.scalar_latents += self.discrepancy.latents()  # a learned colour of e
        names = [prior.site, *[l.name for l in self.scalar_latents]]
        if len(set(names)) != len(names):
            raise BRGMError(f"two model components use the same latent site name: {names}")

    def _attach(self, d: Discrepancy) -> Discrepancy:
        """Bind the discrepancy term to the Gaussian pixel likelihood, where it is integrated out."""
        pixel = [l for l in self.likelihoods if isinstance(l, PixelNoise)]
        if not pixel:
            raise BRGMError("the discrepancy term enters the pixel likelihood, and this model has none")
        if not isinstance(pixel[0], PixelGaussian):
            raise BRGMError(f"the discrepancy term is integrated out in closed form only under Gaussian pixel noise; "
                            f"the model has {type(pixel[0]).__name__} (use noise='gaussian' or no discrepancy)")
        if self.temperature != 1.0:
            raise BRGMError("the discrepancy term is defined for the untempered posterior (temperature 1)")
        pixel[0].discrepancy = bound = d.bind(self.corruption, self.generator.image_shape)
        return bound

    # --- the Pyro program -------------------------------------------------------------------
    def __call__(self, y: Tensor) -> Tensor:
        self.check_observation(y)
        params = {lat.name: lat.sample() for lat in self.scalar_latents if not lat.per_image}
        with pyro.plate("images", y.shape[0], dim=-1):
            w = self.prior.sample(self.prior.site)
            params.update({lat.name: lat.sample() for lat in self.scalar_latents if lat.per_image})
            pred = self.predict(w, params)
            with poutine.scale(scale=1.0 / self.temperature):
                for lik in self.likelihoods:
                    lik.observe(pred, y, self.mask, params)
        return w

    # --- pieces reused by inference, diagnostics and the CLI ---------------------------------
    @property
    def image_site(self) -> str:
        """The latent that G renders (the prior's site, ``w``)."""
        return self.prior.site

    def latent_sites(self) -> dict[str, LatentSite]:
        """Every latent site, in program order: name -> :class:`LatentSite`."""
        out = {lat.name: LatentSite(lat.name, (), False, lat) for lat in self.scalar_latents if not lat.per_image}
        out[self.prior.site] = LatentSite(self.prior.site, tuple(self.generator.latent_shape), True, self.prior,
                                          tuple(self.prior.dims))
        out.update({lat.name: LatentSite(lat.name, (), True, lat) for lat in self.scalar_latents if lat.per_image})
        return out

    @property
    def mask(self) -> Optional[Tensor]:
        return self.corruption.mask

    def render(self, w: Tensor) -> Tensor:
        """G(w): (..., L, d) -> (..., C, H, W)."""
        return self.generator(w)

    def point_image(self, latents: dict[str, Tensor], y: Optional[Tensor]) -> Tensor:
        """The image of a point estimate (B, C, H, W): G(w), plus E[e | w, y] with a discrepancy term.

        Under x = G(w) + e the joint mode of (w, e) is w* (the mode of the e-marginalised model this
        model scores) with e at its conditional mean, so G(w*) + E[e | w*, y] is the MAP of the clean
        image: it keeps what the data say about pixels G cannot draw (docs/discrepancy.md).
        ``latents``: site -> natural-layout value (as :attr:`InferenceResult.latents`).
        """
        with torch.no_grad():
            x = self.render(latents[self.image_site])
            if self.discrepancy is None:
                return x
            if y is None:
                raise BRGMError("the model has a discrepancy term: its point image needs the observation y")
            params = self._draw_params({k: v.unsqueeze(0) for k, v in latents.items()})  # as one draw
            x = self.discrepancy.conditional_mean(x.unsqueeze(0), y, self._noise_std(params), params or None, self.mask)
            return x[0]

    def _draw_params(self, draws: dict[str, Tensor]) -> dict[str, Tensor]:
        """The scalar latents of draws (site -> (S, *value shape)) in plate layout, for the likelihood."""
        from brgm_pyro.models.density import plate_layout

        part = plate_layout(self, draws, 1)
        return {lat.name: part[lat.name] for lat in self.scalar_latents}

    def predictive_images(self, draws: dict[str, Tensor], y: Tensor, seed: int = 0,
                          chunk: Optional[int] = None) -> Tensor:
        """Images of posterior draws: (S, B, C, H, W) from ``draws`` (site -> (S, *value shape)).

        G(w) for every draw, plus a draw of e from p(e | w, y) when the model has a discrepancy
        term (:mod:`brgm_pyro.models.discrepancy`); rendered ``chunk`` draws at a time without
        gradients (default: as many as the memory budget allows, :mod:`brgm_pyro.memory`).
        """
        from brgm_pyro.memory import items_per_chunk

        w = draws[self.image_site]
        if chunk is None:
            chunk = items_per_chunk(self, w.shape[0], w[0].numel() // self.generator.w_dim // self.generator.num_ws,
                                    grad=False)
        gen = torch.Generator(device="cpu").manual_seed(int(seed))
        with torch.no_grad():
            x = torch.cat([self.render(w[s:s + chunk]) for s in range(0, w.shape[0], chunk)])
            if self.discrepancy is not None:
                # e in fixed blocks of draws, not in render chunks: its random numbers do not depend on the
                # memory budget, and a block is one batched draw (one draw at a time cost minutes for 40k)
                for s in range(0, x.shape[0], E_DRAW_BLOCK):
                    params = self._draw_params({k: v[s:s + E_DRAW_BLOCK] for k, v in draws.items()})
                    x[s:s + E_DRAW_BLOCK] = self.discrepancy.draw(x[s:s + E_DRAW_BLOCK], y, self._noise_std(params),
                                                                  params or None, self.mask, gen)
        return x

    def _noise_std(self, params: dict):
        """The pixel likelihood's noise std (without the discrepancy), broadcastable to images."""
        lik = next(l for l in self.likelihoods if isinstance(l, PixelNoise))
        return lik.scale_value(params)

    def predict(self, w: Tensor, params: Optional[dict] = None) -> Tensor:
        """f(G(w)): (..., L, d) -> (..., C, h, w); ``params``: the scalar latents' values (plate layout)."""
        return self.corruption(self.generator(w), params)

    def site_terms(self) -> dict[str, str]:
        """Site name -> loss-term name (e.g. ``{"w": "prior", "y": "pixel", ...}``)."""
        out = self.prior.sites()
        for lat in self.scalar_latents:
            out[lat.name] = lat.term
        for lik in self.likelihoods:
            out[lik.site] = lik.term
        return out

    def likelihood_terms(self) -> set[str]:
        return {lik.term for lik in self.likelihoods}

    def log_joint(self, latents: Union[Tensor, dict], y: Tensor) -> Tensor:
        """log p(latents, y) up to a constant, summed over images: (*S,) for S leading sample dims.

        ``latents``: a dict site -> value (plate layout, see :func:`log_density_terms`), or the
        tensor w alone when w is the model's only latent.
        """
        from brgm_pyro.models.density import log_density_terms

        return sum(log_density_terms(self, y, self.as_latents(latents)).values())

    def as_latents(self, latents: Union[Tensor, dict]) -> dict:
        if isinstance(latents, dict):
            return latents
        if self.scalar_latents:
            raise BRGMError(f"the model has latents {list(self.latent_sites())}: give them all as a dict")
        return {self.image_site: latents}

    def init_latents(self, batch: int) -> Tensor:
        """The prior's initial w repeated for each image: (B, L, d)."""
        return self.prior.init_value().expand(batch, *self.generator.latent_shape).clone()

    def init_values(self, batch: int, device=None, skip: Sequence[str] = ()) -> dict[str, Tensor]:
        """The starting value of every latent site (but ``skip``), stated by its component: name -> value."""
        out = {} if self.image_site in skip else {self.image_site: self.init_latents(batch)}
        out.update({lat.name: lat.init_value(batch) for lat in self.scalar_latents if lat.name not in skip})
        return {k: v.to(device) for k, v in out.items()} if device is not None else out

    def draw_inits(self, num: int, batch: int, seed: int) -> dict[str, Tensor]:
        """``num`` independent starting points of every latent (CPU): name -> (num, *value shape)."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        out = {self.image_site: self.prior.draw_init(num * batch, g).reshape(num, batch,
                                                                            *self.generator.latent_shape)}
        out.update({lat.name: lat.draw_init(num, batch, g) for lat in self.scalar_latents})
        return out

    def check_observation(self, y: Tensor) -> None:
        if y.ndim != 4 or tuple(y.shape[1:]) != self.obs_shape:
            raise BRGMError(f"observation must have shape (B, {', '.join(map(str, self.obs_shape))}) "
                            f"for this generator and corruption; got {tuple(y.shape)}")

    def config(self) -> dict:
        return {"generator": {"class": type(self.generator).__name__, **self.generator.config()},
                "prior": {"class": type(self.prior).__name__, **self.prior.config()},
                "corruption": self.corruption.config(),
                "likelihoods": [{"class": type(l).__name__, **l.config()} for l in self.likelihoods],
                "latent_sites": list(self.latent_sites()),
                "discrepancy": None if self.discrepancy is None else self.discrepancy.config(),
                "temperature": self.temperature}


def build_model(
    generator: Generator,
    corruption: Corruption,
    *,
    prior: str | Prior = "brgm",
    sigma_pixel: Union[float, str, ScalarLatent, None] = DEFAULT_SIGMA_PIXEL,
    noise: str = "gaussian",
    noise_prior: str = "lognormal",
    noise_per_image: bool = False,
    sigma_percept: Optional[float] = None,
    phi: Optional[nn.Module] = None,
    kappa: float = DEFAULT_KAPPA,
    image_scale: float = 1.0,
    temperature: float = 1.0,
    stats: Optional[LatentStats] = None,
    prior_options: Optional[dict] = None,
    noise_options: Optional[dict] = None,
    discrepancy: Union[float, str, Discrepancy, None] = None,
) -> BRGMModel:
    """The BRGM model with defaults stated as noise levels.

    Args:
        generator, corruption: G and f.
        prior: a registered prior name (``brgm``, ``gaussian``, ``standard_normal``, ``geocross``,
            ``studentt``, ``flat``) or a :class:`Prior`.
        sigma_pixel: pixel noise scale in units of ``image_scale`` (None: no pixel likelihood);
            ``"learn"``: a latent site ``sigma_pixel`` with the hyperprior ``noise_prior``
            (see :func:`noise_latent`); or a :class:`ScalarLatent` of your own.
        noise: the pixel noise model: ``gaussian`` (sigma = std), ``laplace`` (sigma = Laplace
            scale b; RLS's L1 fidelity) or ``studentt`` (sigma = Student-t scale; ``df`` in
            ``noise_options``).
        noise_prior, noise_per_image: the learned noise level's hyperprior (``lognormal``,
            ``invgamma``, ``halfnormal``) and whether each image has its own.
        sigma_percept: perceptual noise std in feature units (default: ``phi.default_sigma`` if
            phi has it, else 1.0). Ignored without ``phi``.
        phi: perceptual feature network (None: no perceptual likelihood).
        kappa: von Mises concentration of the colinearity factor (``brgm`` prior).
        image_scale: how many of your units span half the [-1, 1] image range; sigma_pixel is
            divided by it (1.0: sigma in [-1, 1] units; 127.5: sigma in 0..255 units).
        temperature: likelihood tempering (VI option; 1 = exact posterior).
        stats: latent statistics (default: 10,000 mapped samples, seed 0, cached).
        prior_options, noise_options: extra options for the prior factory / the noise model.
        discrepancy: what G cannot draw, x = G(w) + e with e ~ N(0, tau^2 I)
            (:mod:`brgm_pyro.models.discrepancy`): None (off), tau in [-1, 1] units, ``"auto"``
            (the scale stored beside the generator's weights by ``brgm fit-discrepancy``; an error
            if there is none), or a :class:`Discrepancy`. Gaussian pixel noise only.
    """
    from brgm_pyro.models.likelihoods import LIKELIHOODS, PIXEL_NOISE

    if stats is None:
        stats = compute_latent_stats(generator)
    device = generator.device()
    stats = stats.to(device)
    p = make_prior(prior, generator, stats, kappa=kappa, **(prior_options or {})) if isinstance(prior, str) else prior
    liks: list[Likelihood] = []
    if sigma_pixel is not None:
        if noise not in PIXEL_NOISE:
            raise BRGMError(f"unknown noise model {noise!r}; choose one of: {', '.join(PIXEL_NOISE)}")
        if isinstance(sigma_pixel, str):
            if sigma_pixel not in ("learn", "auto"):
                raise BRGMError(f"sigma_pixel must be a number, 'learn' or a ScalarLatent; got {sigma_pixel!r}")
            scale: Union[float, ScalarLatent] = noise_latent(noise_prior, per_image=noise_per_image)
        elif isinstance(sigma_pixel, ScalarLatent):
            scale = sigma_pixel
        else:
            scale = float(sigma_pixel) / image_scale
        liks.append(LIKELIHOODS.build(PIXEL_NOISE[noise], scale, **(noise_options or {})))
    if phi is not None:
        if sigma_percept is None:
            sigma_percept = float(getattr(phi, "default_sigma", DEFAULT_SIGMA_PERCEPT))
        liks.append(PerceptualGaussian(phi, sigma_percept))
    model = BRGMModel(generator, p, corruption.to(device), liks, temperature=temperature,
                      discrepancy=_discrepancy(discrepancy, generator, image_scale))
    if hasattr(p, "to"):
        p.to(device)
    for lat in model.scalar_latents:
        lat.to(device)
    return model


def _discrepancy(spec, generator: Generator, image_scale: float) -> Optional[Discrepancy]:
    """``build_model``'s ``discrepancy`` argument as a :class:`Discrepancy` (or None)."""
    if spec is None or isinstance(spec, Discrepancy):
        return spec
    if isinstance(spec, str):
        if spec != "auto":
            raise BRGMError(f"discrepancy must be a number, 'auto' or None; got {spec!r}")
        return load_discrepancy(generator)
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return Discrepancy(float(spec) / image_scale)
    raise BRGMError(f"discrepancy must be a number, 'auto', a Discrepancy or None; got {spec!r}")


def noise_latent(kind: str = "lognormal", guess: float = DEFAULT_SIGMA_PIXEL, spread: float = 1.0,
                 per_image: bool = False, name: str = "sigma_pixel") -> ScalarLatent:
    r"""The learned pixel noise level, a latent site with a weakly informative hyperprior.

    Default: :math:`\log\sigma \sim N(\log 0.05, 1)`, i.e. the noise level is known to within a
    factor e = 2.7 around 0.05 [-1, 1] units (68 %; 95 % between 0.007 and 0.37). The log-normal's
    density vanishes faster than any power of sigma at 0, so the joint mode of (w, sigma) stays
    finite even when G can fit the observation exactly (with a flat or half-normal prior the MAP
    of sigma is then 0). ``invgamma`` and ``halfnormal`` are the alternatives
    (:func:`~brgm_pyro.models.latents.positive_prior`).
    """
    return ScalarLatent(name, positive_prior(kind, guess, spread), per_image=per_image, init=guess,
                        units="[-1, 1] image units (noise scale)")


__all__ = ["BRGMModel", "LatentSite", "build_model", "noise_latent", "DEFAULT_SIGMA_PIXEL", "DEFAULT_SIGMA_PERCEPT", "DEFAULT_KAPPA"]
