r"""Adaptive tempered SMC as an ``init`` and a pure-in-spirit ``step`` (BlackJAX's shape).

State: particles z_i (N, D) with normalised log weights log W_i, at inverse temperature beta,
and the running log evidence. One step (one *stage*):

1. next temperature: beta' = beta + delta, delta the largest step (bisection) with
   CESS(delta) = N (sum_i W_i e^{delta rest_i})^2 / sum_i W_i e^{2 delta rest_i} >= rho N
   (the conditional ESS of Zhou, Johansen & Aston 2016), capped at 1;
2. reweight: log Z_t = log sum_i W_i e^{delta rest_i}; log W_i += delta rest_i - log Z_t;
   log Z += log Z_t (the product of the incremental means is unbiased for Z_beta' / Z_0);
3. resample (systematic) when ESS = 1 / sum W_i^2 < ``resample_ess`` N;
4. mutate: ``num_steps`` MALA/HMC steps of every particle targeting pi_beta', metric = the
   particles' weighted variance (diagonal), step size adapted after every step towards the
   kernel's target acceptance from the population's mean acceptance (Fearnhead & Taylor 2013).

The single-run variance of the evidence (Lee & Whiteley 2018; with adaptive resampling Du &
Guyader 2021): each particle carries its *Eve index* E_i, the time-0 particle its lineage goes back
to through the resampling steps (mutations keep the lineage). After the reweighting of a stage,
with R resampling events so far and normalised weights W_i,

    V = 1 - (N / (N - 1))^(R + 1) * sum_{i, j: E_i != E_j} W_i W_j
      = 1 - (N / (N - 1))^(R + 1) * (1 - sum_k S_k^2),     S_k = sum_{i: E_i = k} W_i,

is an estimate of the relative variance Var(Z_hat) / Z^2 of that stage's evidence estimate (unbiased
with multinomial resampling; systematic resampling has less resampling noise, so V is then
conservative). Var(log Z_hat) ~ log(1 + V). Once every lineage goes back to one Eve, V = 1 whatever
the real variance: the estimate has degenerated (``distinct_eves`` says how far the ancestries
have coalesced). Waste-free stages resample N / P of N particles, which the estimator does not
cover: there it is NaN.

Waste-free (Dau & Chopin 2022): every stage resamples M = N / P particles, runs a chain of
``P - 1`` steps from each and keeps every state of every chain: N equally weighted particles,
M (P - 1) gradients a stage instead of N ``num_steps``.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from brgm_pyro.inference.smc.kernels import KERNELS, Particles, evaluate, hmc_step, mala_step


class SMCState(NamedTuple):
    """Population, normalised log weights (N,) float64, beta, log evidence so far, step size; the
    Eve indices (N,) long (None after a waste-free stage) and the number of resampling events."""

    particles: Particles
    log_w: Tensor
    beta: float
    log_evidence: float
    step_size: float
    eve: Optional[Tensor] = None
    num_resampled: int = 0


class StageInfo(NamedTuple):
    """What one stage did (ArviZ's stage statistics)."""

    beta: float
    log_increment: float
    ess: float
    resampled: bool
    acceptance: float
    step_size: float
    grad_evals: int
    log_evidence_var: float = float("nan")
    distinct_eves: int = 0


def ess(log_w: Tensor) -> float:
    """1 / sum W_i^2 of normalised log weights."""
    return float(torch.exp(-torch.logsumexp(2.0 * log_w, 0)))


def _log_cess(log_w: Tensor, rest: Tensor, delta: float) -> float:
    """log(CESS / N) for the increment delta * rest (rest float64; -inf entries weigh 0)."""
    a = log_w + delta * rest
    return float(2.0 * torch.logsumexp(a, 0) - torch.logsumexp(a + delta * rest, 0))


def next_delta(log_w: Tensor, rest: Tensor, beta: float, target: float, tol: float = 1e-10) -> float:
    """The temperature step delta in (0, 1 - beta] with CESS(delta) = target N (bisection).

    CESS falls monotonically in delta, from N at 0 (Zhou, Johansen & Aston 2016, Sec. 3.3).
    """
    hi = 1.0 - beta
    goal = math.log(target)
    if _log_cess(log_w, rest, hi) >= goal:
        return hi
    lo = 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if _log_cess(log_w, rest, mid) >= goal:
            lo = mid
        else:
            hi = mid
        if hi - lo < tol * max(hi, 1e-300):
            break
    return max(lo, 1e-12 * (1.0 - beta)) if lo > 0 else hi  # never stall at delta = 0


def genealogy_variance(log_w: Tensor, eve: Optional[Tensor], num_resampled: int) -> tuple[float, int]:
    """(V, distinct Eves): Lee & Whiteley's estimate of Var(Z_hat) / Z^2 from normalised log weights
    (N,) and Eve indices (N,) after ``num_resampled`` resampling events (module docstring); NaN
    without Eve indices."""
    if eve is None:
        return float("nan"), 0
    N = log_w.shape[0]
    S = torch.zeros(N, dtype=torch.float64, device=log_w.device).index_add_(0, eve, torch.softmax(log_w.double(), 0))
    log_c = (num_resampled + 1) * math.log1p(1.0 / (N - 1))
    V = 1.0 - math.exp(log_c) * (1.0 - float((S * S).sum()))
    return V, int(torch.unique(eve).numel())


def multinomial_resample(log_w: Tensor, num: Optional[int] = None) -> Tensor:
    """``num`` (default N) ancestor indices drawn independently from the normalised weights."""
    n = num or log_w.shape[0]
    return torch.multinomial(torch.softmax(log_w.double(), 0), n, replacement=True)


def systematic_resample(log_w: Tensor, num: Optional[int] = None) -> Tensor:
    """``num`` (default N) ancestor indices by systematic resampling of normalised log weights."""
    n = num or log_w.shape[0]
    w = torch.softmax(log_w.double(), 0)
    cdf = torch.cumsum(w, 0)
    u = (torch.rand((), dtype=torch.float64, device=w.device) + torch.arange(n, dtype=torch.float64,
                                                                                 device=w.device)) / n
    return torch.searchsorted(cdf, u * cdf[-1]).clamp(max=log_w.shape[0] - 1)


RESAMPLERS = {"systematic": systematic_resample, "multinomial": multinomial_resample}


def particle_variance(z: Tensor, log_w: Tensor) -> Tensor:
    """Weighted per-coordinate variance (D,) of the particles: the diagonal metric of the moves."""
    w = torch.softmax(log_w, 0).to(z.dtype)[:, None]
    m = (w * z).sum(0)
    var = (w * (z - m) ** 2).sum(0)
    return var.clamp_min(1e-12 * float(var.max().clamp_min(1e-30)))


def smc_init(target, num: int, kernel: str) -> SMCState:
    """N draws of the reference (beta = 0, equal weights) and the kernel's first step size."""
    z = target.reference_draws(num)
    p = evaluate(target, z)
    D = z.shape[1]
    eps = D ** (-1.0 / 3.0) if kernel == "mala" else D ** (-0.25)  # optimal scaling orders (Roberts & Rosenthal)
    log_w = torch.full((num,), -math.log(num), dtype=torch.float64, device=z.device)
    return SMCState(p, log_w, 0.0, 0.0, float(eps), torch.arange(num, device=z.device), 0)


def _move(target, p: Particles, beta: float, eps: float, var: Tensor, kernel: str, num_leapfrog: int):
    if kernel == "mala":
        return mala_step(target, p, beta, eps, var)
    return hmc_step(target, p, beta, eps, var, num_leapfrog)


def _adapt(eps: float, acc: Tensor, kernel: str) -> float:
    """Robbins-Monro-like update of log eps towards the kernel's target acceptance."""
    return eps * math.exp(2.0 * (float(acc.mean()) - KERNELS[kernel]))


def mutate(target, p: Particles, var: Tensor, beta: float, eps: float, *, kernel: str, num_steps: int,
           num_leapfrog: int) -> tuple[Particles, float, float]:
    """``num_steps`` moves of every particle at ``beta`` in the metric ``var`` (D,): (particles, step
    size, mean acceptance)."""
    accs = []
    for _ in range(num_steps):
        p, acc = _move(target, p, beta, eps, var, kernel, num_leapfrog)
        accs.append(float(acc.mean()))
        eps = _adapt(eps, acc, kernel)
    return p, eps, sum(accs) / max(len(accs), 1)


def mutate_waste_free(target, p: Particles, log_w: Tensor, var: Tensor, beta: float, eps: float, *, kernel: str,
                      chain_length: int, num_leapfrog: int) -> tuple[Particles, float, float]:
    """Waste-free moves: M = N / P resampled starts, chains of P - 1 steps, every state kept."""
    N = p.z.shape[0]
    q = p.take(systematic_resample(log_w, N // chain_length))
    states, accs = [q], []
    for _ in range(chain_length - 1):
        q, acc = _move(target, q, beta, eps, var, kernel, num_leapfrog)
        states.append(q)
        accs.append(float(acc.mean()))
        eps = _adapt(eps, acc, kernel)
    out = Particles(*(torch.cat([s[i] for s in states]) for i in range(5)))
    return out, eps, sum(accs) / max(len(accs), 1)


def smc_step(target, state: SMCState, *, cess: float = 0.5, resample_ess: float = 0.5, kernel: str = "mala",
             num_steps: int = 10, num_leapfrog: int = 8, waste_free: Optional[int] = None,
             resampling: str = "systematic") -> tuple[SMCState, StageInfo]:
    """One stage: next temperature, reweight, resample if needed, mutate. See the module docstring.

    ``waste_free``: chain length P (N must be a multiple of it), or None for the standard moves;
    ``resampling``: ``systematic`` or ``multinomial`` (what the single-run variance assumes).
    """
    p, log_w = state.particles, state.log_w
    rest = torch.nan_to_num(p.rest.double(), nan=-math.inf)  # a NaN likelihood weighs nothing
    delta = next_delta(log_w, rest, state.beta, cess)
    beta = 1.0 if state.beta + delta >= 1.0 - 1e-12 else state.beta + delta
    a = log_w + (beta - state.beta) * rest
    log_inc = torch.logsumexp(a, 0)
    log_w = a - log_inc
    e = ess(log_w)
    var_z, eves = genealogy_variance(log_w, state.eve, state.num_resampled)
    eve, n_res = state.eve, state.num_resampled
    N = p.z.shape[0]
    per_move = 1 if kernel == "mala" else num_leapfrog
    # the metric from the weighted particles before resampling: the same distribution, more distinct points
    var = particle_variance(p.z, log_w)
    if waste_free:
        p, eps, acc = mutate_waste_free(target, p, log_w, var, beta, state.step_size, kernel=kernel,
                                        chain_length=waste_free, num_leapfrog=num_leapfrog)
        log_w = torch.full_like(log_w, -math.log(N))
        resampled, grads, eve = True, (N // waste_free) * (waste_free - 1) * per_move, None
    else:
        resampled = e < resample_ess * N
        if resampled:
            idx = RESAMPLERS[resampling](log_w)
            p, eve, n_res = p.take(idx), (None if eve is None else eve[idx]), n_res + 1
            log_w = torch.full_like(log_w, -math.log(N))
        p, eps, acc = mutate(target, p, var, beta, state.step_size, kernel=kernel, num_steps=num_steps,
                             num_leapfrog=num_leapfrog)
        grads = N * num_steps * per_move
    new = SMCState(p, log_w, beta, state.log_evidence + float(log_inc), eps, eve, n_res)
    return new, StageInfo(beta, float(log_inc), e, bool(resampled), acc, eps, grads, var_z, eves)


__all__ = ["SMCState", "StageInfo", "smc_init", "smc_step", "next_delta", "systematic_resample", "ess",
           "multinomial_resample", "genealogy_variance", "RESAMPLERS",
           "particle_variance", "mutate", "mutate_waste_free"]
