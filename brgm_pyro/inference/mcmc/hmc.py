r"""Pyro's HMC and NUTS with per-draw statistics for ArviZ's ``sample_stats``.

The dynamics, step-size adaptation (dual averaging) and mass-matrix adaptation (diagonal or
dense, windowed, during warm-up) are Pyro's unchanged. These subclasses only record, after every
draw, what Pyro keeps in local variables: the step size, the acceptance statistic (recovered from
Pyro's running mean: :math:`a_n = n \bar a_n - (n-1) \bar a_{n-1}`), whether the draw diverged,
the tree depth (number of trajectory doublings, Stan's convention), the number of gradient
evaluations and the potential energy :math:`U(z)` of the draw. :attr:`last_info` holds them.
"""

from __future__ import annotations

from pyro.infer.mcmc import HMC, NUTS


class _StatsMixin:
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
