r"""Pyro's HMC and NUTS with per-draw statistics for ArviZ's ``sample_stats``.

The dynamics, step-size adaptation (dual averaging) and mass-matrix adaptation (diagonal or
dense, windowed, during warm-up) are Pyro's unchanged. These subclasses only record, after every
draw, what Pyro keeps in local variables: the step size, the acceptance statistic (recovered from
Pyro's running mean: :math:`a_n = n \bar a_n - (n-1) \bar a_{n-1}`), whether the draw diverged,
the tree depth (number of trajectory doublings, Stan's convention), the number of gradient
evaluations and the potential energy :math:`U(z)` of the draw. :attr:`last_info` holds them.

``inverse_mass``: a fixed inverse mass matrix, (D, D) dense or (D,) diagonal, e.g. the Laplace
covariance at the MAP (:func:`~brgm_pyro.inference.mcmc.laplace.laplace_covariance`); mass
adaptation is then off and only the step size is adapted.
"""

from __future__ import annotations

from pyro.infer.mcmc import HMC, NUTS

from brgm_pyro.inference import pyro_internals as pi


class _StatsMixin:
    def __init__(self, *args, inverse_mass=None, **kwargs):
        self._fixed_inverse_mass = inverse_mass
        if inverse_mass is not None:
            kwargs["adapt_mass_matrix"] = False
            kwargs["full_mass"] = inverse_mass.ndim == 2
        super().__init__(*args, **kwargs)

    def _wrap_potential(self):
        fn = self.potential_fn
        if fn is None or getattr(fn, "_brgm_counted", False):
            return

        def counted(params):
            self.num_grad_evals += 1
            return fn(params)

        counted._brgm_counted = True
        self.potential_fn = counted

    def setup(self, warmup_steps, *args, **kwargs):
        self.num_grad_evals = 0
        self.last_info = {}
        super().setup(warmup_steps, *args, **kwargs)
        self._wrap_potential()
        if self._fixed_inverse_mass is not None:
            names = tuple(sorted(self.initial_params))
            size = sum(self.initial_params[k].numel() for k in names)
            M = self._fixed_inverse_mass.to(pi.potential_energy_like(self))
            if M.shape[0] != size:
                from brgm_pyro.errors import BRGMError

                raise BRGMError(f"inverse mass matrix has size {M.shape[0]}, the latents {size}")
            self.mass_matrix_adapter.inverse_mass_matrix = {names: M}
            adapter = pi.step_size_adapter(self)
            if adapter.adapt_step_size:  # re-find the initial step size for this metric
                adapter.reset_step_size_adaptation(pi.initial_params(self))

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):  # pi.BUILD_TREE
        self._max_depth_seen = max(getattr(self, "_max_depth_seen", -1), tree_depth)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)

    def sample(self, params):
        self._wrap_potential()
        mean0, div0, g0 = pi.mean_accept_prob(self), pi.divergence_count(self), self.num_grad_evals
        self._max_depth_seen = -1
        out = super().sample(params)
        t, warm = pi.draws_made(self), pi.warmup_steps(self)
        n = t - warm if t > warm else t
        if n <= 1:
            acc = pi.mean_accept_prob(self)
        else:  # Pyro resets its running mean after warm-up
            prev = mean0 if t != warm + 1 else 0.0
            acc = n * pi.mean_accept_prob(self) - (n - 1) * prev
        pe = pi.cached_potential_energy(self)
        self.last_info = {
            "step_size": float(self.step_size),
            "accept_prob": float(min(max(acc, 0.0), 1.0)),
            "diverging": pi.divergence_count(self) > div0,
            "n_steps": self.num_grad_evals - g0,
            "tree_depth": self._max_depth_seen + 1,
            "potential_energy": float(pe) if pe is not None else float("nan"),
        }
        return out


class StatsHMC(_StatsMixin, HMC):
    """:class:`pyro.infer.mcmc.HMC` that records per-draw statistics in ``last_info``."""


class StatsNUTS(_StatsMixin, NUTS):
    """:class:`pyro.infer.mcmc.NUTS` that records per-draw statistics in ``last_info``.

    ``tree_depth`` counts doublings; ``n_steps`` counts gradient evaluations (leapfrog steps).
    """
