r"""A fixed HMC/NUTS metric from the chain's own warm-up: the mean Laplace precision of K draws.

``run_mcmc(mass="laplace_warmup")``. The Laplace metric P^-1 at the MAP (``mass="laplace"``) is
exact for a Gaussian posterior, but where the generator's curvature moves across the typical set
it can be far off there (``benchmarks/nuts_geometry.py`` on faces64 in-painting: at typical draws
the Hessian is up to ~600x stiffer than that metric assumes along some directions and ~10^3x softer
along others; in the mean Gauss-Newton precision of a few typical draws the stiff side falls to
~50-90x, the soft side stays). Each chain therefore runs its warm-up in three parts:

1. ``w1 = warmup // 2`` warm-up draws in the MAP's metric (step-size adaptation: the chain walks
   from its start into the typical set);
2. ``m = warmup // 4`` further draws in that metric, of which K evenly spaced ones give

   .. math::  \bar P = \frac1K \sum_{k \le K} P(z_k)

   (:func:`~brgm_pyro.inference.mcmc.laplace.laplace_precision` at each, in the unconstrained
   coordinates; the mean of precisions, not of covariances, so that a direction stiff at any point
   stays stiff), and the new inverse mass matrix :math:`\bar P^{-1}`;
3. the rest of the warm-up re-adapts the step size in :math:`\bar P^{-1}`; the kept draws follow.

The metric is fixed while the kept draws are made, so the chain is a valid (time-homogeneous)
MCMC. Cost: K Laplace precisions per chain (faces64: ~9-15 s each on one CPU thread for D = 1,280)
on top of the draws. Draws, gradients and statistics of parts 1-2 count as warm-up.

Measured on that in-painting problem (docs/mcmc.md): steps 1.5-2.8x larger than in the MAP's
metric, but no more effective draws per gradient (the soft directions, not the step, limit it).
An option, not the default.
"""

from __future__ import annotations

import time

import torch
from pyro.infer import MCMC
from torch import Tensor
from torch.distributions import biject_to

from brgm_pyro.errors import BRGMError

DEFAULT_METRIC_POINTS = 8


def warmup_split(warmup: int, points: int) -> tuple[int, int, int]:
    """(w1, m, w2): warm-up draws before the metric, draws it is computed from, re-adaptation after."""
    w1, m = warmup // 2, warmup // 4
    w2 = warmup - w1 - m
    if w1 < 1 or m < points or w2 < 1:
        raise BRGMError(f"mass='laplace_warmup' with {points} metric points needs at least {4 * points} warm-up "
                        f"draws (a half to reach the typical set, a quarter to take the points from, a quarter to "
                        f"re-adapt the step size); got {warmup}")
    return w1, m, w2


def mean_precision_covariance(model, y: Tensor, draws: dict, points: int, laplace_rows: int, curvature: str,
                              seed: int) -> tuple[Tensor, int]:
    """:math:`\\bar P^{-1}` from ``points`` evenly spaced draws (site -> (m, ...) constrained); (cov, passes)."""
    from brgm_pyro.inference.mcmc.laplace import covariance_of, laplace_precision

    m = next(iter(draws.values())).shape[0]
    picks = [round(i * (m - 1) / max(points - 1, 1)) for i in range(points)]  # evenly spaced indices
    acc: dict = {}
    passes = 0
    for i in picks:
        info: dict = {}
        blocks = laplace_precision(model, y, {k: v[i] for k, v in draws.items()}, max_rows=laplace_rows, seed=seed,
                                   info=info, curvature=curvature)
        passes += int(info.get("backward_passes", 0))
        for k, P in blocks.items():
            acc[k] = acc.get(k, 0) + P / len(picks)
    return covariance_of(acc), passes


def run_warmup_metric(make, model, y: Tensor, *, z0: dict, warmup: int, points: int, supports: dict,
                      laplace_rows: int, curvature: str, seed: int, progress: bool) -> tuple[dict, Tensor, int, dict]:
    """Parts 1-2 for one chain: (unconstrained start of part 3, new inverse mass, draws left to warm up,
    record). ``make(inverse_mass)`` builds a kernel with the chain's other options."""
    w1, m, w2 = warmup_split(warmup, points)
    kernel = make(None)
    mcmc = MCMC(kernel, num_samples=m, warmup_steps=w1, initial_params=dict(z0), disable_progbar=not progress)
    t0 = time.perf_counter()
    mcmc.run(y)
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    if not all(torch.isfinite(v).all() for v in draws.values()):
        raise BRGMError("non-finite draws while warming up the metric; lower the step size")
    t1 = time.perf_counter()
    cov, passes = mean_precision_covariance(model, y, draws, points, laplace_rows, curvature, seed)
    start = {k: biject_to(supports[k]).inv(v[-1]) for k, v in draws.items()}
    record = {"points": points, "draws_before": w1, "draws_from": m, "readapt": w2,
              "grad_evals": int(kernel.num_grad_evals), "backward_passes": passes,
              "step_size_before": float(kernel.step_size), "sampling_s": t1 - t0,
              "metric_s": time.perf_counter() - t1}
    return start, cov, w2, record


__all__ = ["DEFAULT_METRIC_POINTS", "warmup_split", "mean_precision_covariance", "run_warmup_metric"]
