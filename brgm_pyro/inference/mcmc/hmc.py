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
            M = self._fixed_inverse_mass.to(self._potential_energy_last)
            if M.shape[0] != size:
                from brgm_pyro.errors import BRGMError

                raise BRGMError(f"inverse mass matrix has size {M.shape[0]}, the latents {size}")
            self.mass_matrix_adapter.inverse_mass_matrix = {names: M}
            if self._adapter.adapt_step_size:  # re-find the initial step size for this metric
                self._adapter.reset_step_size_adaptation(self._initial_params)

    def _build_tree(self, z, r, z_grads, log_slice, direction, tree_depth, energy_current):
        self._max_depth_seen = max(getattr(self, "_max_depth_seen", -1), tree_depth)
        return super()._build_tree(z, r, z_grads, log_slice, direction, tree_depth, energy_current)

    def sample(self, params):
        self._wrap_potential()
        t0, mean0, div0, g0 = self._t, self._mean_accept_prob, len(self._divergences), self.num_grad_evals
        self._max_depth_seen = -1
        out = super().sample(params)
        n = self._t - self._warmup_steps if self._t > self._warmup_steps else self._t
        if n <= 1:
            acc = self._mean_accept_prob
        else:
            prev = mean0 if self._t != self._warmup_steps + 1 else 0.0
            acc = n * self._mean_accept_prob - (n - 1) * prev
        _, pe, _ = self._fetch_from_cache()
        self.last_info = {
            "step_size": float(self.step_size),
            "accept_prob": float(min(max(acc, 0.0), 1.0)),
            "diverging": len(self._divergences) > div0,
            "n_steps": self.num_grad_evals - g0,
            "tree_depth": self._max_depth_seen + 1,
            "potential_energy": float(pe) if pe is not None else float("nan"),
        }
        del t0
        return out


class StatsHMC(_StatsMixin, HMC):
    """:class:`pyro.infer.mcmc.HMC` that records per-draw statistics in ``last_info``."""


class StatsNUTS(_StatsMixin, NUTS):
    """:class:`pyro.infer.mcmc.NUTS` that records per-draw statistics in ``last_info``.

    ``tree_depth`` counts doublings; ``n_steps`` counts gradient evaluations (leapfrog steps).
    """
