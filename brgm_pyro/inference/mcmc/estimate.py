"""How long an MCMC run will take, said before it starts, and how much is left while it runs.

The cost of a sampler is its gradient evaluations (forward + backward passes of the potential
U = -log p(latents, y): the generator, the corruption, the likelihoods, the perceptual network).
:func:`time_gradient` times a few at the chains' starting point; :func:`mcmc_budget` turns that into
an upper bound for the run (NUTS: at most 2^D - 1 leapfrog steps per draw at max tree depth D,
every warm-up and kept draw alike); :func:`budget_line` is what the runner prints.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import torch
from torch import Tensor

PUBLICATION_HINT = ("for a publication-grade run use 4 chains x (200 warm-up + 3000 draws) (brgm reconstruct "
                    "--chains 4 --workers 2 --steps 200 --num-samples 3000) and check R-hat < 1.01 and bulk/tail "
                    "ESS > 400 on every summary of brgm diagnose (docs/mcmc.md)")


# Pyro's NUTS/HMC bookkeeping per leapfrog step (tree building, the kinetic energy in a dense Laplace
# metric) on top of the gradient: measured 31.8 ms per gradient while sampling against 27.5 ms timed at
# the start (builtin:faces64, x8 super-resolution, perceptual term on, one thread on a loaded 2-core machine)
SAMPLER_OVERHEAD = {"nuts": 1.2, "hmc": 1.2}


def gradients_per_draw(method: str, *, max_tree_depth: Optional[int] = None, num_steps: Optional[int] = None,
                       thin: int = 1) -> int:
    """Most gradient evaluations one kept draw can cost: NUTS 2^D - 1 (D = ``max_tree_depth``), HMC
    ``num_steps`` leapfrog steps, Langevin methods ``thin`` steps of one gradient each, times ``thin``
    for NUTS/HMC (every ``thin``-th draw is kept)."""
    if method == "nuts":
        if max_tree_depth is None or int(max_tree_depth) < 1:
            raise ValueError(f"NUTS needs max_tree_depth >= 1, got {max_tree_depth}")
        return (2 ** int(max_tree_depth) - 1) * int(thin)
    if method == "hmc":
        return int(num_steps if num_steps is not None else 10) * int(thin)
    return int(thin)


def time_gradient(model, y: Tensor, z0: dict, repeats: int = 3) -> float:
    """Seconds per gradient of the model's potential at the unconstrained point ``z0`` (site ->
    value of one chain), as NUTS evaluates it (Pyro's ``potential_fn``, forward + backward): the
    median of ``repeats`` timed evaluations after one untimed one (which pays for first-call costs)."""
    import pyro
    from pyro.infer.mcmc.util import initialize_model
    from pyro.ops.integrator import potential_grad

    with pyro.poutine.block(), torch.random.fork_rng(devices=[]):
        _, potential_fn, _, _ = initialize_model(model, model_args=(y,), initial_params=dict(z0))
        z = {k: v.detach() for k, v in z0.items()}
        potential_grad(potential_fn, z)
        times = []
        for _ in range(max(1, int(repeats))):
            if y.device.type == "cuda":
                torch.cuda.synchronize(y.device)
            t0 = time.perf_counter()
            potential_grad(potential_fn, z)
            if y.device.type == "cuda":
                torch.cuda.synchronize(y.device)
            times.append(time.perf_counter() - t0)
    return float(sorted(times)[len(times) // 2])


def mcmc_budget(seconds_per_gradient: float, per_draw: int, num_chains: int, warmup: int, num_samples: int,
                workers: int = 1, overhead: float = 1.0) -> dict:
    """Upper bound of a run's cost: every warm-up and kept draw at ``per_draw`` gradients.

    Args:
        seconds_per_gradient: from :func:`time_gradient` (s).
        per_draw: at most this many gradients per draw (:func:`gradients_per_draw`).
        num_chains, warmup, num_samples: chains, warm-up draws and kept draws per chain.
        workers: chains run at the same time (``ceil(num_chains / workers)`` rounds one after another).
        overhead: the sampler's own cost per gradient, as a factor (:data:`SAMPLER_OVERHEAD`).
    Returns:
        ``{"seconds_per_gradient", "gradients_per_draw", "max_gradients" (all chains), "rounds",
        "overhead", "max_seconds" (wall time: rounds x one chain's bound x overhead)}``.
    """
    if min(num_chains, workers) < 1 or min(warmup, num_samples) < 0:
        raise ValueError("num_chains and workers must be >= 1, warmup and num_samples >= 0")
    per_chain = int(per_draw) * (int(warmup) + int(num_samples))
    rounds = math.ceil(int(num_chains) / min(int(workers), int(num_chains)))
    return {"seconds_per_gradient": float(seconds_per_gradient), "gradients_per_draw": int(per_draw),
            "max_gradients": per_chain * int(num_chains), "rounds": rounds, "overhead": float(overhead),
            "max_seconds": float(seconds_per_gradient) * per_chain * rounds * float(overhead)}


def _duration(seconds: float) -> str:
    """``45 s``, ``2.5 min``, ``38 min``, ``3.1 h``."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def budget_line(method: str, budget: dict, num_chains: int, warmup: int, num_samples: int, workers: int = 1,
                max_tree_depth: Optional[int] = None) -> str:
    """The line printed before sampling, e.g. ``NUTS: ~31 gradients per draw at most (tree depth 5),
    ~0.027 s per gradient (+20 % sampler overhead) -> at most ~3.3 min for 4 chains x (30 warm-up +
    20 draws); for a publication-grade run use ...``."""
    what = f" (tree depth {max_tree_depth})" if method == "nuts" and max_tree_depth is not None else ""
    par = f", {workers} at a time" if workers > 1 else ""
    extra = budget.get("overhead", 1.0) - 1.0
    over = f" (+{100 * extra:.0f} % sampler overhead)" if extra > 0 else ""
    return (f"{method.upper()}: ~{budget['gradients_per_draw']} gradients per draw at most{what}, "
            f"~{budget['seconds_per_gradient']:.2g} s per gradient{over} -> at most "
            f"~{_duration(budget['max_seconds'])} "
            f"for {num_chains} chain{'s' if num_chains != 1 else ''}{par} x ({warmup} warm-up + {num_samples} "
            f"draws); {PUBLICATION_HINT}")


def time_left_line(done_seconds: list, num_chains: int, workers: int = 1) -> str:
    """After a chain finishes: ``chain k/C done in X s; ~Y left``: the mean time of the finished chains
    (``done_seconds``, s) times the rounds of chains still to run, ``workers`` at a time (with several
    workers an upper bound: the chains running now are partly done)."""
    k = len(done_seconds)
    left = num_chains - k
    mean = sum(done_seconds) / max(k, 1)
    rounds = math.ceil(left / max(1, int(workers)))
    tail = f"; {'at most ' if workers > 1 else ''}~{_duration(mean * rounds)} left" if left > 0 else ""
    return f"chain {k}/{num_chains} done in {done_seconds[-1]:.0f} s{tail}"


__all__ = ["PUBLICATION_HINT", "SAMPLER_OVERHEAD", "gradients_per_draw", "time_gradient", "mcmc_budget", "budget_line",
           "time_left_line"]
