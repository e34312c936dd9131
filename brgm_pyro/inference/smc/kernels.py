r"""MCMC moves of a whole particle population at one temperature: batched MALA and HMC.

The MCMC runner's kernels (:mod:`brgm_pyro.inference.mcmc.langevin`, Pyro's HMC) move one chain and
decide acceptance with Python floats; SMC moves N particles at once, each with its own
accept/reject, so these are their batched twins (same formulas, (N, D) tensors). Both leave
pi_beta(z) = exp(ref(z) + beta rest(z)) invariant for any step size and any diagonal metric
``var`` (D,) (the inverse mass; SMC takes it from the particles' variance).

MALA, G = diag(var):  z' = z + (eps/2) G grad log pi(z) + sqrt(eps) G^{1/2} xi, Metropolis-Hastings.
HMC: momentum p ~ N(0, G^{-1}), ``num_leapfrog`` leapfrog steps of size eps, Metropolis on the energy.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor


class Particles(NamedTuple):
    """A population: positions ``z`` (N, D); ``ref``, ``rest`` (N,) and their gradients (N, D)."""

    z: Tensor
    ref: Tensor
    rest: Tensor
    g_ref: Tensor
    g_rest: Tensor

    def logp(self, beta: float) -> Tensor:
        """log pi_beta (N,) up to a constant."""
        return self.ref + beta * self.rest

    def grad(self, beta: float) -> Tensor:
        return self.g_ref + beta * self.g_rest

    def take(self, idx: Tensor) -> "Particles":
        """Rows ``idx`` (resampling)."""
        return Particles(*(t[idx] for t in self))


def evaluate(target, z: Tensor) -> Particles:
    """A :class:`Particles` at ``z`` (one batched forward and backward of the model)."""
    return Particles(z.detach(), *target.terms_and_grads(z))


def _select(accept: Tensor, new: Particles, old: Particles) -> Particles:
    out = []
    for a, b in zip(new, old):
        m = accept.reshape(-1, *([1] * (a.ndim - 1)))
        out.append(torch.where(m, a, b))
    return Particles(*out)


def _mh(log_ratio: Tensor, new: Particles, old: Particles) -> tuple[Particles, Tensor]:
    """Accept row-wise with probability min(1, exp(log_ratio)); a non-finite proposal is rejected."""
    ok = torch.isfinite(log_ratio) & torch.isfinite(new.g_ref).all(1) & torch.isfinite(new.g_rest).all(1)
    log_ratio = torch.where(ok, log_ratio, torch.full_like(log_ratio, -math.inf))
    prob = log_ratio.clamp(max=0.0).exp()
    accept = torch.rand_like(prob) < prob
    return _select(accept, new, old), prob


def mala_step(target, p: Particles, beta: float, eps: float, var: Tensor) -> tuple[Particles, Tensor]:
    """One MALA step of every particle: (new population, acceptance probabilities (N,))."""
    g = p.grad(beta)
    xi = torch.randn_like(p.z)
    z_new = p.z + 0.5 * eps * var * g + math.sqrt(eps) * var.sqrt() * xi
    q = evaluate(target, z_new)
    g_new = q.grad(beta)

    def log_q(to: Tensor, frm: Tensor, g_frm: Tensor) -> Tensor:  # log N(to | frm + eps/2 G g, eps G) + c
        r = to - frm - 0.5 * eps * var * g_frm
        return -(r * r / var).sum(1) / (2.0 * eps)

    log_ratio = q.logp(beta) - p.logp(beta) + log_q(p.z, z_new, g_new) - log_q(z_new, p.z, g)
    return _mh(log_ratio, q, p)


def hmc_step(target, p: Particles, beta: float, eps: float, var: Tensor,
             num_leapfrog: int = 8) -> tuple[Particles, Tensor]:
    """One HMC step of every particle (``num_leapfrog`` gradients): (new population, acceptance (N,))."""
    r0 = torch.randn_like(p.z) / var.sqrt()  # p ~ N(0, M), M = diag(1 / var)
    r = r0 + 0.5 * eps * p.grad(beta)
    q = p
    for i in range(num_leapfrog):
        q = evaluate(target, q.z + eps * var * r)
        if i < num_leapfrog - 1:
            r = r + eps * q.grad(beta)
    r = r + 0.5 * eps * q.grad(beta)
    kinetic = lambda m: 0.5 * (m * m * var).sum(1)  # noqa: E731
    log_ratio = q.logp(beta) - kinetic(r) - p.logp(beta) + kinetic(r0)
    return _mh(log_ratio, q, p)


KERNELS = {"mala": 0.574, "hmc": 0.65}  # kernel -> target acceptance of the step-size adaptation


__all__ = ["Particles", "evaluate", "mala_step", "hmc_step", "KERNELS"]
