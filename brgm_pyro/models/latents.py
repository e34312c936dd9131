r"""Scalar latent parameters of a model component: a learned noise level, an inferred blur width.

A component (a likelihood, a corruption) that has an unknown scalar parameter theta holds a
:class:`ScalarLatent` instead of a number. The model then adds the site

.. math::

    \theta \sim p(\theta)                        \quad\text{(shared by the batch: outside the images plate)}
    \theta_b \sim p(\theta), \; b = 1..B         \quad\text{(``per_image``: inside the images plate)}

and hands its value to the component, which broadcasts it against images with :func:`as_image`.
Value shapes, with ``*S`` any leading sample / particle dims: shared ``(*S,)`` or ``(*S, 1)`` (inside
a particle plate), per image ``(*S, B)``.

A latent states what inference needs: its prior (any one-dimensional Pyro distribution with a
continuous support), an initial value, and how to draw starting points (from the prior). Sites
are named by the component (``sigma_pixel``, ``kernel_width``), so two components never collide.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Union

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError

PriorSpec = Union[str, dist.TorchDistribution, Callable[[], dist.TorchDistribution]]


class ScalarLatent:
    """A scalar latent site with a prior.

    Args:
        name: the Pyro site name (e.g. ``"sigma_pixel"``).
        prior: a scalar Pyro distribution (batch and event shape ``()``), e.g.
            ``dist.LogNormal(math.log(0.05), 1.0)``.
        init: the starting value (default: the prior's median, found by its icdf if it has one,
            else its mean).
        per_image: one value per image (inside the images plate) instead of one for the batch.
        term: the loss-term name of its log prior in histories (default ``"<name>_prior"``).
        units: what the value measures, for reports (e.g. ``"[-1, 1] image units"``).
    """

    def __init__(self, name: str, prior: dist.TorchDistribution, *, init: Optional[float] = None,
                 per_image: bool = False, term: Optional[str] = None, units: str = "") -> None:
        if tuple(prior.batch_shape) != () or tuple(prior.event_shape) != ():
            raise BRGMError(f"the prior of {name} must be a scalar distribution; got batch shape "
                            f"{tuple(prior.batch_shape)}, event shape {tuple(prior.event_shape)}")
        self.name, self.prior, self.per_image = name, prior, bool(per_image)
        self.term = term or f"{name}_prior"
        self.units = units
        self.init = float(init) if init is not None else _median(prior)
        if not bool(prior.support.check(torch.tensor(self.init))):
            raise BRGMError(f"the initial value {self.init} of {name} is outside its prior's support")

    def sample(self) -> Tensor:
        """Add the site (call inside the images plate when ``per_image``) and return its value."""
        return pyro.sample(self.name, self.prior)

    def read(self, params: Optional[dict], owner: str, like: Optional[Tensor] = None) -> Tensor:
        """This latent's value from a component's ``params`` (as a tensor like ``like``), or a
        one-line error saying that ``owner`` needs it."""
        try:
            v = params[self.name]
        except (KeyError, TypeError):
            raise BRGMError(f"{owner} has the latent {self.name!r}: pass its value as params[{self.name!r}]") from None
        return v if like is None else torch.as_tensor(v, dtype=like.dtype, device=like.device)

    def init_value(self, batch: int) -> Tensor:
        """The starting value: () shared, (B,) per image."""
        v = torch.tensor(self.init)
        return v.expand(batch).clone() if self.per_image else v

    def draw_init(self, num: int, batch: int, generator: torch.Generator) -> Tensor:
        """``num`` starting points drawn from the prior: (num,) or (num, B); uses ``generator``."""
        shape = (num, batch) if self.per_image else (num,)
        u = torch.rand(shape, generator=generator, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
        try:
            return self.prior.icdf(u.to(torch.float32))
        except NotImplementedError:  # no icdf: draw with torch's RNG seeded from the generator
            with torch.random.fork_rng():
                torch.manual_seed(int(torch.randint(0, 2**31 - 1, (), generator=generator)))
                return self.prior.sample(shape)

    def to(self, device) -> "ScalarLatent":
        self.prior = _prior_to(self.prior, device)
        return self

    def config(self) -> dict:
        p = self.prior
        params = {k: float(getattr(p, k)) for k in p.arg_constraints if _is_scalar(getattr(p, k, None))}
        return {"site": self.name, "prior": type(p).__name__, "prior_params": params, "init": self.init,
                "per_image": self.per_image, "units": self.units}


def as_image(value: Union[Tensor, float]) -> Union[Tensor, float]:
    """Broadcast a scalar latent's value against images (..., C, h, w): append three unit dims."""
    if isinstance(value, Tensor):
        return value[..., None, None, None]
    return value


def _is_scalar(v) -> bool:
    return isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)


def _median(prior: dist.TorchDistribution) -> float:
    try:
        m = float(prior.icdf(torch.tensor(0.5)))
    except (NotImplementedError, AttributeError, ValueError):
        m = float(prior.mean)
    if not math.isfinite(m):
        raise BRGMError(f"cannot find a starting value for a {type(prior).__name__} prior; pass init=")
    return m


def _prior_to(prior: dist.TorchDistribution, device) -> dist.TorchDistribution:
    """The same distribution with its tensor parameters on ``device``."""
    kwargs = {k: getattr(prior, k) for k in prior.arg_constraints}
    kwargs = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in kwargs.items()}
    try:
        return type(prior)(**kwargs)
    except TypeError:
        raise BRGMError(f"cannot move a {type(prior).__name__} prior to {device}: build the latent on that "
                        "device instead") from None


def positive_prior(kind: str, guess: float, spread: float = 1.0) -> dist.TorchDistribution:
    r"""A documented prior for a positive scale whose rough size ``guess`` is known.

    * ``"lognormal"``: :math:`\log\theta \sim N(\log g, s^2)`: known to within a factor
      :math:`e^{s}` (68 %); its density vanishes faster than any power at 0, so a joint mode with
      an exactly fitted observation does not run off to theta = 0.
    * ``"invgamma"``: :math:`\theta \sim \mathrm{InvGamma}(a, b)` with shape :math:`a = 2 + 1/s`
      (so the variance is finite) and :math:`b = g (a + 1)`, which puts the mode at ``guess``.
    * ``"halfnormal"``: :math:`\theta \sim |N(0, (g s)^2)|`, scale ``guess * spread``.
    """
    if not guess > 0 or not spread > 0:
        raise BRGMError(f"a positive prior needs guess > 0 and spread > 0; got {guess}, {spread}")
    if kind == "lognormal":
        return dist.LogNormal(torch.tensor(math.log(guess)), torch.tensor(float(spread)))
    if kind == "invgamma":
        a = 2.0 + 1.0 / spread
        return dist.InverseGamma(torch.tensor(a), torch.tensor(guess * (a + 1.0)))
    if kind == "halfnormal":
        return dist.HalfNormal(torch.tensor(guess * spread))
    raise BRGMError(f"unknown prior kind {kind!r} for a positive scale; choose lognormal, invgamma or halfnormal")


__all__ = ["ScalarLatent", "as_image", "positive_prior"]
