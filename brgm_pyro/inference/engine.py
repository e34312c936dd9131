"""The optimisation loop shared by MAP and VI, and the ELBO with its terms.

For a guide q and the model p(w, y), with P reparameterised particles w^(p) ~ q:

    ELBO = (1/P) sum_p [ log p(w^(p)) + log p(y | w^(p)) ] + H[q]            (entropy included)
    loss = -ELBO - sum_j log InvGamma(sigma_v,j | alpha, beta)                (optional hyperprior)

Each term is tracked separately (prior, colinearity, pixel, perceptual, entropy, hyperprior), as
the negative of its log density, so the histories add up to ``loss``. H[q] is exact when the
guide has a closed form (AutoNormal, AutoDiagonalNormal, AutoMultivariateNormal,
AutoLowRankMultivariateNormal) and a Monte-Carlo estimate ``-(1/P) sum_p log q(w^(p))``
otherwise. For MAP (AutoDelta) there is no entropy and the loss is ``-log p(w_MAP, y)``:
:class:`LogJointTerms` evaluates it with one trace of the model conditioned on the guide's
values (the same ``log_density_terms`` behind MCMC's checks and ArviZ's ``sample_stats``).

The model and the guide run once per step (traces are replayed, never re-run; for MAP only the
model runs), so the per-step cost is one generator forward and backward plus Pyro's bookkeeping.
When P particles do not fit the model's memory budget together, the model's part of the ELBO (a
sum over particles) is evaluated and differentiated a chunk of particles at a time, with the
same value and gradient (:mod:`brgm_pyro.memory`).
"""

from __future__ import annotations

import math
import operator
import time
from typing import Callable, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoContinuous, AutoGuideList, AutoNormal
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import pyro_internals
from brgm_pyro.memory import chunked_grad, items_per_chunk, surrogate
from brgm_pyro.models.brgm import BRGMModel
from brgm_pyro.models.density import log_density_terms, trace_terms

ENTROPY, HYPERPRIOR, LOSS = "entropy", "hyperprior", "loss"


def _particles(fn: Callable, num: int, always: bool = False) -> Callable:
    """Run ``fn`` inside a vectorised particle plate (left of the images plate); for ``num == 1``
    without it unless ``always`` (callers that need the leading particle dim even for one draw)."""
    if num == 1 and not always:
        return fn

    def wrapped(*args, **kwargs):
        with pyro.plate("particles", num, dim=-2):
            return fn(*args, **kwargs)

    return wrapped


def _autonormal_scales(guide: AutoNormal) -> Tensor:
    """All of an AutoNormal's sigma_v = softplus(rho_v), flattened."""
    return torch.cat([pyro_internals.autonormal_scale(guide, n).reshape(-1)
                      for n in pyro_internals.autonormal_sites(guide)])


def _continuous_slices(guide: AutoContinuous) -> dict[str, slice]:
    """Where each site sits in an AutoContinuous guide's packed latent (Pyro's _unpack_latent order)."""
    out, pos = {}, 0
    for name, _ in guide.prototype_trace.iter_stochastic_nodes():
        n = math.prod(pyro_internals.autocontinuous_shapes(guide)[name])
        out[name] = slice(pos, pos + n)
        pos += n
    return out


def guide_marginal_std(guide, site: Optional[str] = None) -> Optional[Tensor]:
    """sigma_v: the marginal standard deviations of a Gaussian guide in unconstrained coordinates,
    flattened, for one ``site`` or (None) all of them; None for a guide without them."""
    if hasattr(guide, "marginal_std"):  # brgm_pyro.inference.guides: per-image structured guides
        return guide.marginal_std(site)
    if isinstance(guide, AutoGuideList):  # the parts that hold the site (all of them for None)
        parts = [guide_marginal_std(g, site) for g in guide if site is None or site in g.prototype_trace.nodes]
        parts = [p for p in parts if p is not None]
        return parts[0] if site is not None and parts else (torch.cat(parts) if parts else None)
    if isinstance(guide, AutoNormal):
        if site is not None:
            return pyro_internals.autonormal_scale(guide, site).reshape(-1)
        return _autonormal_scales(guide)
    if isinstance(guide, AutoContinuous):
        post = guide.get_posterior()
        if isinstance(post, dist.LowRankMultivariateNormal):  # its scale_tril is a dense D x D Cholesky
            sd = post.variance.sqrt()
        elif hasattr(post, "scale_tril"):
            sd = post.scale_tril.pow(2).sum(-1).sqrt()
        elif hasattr(post, "variance"):
            try:
                sd = post.variance.sqrt()
            except NotImplementedError:
                return None
        else:
            return None
        return sd if site is None else sd[_continuous_slices(guide)[site]]
    return None


def analytic_entropy(guide) -> Optional[Tensor]:
    """H[q] of the guide's unconstrained Gaussian in closed form; None when there is none."""
    if hasattr(guide, "analytic_entropy"):
        return guide.analytic_entropy()
    if isinstance(guide, AutoGuideList):
        parts = [analytic_entropy(g) for g in guide]
        return None if any(h is None for h in parts) else sum(parts)
    if isinstance(guide, AutoNormal):
        scales = _autonormal_scales(guide)
        return scales.log().sum() + 0.5 * scales.numel() * (1.0 + math.log(2 * math.pi))
    if isinstance(guide, AutoContinuous):
        try:
            return guide.get_posterior().entropy()
        except NotImplementedError:
            return None
    return None


def _constrained_sites(guide) -> list[str]:
    """The guide's latent sites whose support is not the real line (their Jacobian enters H[q])."""
    out = []
    for name, site in guide.prototype_trace.iter_stochastic_nodes():
        support = site["fn"].support
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if support is not constraints.real:
            out.append(name)
    return out


class ELBOTerms:
    r"""Computes the loss and its named terms in one pass of guide and model.

    Every latent site of the model enters (``model.site_terms()``): the W+ prior and its
    factors, the hyperpriors of learned scalars (noise level, kernel width) and the likelihoods.
    For a guide over unconstrained coordinates u with x = T(u), the entropy of q over x is
    :math:`H[q_x] = H[q_u] + E_q[\log|\det \partial T/\partial u|]`: the closed-form Gaussian
    part plus a Monte-Carlo Jacobian term for the constrained sites (e.g. sigma = exp(u)).

    Args:
        model: the BRGM model.
        guide: any Pyro guide over the model's latent sites (AutoDelta for MAP).
        num_particles: P, vectorised.
        entropy: include H[q] (False for MAP / point-mass guides).
        hyperprior: (alpha, beta) of an inverse-gamma prior on the guide's sigma_v of the W+
            prior's site, or None. The learned scalars get none: their posterior is the ELBO's.
        hyperprior_units: ``"prior"`` (default): the inverse-gamma is on sigma_v / sigma_ref with
            sigma_ref the prior's :meth:`~brgm_pyro.models.priors.Prior.reference_scale`, so the
            paper's (0.1, 0.95) means the same thing for every generator (the paper's StyleGAN2 W
            has std near 1); ``"absolute"``: on sigma_v itself, as in the paper's formula.
    """

    def __init__(self, model: BRGMModel, guide, num_particles: int = 1, entropy: bool = True,
                 hyperprior: Optional[tuple[float, float]] = None, hyperprior_units: str = "prior") -> None:
        self.model, self.guide = model, guide
        self.num_particles = int(num_particles)
        self.entropy = entropy
        self.hyperprior = hyperprior
        self.site_terms = model.site_terms()
        self.names = list(dict.fromkeys(self.site_terms.values()))
        if entropy:
            self.names.append(ENTROPY)
        if hyperprior is not None:
            self.names.append(HYPERPRIOR)
        self._m = _particles(model, self.num_particles)
        self._g = _particles(guide, self.num_particles)
        self._analytic: Optional[bool] = None
        self._jacobian_sites: Optional[list[str]] = None
        self._first = True
        if hyperprior_units not in ("prior", "absolute"):
            raise BRGMError("hyperprior_units must be 'prior' or 'absolute'")
        self.hyperprior_units = hyperprior_units
        self._ref_scale: Optional[Tensor] = None
        #: particles per generator pass: None follows the model's memory budget (brgm_pyro.memory)
        self.chunk: Optional[int] = None

    def _reference_scale(self, y: Tensor, n: int) -> Tensor | float:
        """The prior's reference std of every guide coordinate of w (flattened like sigma_v), or 1."""
        if self.hyperprior_units == "absolute":
            return 1.0
        if self._ref_scale is None:
            ref = self.model.prior.reference_scale()
            if ref is None:
                raise BRGMError(f"the prior {type(self.model.prior).__name__} states no reference scale, which "
                                "the VI hyperprior in 'prior' units needs; use hyperprior_units='absolute' or "
                                "hyperprior=None")
            ref = ref.expand(y.shape[0], *ref.shape[-2:]).reshape(-1).to(y)
            if ref.numel() != n:
                raise BRGMError(f"the prior's reference scale has {ref.numel()} entries, the guide's w {n}")
            self._ref_scale = ref
        return self._ref_scale

    def _entropy(self, g_tr) -> Tensor:
        P = self.num_particles
        h = analytic_entropy(self.guide) if self._analytic is not False else None
        if self._analytic is None:
            self._analytic = h is not None
        if h is None:  # Monte Carlo: -E_q[log q(x)] (the guide's Delta sites carry -log|J|)
            g_tr.compute_log_prob()
            logq = sum(s["log_prob_sum"] for s in g_tr.nodes.values()
                       if s["type"] == "sample" and not s["is_observed"] and "log_prob_sum" in s)
            return -logq / P
        if self._jacobian_sites is None:
            self._jacobian_sites = _constrained_sites(self.guide)
        for name in self._jacobian_sites:  # + E_q[log|J|] = - E_q[Delta log_density]
            ld = getattr(g_tr.nodes[name]["fn"], "log_density", 0.0)
            h = h - (ld.sum() if isinstance(ld, Tensor) else ld) / P
        return h

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Return (loss, terms) with terms a 1-D tensor aligned with ``self.names`` (losses).

        Pyro's argument validation runs on the first call only: it would turn a NaN into an
        exception instead of a clean stop, and it costs time on every step of the hot loop.
        """
        with pyro.validation_enabled(self._first):
            self._first = False
            g_tr = poutine.trace(self._g).get_trace(y)
            P = self.num_particles
            chunk = self.chunk if self.chunk is not None else items_per_chunk(self.model, P, y.shape[0])
            carry = None
            if chunk >= P:  # one batch: replay the model under the guide's trace
                m_tr = poutine.trace(poutine.replay(self._m, trace=g_tr)).get_trace(y)
                terms: dict[str, Tensor] = {k: -v / P for k, v in trace_terms(m_tr, self.site_terms).items()}
            else:
                terms, carry = self._chunked_terms(g_tr, y, chunk)
        if self.entropy:
            terms[ENTROPY] = -self._entropy(g_tr)
        if self.hyperprior is not None:
            alpha, beta = self.hyperprior
            s = guide_marginal_std(self.guide, self.model.image_site)
            if s is None:
                raise BRGMError(f"the VI hyperprior needs a Gaussian guide with marginal scales; "
                                f"{type(self.guide).__name__} has none (use hyperprior=None)")
            s = s / self._reference_scale(y, s.numel())
            # log InvGamma(s | a, b) = a log b - lgamma(a) - (a + 1) log s - b / s
            logp = (alpha * math.log(beta) - math.lgamma(alpha) - (alpha + 1) * s.log() - beta / s).sum()
            terms[HYPERPRIOR] = -logp
        vec = torch.stack([torch.as_tensor(terms[n]) for n in self.names])
        return (vec.sum() if carry is None else vec.sum() + carry), vec

    def _chunked_terms(self, g_tr, y: Tensor, chunk: int) -> tuple[dict[str, Tensor], Tensor]:
        """The particle-average terms computed ``chunk`` particles at a time (:mod:`brgm_pyro.memory`).

        The log joint of P particles is a sum over them: its gradient with respect to the guide's
        draws (P, B, ...) is accumulated chunk by chunk (one chunk's generator graph at a time), then
        carried on to the guide's parameters by the returned zero-valued surrogate. Returns the
        terms (detached, as losses) and that surrogate, to be added to the loss."""
        P = self.num_particles
        values = {name: g_tr.nodes[name]["value"] for name in self.model.latent_sites()}
        order = [n for n in self.names if n in self.site_terms.values()]

        def fn(part: dict[str, Tensor]) -> Tensor:
            t = log_density_terms(self.model, y, part)  # term -> (c,)
            return torch.stack([-t[n].sum() / P if n in t else torch.zeros((), device=y.device) for n in order])

        total, grads = chunked_grad(fn, values, chunk)
        return dict(zip(order, total)), surrogate(values, grads)


class LogJointTerms:
    r"""MAP's loss :math:`-\log p(\theta, w, y)` and its named terms, in one trace of the model.

    For a point-mass guide (``AutoDelta``) the entropy-free ELBO is the log joint at the guide's
    values, so there is no need to trace the guide and replay the model under it: the values
    are read as ``AutoDelta.forward`` reads them (its constrained ``PyroParam`` of every latent
    site, so gradients reach the unconstrained parameters Adam moves) and scored by
    :func:`~brgm_pyro.models.density.log_density_terms`. Same loss, terms and gradients as
    ``ELBOTerms(model, guide, entropy=False)`` (tested), ~0.5 ms (2 %) less per step on the faces
    generator at batch 1 (a guide trace and a replay saved: docs/vs_reference.md).
    """

    def __init__(self, model: BRGMModel, guide) -> None:
        if getattr(guide, "prototype_trace", None) is None:
            raise BRGMError("LogJointTerms needs an AutoDelta guide that has run once (guide(y))")
        self.model, self.guide = model, guide
        self.names = list(dict.fromkeys(model.site_terms().values()))
        self._getters = {name: operator.attrgetter(name) for name, _ in guide.prototype_trace.iter_stochastic_nodes()}
        self._first = True

    def values(self) -> dict[str, Tensor]:
        """The guide's current value of every latent site (differentiable)."""
        return {name: get(self.guide) for name, get in self._getters.items()}

    def __call__(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(loss, terms) like :class:`ELBOTerms`; Pyro's validation on the first call only."""
        with pyro.validation_enabled(self._first):
            self._first = False
            terms = log_density_terms(self.model, y, self.values())
        vec = torch.stack([-torch.as_tensor(terms[n]) for n in self.names])
        return vec.sum(), vec


def lr_factor(i: int, steps: int, lr_decay: float, lr_rampdown: float = 0.0) -> float:
    """Multiplier of the base learning rate used for Adam step ``i`` (0-based) of ``steps``.

    ``lr_rampdown = 0``: geometric, ``lr_decay ** (i / steps)`` (1 at the first step).
    ``lr_rampdown = r > 0``: 1 while ``(i + 1) / steps <= 1 - r``, then a half cosine down to
    ``lr_decay`` at the last step.
    """
    steps = max(int(steps), 1)
    if lr_rampdown <= 0:
        return lr_decay ** (i / steps)
    u = ((i + 1) / steps - (1.0 - lr_rampdown)) / lr_rampdown
    if u <= 0:
        return 1.0
    return lr_decay + (1.0 - lr_decay) * 0.5 * (1.0 + math.cos(math.pi * min(u, 1.0)))


def _adam_step(step: int, opt, sched, params: list[Tensor], good: list[Tensor],
               loss_fn: Callable[[], tuple[Tensor, Tensor]]) -> tuple[Optional[str], list[float]]:
    """One Adam step of :func:`optimise`: (why it stopped, or None; [loss, *terms]). ``good`` receives
    the parameters before the step, so that a non-finite loss or gradient keeps the last finite ones."""
    opt.zero_grad(set_to_none=True)
    loss, vec = loss_fn()
    if not torch.isfinite(loss):
        return f"non-finite loss at step {step}: kept the parameters of step {step - 1}", []
    loss.backward()
    if not all(torch.isfinite(p.grad).all() for p in params if p.grad is not None):
        return f"non-finite gradient at step {step}: kept the parameters of step {step - 1}", []
    for g, p in zip(good, params):
        g.copy_(p.detach())
    opt.step()
    if sched is not None:
        sched.step()
    return None, [float(loss.detach()), *vec.detach().tolist()]


def optimise(
    params_fn: Callable[[], list[Tensor]],
    loss_fn: Callable[[], tuple[Tensor, Tensor]],
    names: list[str],
    *,
    steps: int,
    lr: float,
    desc: str,
    progress: bool = True,
    callback: Optional[Callable[[int, dict[str, float]], Optional[bool]]] = None,
    lr_decay: float = 1.0,
    lr_rampdown: float = 0.0,
    checkpoint: Optional[Callable[[int], None]] = None,
    checkpoint_every: int = 100,
    after: Optional[Callable[[float], tuple[float, str]]] = None,
) -> dict:
    """Adam on ``params_fn()`` minimising ``loss_fn()``, with NaN safety and Ctrl-C handling.

    Learning rate: with ``lr_rampdown = 0`` it decays geometrically from ``lr`` to ``lr * lr_decay``
    over the run; with ``lr_rampdown = r in (0, 1]`` it stays at ``lr`` for the first ``1 - r`` of
    the steps and then falls along a half cosine to ``lr * lr_decay`` at the last step (the StyleGAN
    projector's ramp-down: a long exploratory phase, a short settling one).

    ``checkpoint(step)`` is called every ``checkpoint_every`` steps to save progress of long runs.
    ``after(first_step_s) -> (seconds, what)``: the work that follows the steps (rendering draws);
    with ``progress``, when the first step says the run will take over a minute, a line states the
    estimate (:func:`estimate_line`) before the rest runs.
    Stops early (keeping the last finite parameters) when the loss or a gradient is not finite,
    when ``callback`` returns False, or on KeyboardInterrupt. Returns history, timing, ``stopped``.
    """
    from tqdm.auto import tqdm

    params = params_fn()
    opt, sched = _adam(params, lr, steps, lr_decay, lr_rampdown)
    history: dict[str, list[float]] = {n: [] for n in [LOSS, *names]}
    step_times: list[float] = []
    step_cpu: list[float] = []  # this process's CPU seconds per step: steadier than wall time on a shared machine
    stopped: Optional[str] = None
    good = [p.detach().clone() for p in params]
    import sys

    # On a terminal the bar refreshes 10x a second; in a log file (not a TTY) once every 5 s, so
    # long runs leave a readable trace of the loss terms instead of a flood.
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(range(steps), desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=0.1 if tty else 5.0)
    t_start = time.perf_counter()
    try:
        for step in bar:
            t0, c0 = time.perf_counter(), time.process_time()
            stopped, vals = _adam_step(step, opt, sched, params, good, loss_fn)
            if stopped is not None:
                break
            for n, v in zip(history, vals):
                history[n].append(v)
            step_times.append(time.perf_counter() - t0)
            step_cpu.append(time.process_time() - c0)
            if step == 0 and progress:
                line = estimate_line(desc, steps, step_times[0], after)
                if line:
                    bar.write(line, file=sys.stderr)
            if progress and (step % 10 == 0 or step == steps - 1):
                bar.set_postfix({n[:6]: f"{v:.4g}" for n, v in zip(history, vals)}, refresh=False)
            if checkpoint is not None and (step + 1) % checkpoint_every == 0:
                checkpoint(step + 1)
            if callback is not None and callback(step, dict(zip(history, vals))) is False:
                stopped = f"stopped by callback at step {step}"
                break
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C): kept the last completed step"
    finally:
        bar.close()
    if stopped is not None and "non-finite" in stopped:
        with torch.no_grad():
            for g, p in zip(good, params):
                p.copy_(g)
    return {"history": history, "timing": _timing(time.perf_counter() - t_start, step_times, step_cpu),
            "stopped": stopped}


def _adam(params: list[Tensor], lr: float, steps: int, lr_decay: float, lr_rampdown: float):
    """Adam on ``params`` and its learning-rate schedule (None for a constant rate)."""
    if not 0.0 <= lr_rampdown <= 1.0:
        raise BRGMError(f"lr_rampdown must be in [0, 1], got {lr_rampdown}")
    opt = torch.optim.Adam(params, lr=lr)
    sched = None
    if lr_decay != 1.0:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, steps, lr_decay, lr_rampdown))
    return opt, sched


def _timing(total: float, step_times: list[float], step_cpu: list[float]) -> dict:
    """:func:`optimise`'s timing record: total, median wall and CPU seconds per step, steps done."""
    per = sorted(step_times)[len(step_times) // 2] if step_times else float("nan")
    later = step_cpu[1:] or step_cpu  # the first step also pays one-time costs (Pyro's checks, a memory probe)
    cpu = sorted(later)[len(later) // 2] if later else float("nan")
    return {"total_s": total, "per_step_s": per, "per_step_cpu_s": cpu, "steps": len(step_times)}


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else (f"{seconds / 60:.1f} min" if seconds < 5400 else
                                                     f"{seconds / 3600:.1f} h")


def estimate_line(desc: str, steps: int, first_step_s: float, after=None, threshold_s: float = 60.0
                  ) -> Optional[str]:
    """``"<desc>: about 9.1 min (30 steps x 16 s, then ~40 s rendering 8 draws)"`` when the steps
    plus ``after(first_step_s)`` exceed ``threshold_s``, else None. The first step is the slowest
    (Pyro's checks run once), so the estimate errs long."""
    extra, what = after(first_step_s) if after is not None else (0.0, "")
    total = steps * first_step_s + extra
    if total <= threshold_s:
        return None
    tail = f", then ~{_duration(extra)} {what}" if extra > 0 and what else ""
    return f"{desc}: about {_duration(total)} ({steps} steps x {first_step_s:.2g} s{tail})"


def save_checkpoint(path, tensors: dict[str, Tensor], meta: Optional[dict] = None) -> None:
    """Write tensors to a safetensors file atomically (:func:`brgm_pyro.io.atomic_path`)."""
    from safetensors.torch import save_file

    from brgm_pyro.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
                  metadata={k: str(v) for k, v in (meta or {}).items()})
