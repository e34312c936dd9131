"""brgm-pyro: Bayesian image reconstruction with deep generative priors, as a Pyro program."""

__version__ = "0.1.0"

from brgm_pyro.errors import BRGMError  # noqa: F401
