"""Priors on W+. Add one: a new file with a Prior/Factor and one ``@PRIORS.register`` factory here.

Every factory takes ``(generator, stats, **options)``, where ``stats`` is the generator's
:class:`~brgm_pyro.models.generators.LatentStats`.
"""

from __future__ import annotations

from brgm_pyro.models.priors.base import Factor, Prior, ProductPrior, pairwise_cosines
from brgm_pyro.models.priors.colinearity import ColinearityFactor
from brgm_pyro.models.priors.gaussian import GaussianPrior, StandardNormalPrior
from brgm_pyro.models.priors.geocross import GeocrossFactor
from brgm_pyro.models.priors.mixture import GaussianMixturePrior, two_mode_prior
from brgm_pyro.models.priors.studentt import StudentTPrior, fit_student_df
from brgm_pyro.models.priors.rls import make_flow_prior, make_rls_prior
from brgm_pyro.registry import Registry

PRIORS: Registry[Prior] = Registry("prior")

DEFAULT_KAPPA = 2.0


def _gaussian(generator, stats, scalar_sigma: bool = False) -> GaussianPrior:
    sigma = stats.sigma_scalar if scalar_sigma else stats.sigma
    return GaussianPrior(stats.mu, sigma, generator.num_ws, generator.w_dim)


@PRIORS.register("brgm")
def brgm_prior(generator, stats, kappa: float = DEFAULT_KAPPA, scalar_sigma: bool = False, **_) -> Prior:
    """The paper's prior: prod_i N(w_i | mu, sigma^2) prod_{i<j} vonMises(angle(w_i, w_j) | 0, kappa)."""
    return ProductPrior(_gaussian(generator, stats, scalar_sigma), [ColinearityFactor(kappa)])


@PRIORS.register("gaussian")
def gaussian_prior(generator, stats, scalar_sigma: bool = False, **_) -> Prior:
    """prod_i N(w_i | mu, sigma^2) alone (the ablation without the colinearity term)."""
    return _gaussian(generator, stats, scalar_sigma)


@PRIORS.register("standard_normal")
def standard_normal_prior(generator, stats=None, **_) -> Prior:
    """N(0, I) on each w_i, ignoring W's statistics."""
    return StandardNormalPrior(generator.num_ws, generator.w_dim)


@PRIORS.register("geocross")
def geocross_prior(generator, stats, geocross_weight: float = 1.0, scalar_sigma: bool = False, **_) -> Prior:
    """The Gaussian prior times PULSE's GEOCROSS factor instead of the von Mises one."""
    return ProductPrior(_gaussian(generator, stats, scalar_sigma), [GeocrossFactor(geocross_weight)])


@PRIORS.register("studentt")
def studentt_prior(generator, stats, df: float | None = None, kappa: float = DEFAULT_KAPPA, colinearity: bool = True,
                   **_) -> Prior:
    """Heavy-tailed W+: every coordinate StudentT(nu, mu_k, s_k) with W's mean and std, nu fitted by
    maximum likelihood to 2,000 mapped latents unless given; times the colinearity factor."""
    nu = fit_student_df(generator, stats.mu, stats.sigma) if df is None else float(df)
    base = StudentTPrior(stats.mu, stats.sigma, nu, generator.num_ws, generator.w_dim)
    return ProductPrior(base, [ColinearityFactor(kappa)]) if colinearity else base


@PRIORS.register("flat")
def flat_prior(generator, stats, **_) -> Prior:
    """An (improper-in-spirit) very wide Gaussian around mu: 'no prior' for ablations (sigma = 1e3)."""
    return GaussianPrior(stats.mu, 1e3, generator.num_ws, generator.w_dim)


@PRIORS.register("gaussian_mixture")
def gaussian_mixture_prior(generator, stats, separation: float = 3.0, weight: float = 0.5, **_) -> Prior:
    """Two Gaussian modes 2 ``separation`` prior std apart, weights (``weight``, 1 - ``weight``): a
    multimodal test prior (closed-form posterior with a linear G; tests/test_smc.py)."""
    return two_mode_prior(generator, stats, separation, weight)


# The normalizing-flow prior of seed 004 (RLS): the Bayesian form and RLS's weighted terms (see rls.py).
PRIORS.register("flow")(make_flow_prior)
PRIORS.register("rls")(make_rls_prior)


def make_prior(name: str, generator, stats, **options) -> Prior:
    """Build a registered prior; an option its factory does not name is an error (``kappa``, which
    :func:`~brgm_pyro.models.brgm.build_model` passes to every prior, is accepted by all)."""
    import inspect

    from brgm_pyro.errors import BRGMError

    if name in PRIORS:
        params = inspect.signature(PRIORS.get(name)).parameters
        named = {k for k, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        unknown = sorted(set(options) - named - {"kappa"})
        if unknown:
            opts = sorted(named - {"generator", "stats", "kappa"})
            raise BRGMError(f"the prior {name!r} has no option {', '.join(unknown)}; it takes "
                            f"{', '.join(opts) or 'none'}")
    return PRIORS.build(name, generator, stats, **options)


__all__ = ["Prior", "Factor", "ProductPrior", "GaussianPrior", "StandardNormalPrior", "ColinearityFactor",
           "GeocrossFactor", "StudentTPrior", "GaussianMixturePrior", "PRIORS", "make_prior", "pairwise_cosines", "DEFAULT_KAPPA"]
