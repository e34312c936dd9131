"""``brgm train-prior``'s fitting code: :mod:`brgm_pyro.models.priors.flow_fit` (it lives in the models
layer, where the RLS prior's quick fit needs it); the names are re-exported here for the CLI and scripts."""

from brgm_pyro.models.priors.flow_fit import fisher_diagonal, mapped_latents, train_prior

__all__ = ["train_prior", "mapped_latents", "fisher_diagonal"]
