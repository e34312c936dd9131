"""Model components: generators, priors, corruptions, likelihoods and the BRGM Pyro model."""
