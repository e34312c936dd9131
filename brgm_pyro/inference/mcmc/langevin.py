r"""Langevin samplers (SGLD, pSGLD, MALA) as one Pyro MCMC kernel.

Target: the posterior density :math:`\pi(z) \propto e^{-U(z)}` of the unconstrained latent
:math:`z \in \mathbb{R}^D` (for BRGM, ``z = vec(w)``, ``D = B L d``), with the potential
:math:`U = -\log p(w) - \log p(y \mid w)` that Pyro builds from the model.

One step with a preconditioner :math:`G` (identity, diagonal, or dense SPD with
:math:`G = L L^\top`), step size :math:`\epsilon`:

.. math::

    z' = z - \tfrac{\epsilon}{2} G \nabla U(z) + \sqrt{\epsilon}\, L \xi,
    \qquad \xi \sim \mathcal N(0, I_D).

* **SGLD** (Welling & Teh 2011): ``G = 1``, every proposal kept, step size
  :math:`\epsilon_t = \epsilon_0 (1 + t / t_0)^{-\gamma}` (``schedule="poly"``) or constant. On one
  image there is no data subsampling, so the gradient is exact and SGLD is the unadjusted Langevin
  algorithm (ULA); its bias is O(epsilon) (for a Gaussian with precision eigenvalue
  :math:`\lambda` the stationary variance is :math:`1/(\lambda(1 - \epsilon\lambda/4))`).
* **pSGLD** (Li et al. 2016): RMSprop preconditioner
  :math:`V \leftarrow \alpha V + (1-\alpha)\nabla U^{2}`, :math:`G = 1/(\delta + \sqrt V)`. ``V`` is
  started at its stationary expectation :math:`E_\pi[\nabla U^2] = \mathrm{diag}(H)` (Hutchinson
  probes of the Hessian at the start, *not* at zero: at a MAP warm start the gradient vanishes and
  :math:`G = 1/\delta` would blow the first steps up) and frozen after warm-up so that the
  draws come from a time-homogeneous chain (the :math:`\Gamma` drift term is then zero).
* **MALA** (``metropolis=True``): the proposal above is accepted with probability
  :math:`\min\{1, e^{U(z) - U(z')} q(z \mid z') / q(z' \mid z)\}` with
  :math:`\log q(z' \mid z) = -\lVert z' - z + \tfrac{\epsilon}{2} G \nabla U(z)\rVert^2_{G^{-1}} / (2\epsilon)`:
  exact for any step size. During warm-up :math:`\log\epsilon` is adapted towards acceptance 0.574.

Step size ``"auto"`` (what makes the sampler stable on BRGM posteriors, whose curvature spans
orders of magnitude): :math:`\epsilon_0 = c / \lambda_{max}(G^{1/2} H G^{1/2})` with the largest
eigenvalue of the (preconditioned) Hessian at the start found by power iteration on
finite-difference Hessian-vector products; ULA is stable iff :math:`\epsilon\lambda_{max} < 4`.

BlackJAX-style functional core: :func:`langevin_init` and :func:`langevin_step` on flat tensors;
:class:`Langevin` wraps them as a :class:`pyro.infer.mcmc.mcmc_kernel.MCMCKernel` (dict params,
setup/cleanup, warm-up tracking, thinning, diagnostics) for :class:`pyro.infer.MCMC`.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Callable, NamedTuple, Optional

import torch
from pyro.infer.mcmc.mcmc_kernel import MCMCKernel
from pyro.infer.mcmc.util import initialize_model, init_to_uniform
from torch import Tensor

from brgm_pyro.errors import BRGMError

GradFn = Callable[[Tensor], "tuple[Tensor, Tensor]"]  # z (D,) -> (U (), grad U (D,))


class LangevinState(NamedTuple):
    """Chain state: position ``z`` (D,), potential ``U(z)`` () and its gradient (D,)."""

    z: Tensor
    potential: Tensor
    grad: Tensor


class LangevinInfo(NamedTuple):
    """What one step did: acceptance probability (1 without Metropolis), accepted, diverging."""

    accept_prob: float
    accepted: bool
    diverging: bool


class DensePreconditioner:
    """A dense preconditioner G (D, D), symmetric positive definite, kept with its Cholesky factor.

    Used as ``precond`` of :func:`langevin_step` (e.g. the Laplace covariance at the MAP, see
    :mod:`brgm_pyro.inference.mcmc.laplace`).
    """

    def __init__(self, G: Tensor) -> None:
        self.G = G
        self.L = torch.linalg.cholesky(G)

    def apply(self, v: Tensor) -> Tensor:  # G v
        return self.G @ v

    def sqrt_apply(self, v: Tensor) -> Tensor:  # L v  (L L^T = G)
        return self.L @ v

    def sqrt_apply_t(self, v: Tensor) -> Tensor:  # L^T v
        return self.L.T @ v

    def inv_quad(self, r: Tensor) -> Tensor:  # r^T G^-1 r
        u = torch.linalg.solve_triangular(self.L, r[:, None], upper=False)
        return (u * u).sum()


class DiagPreconditioner:
    """A diagonal preconditioner G = diag(g), g (D,) positive."""

    def __init__(self, g: Tensor) -> None:
        self.g = g
        self.s = g.sqrt()

    def apply(self, v: Tensor) -> Tensor:
        return self.g * v

    def sqrt_apply(self, v: Tensor) -> Tensor:
        return self.s * v

    sqrt_apply_t = sqrt_apply

    def inv_quad(self, r: Tensor) -> Tensor:
        return (r * r / self.g).sum()


def _as_precond(p):
    if p is None or isinstance(p, (DensePreconditioner, DiagPreconditioner)):
        return p
    return DiagPreconditioner(p)


def langevin_init(z: Tensor, grad_fn: GradFn) -> LangevinState:
    """Initial state at ``z`` (D,): one potential and gradient evaluation."""
    u, g = grad_fn(z)
    return LangevinState(z.detach(), u.detach(), g.detach())


def _log_q(z_to: Tensor, z_from: Tensor, grad_from: Tensor, eps: float, precond) -> Tensor:
    P = _as_precond(precond)
    if P is None:
        return -((z_to - z_from + 0.5 * eps * grad_from) ** 2).sum() / (2.0 * eps)
    mean = z_from - 0.5 * eps * P.apply(grad_from)
    return -P.inv_quad(z_to - mean) / (2.0 * eps)


def langevin_step(state: LangevinState, grad_fn: GradFn, step_size: float,
                  precond: Optional[Tensor] = None, metropolis: bool = False,
                  noise: Optional[Tensor] = None, uniform: Optional[float] = None,
                  max_delta: float = 1000.0) -> "tuple[LangevinState, LangevinInfo]":
    """One (preconditioned, optionally Metropolis-adjusted) Langevin step.

    Args:
        state: current :class:`LangevinState`.
        grad_fn: ``z (D,) -> (U(z) (), grad U(z) (D,))``.
        step_size: epsilon > 0.
        precond: preconditioner ``G``: None (identity), a positive (D,) tensor (diagonal), or a
            :class:`DiagPreconditioner` / :class:`DensePreconditioner`.
        metropolis: accept/reject (MALA) instead of always moving (ULA/SGLD).
        noise: the standard normal ``xi`` (D,) (drawn with ``torch.randn`` when None).
        uniform: the U(0, 1) draw for the accept test (drawn when None).
        max_delta: a proposal with non-finite potential or gradient, or with
            ``U(z') - U(z) > max_delta``, is a divergence: it is rejected (also without Metropolis,
            which keeps the chain finite; divergences are reported in sample_stats).
    """
    z, u, g = state
    P = _as_precond(precond)
    xi = torch.randn_like(z) if noise is None else noise
    if P is None:
        z_new = z - 0.5 * step_size * g + math.sqrt(step_size) * xi
    else:
        z_new = z - 0.5 * step_size * P.apply(g) + math.sqrt(step_size) * P.sqrt_apply(xi)
    u_new, g_new = grad_fn(z_new)
    delta = float(u_new - u)
    finite = math.isfinite(delta) and bool(torch.isfinite(g_new).all())
    if not finite or delta > max_delta:
        return state, LangevinInfo(0.0, False, True)
    new = LangevinState(z_new.detach(), u_new.detach(), g_new.detach())
    if not metropolis:
        return new, LangevinInfo(1.0, True, False)
    log_ratio = (u - u_new) + _log_q(z, z_new, g_new, step_size, P) - _log_q(z_new, z, g, step_size, P)
    accept_prob = float(torch.clamp(log_ratio, max=0.0).exp())
    r = float(torch.rand(())) if uniform is None else uniform
    if r < accept_prob:
        return new, LangevinInfo(accept_prob, True, False)
    return state, LangevinInfo(accept_prob, False, False)


def hessian_vector_product(grad_fn: GradFn, z: Tensor, g: Tensor, v: Tensor, h: float = 1e-3) -> Tensor:
    """Finite-difference ``H v ~ (grad U(z + h v / |v|) - grad U(z)) |v| / h`` (one gradient)."""
    nv = float(v.norm())
    if nv == 0.0:
        return torch.zeros_like(v)
    _, g2 = grad_fn(z + (h / nv) * v)
    return (g2 - g) * (nv / h)


def max_curvature(grad_fn: GradFn, state: LangevinState, precond: Optional[Tensor] = None,
                  iters: int = 20, seed: int = 0) -> float:
    r"""Largest eigenvalue of :math:`G^{1/2} H G^{1/2}` at ``state`` by power iteration (``iters`` gradients).

    Negative curvature (a saddle) is folded in by iterating on :math:`|H|`'s dominant direction.
    """
    P = _as_precond(precond)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    v = torch.randn(state.z.shape, generator=gen, dtype=state.z.dtype).to(state.z.device)
    v = v / v.norm()
    lam = 0.0
    for _ in range(iters):
        if P is None:
            hv = hessian_vector_product(grad_fn, state.z, state.grad, v)
        else:
            hv = P.sqrt_apply_t(hessian_vector_product(grad_fn, state.z, state.grad, P.sqrt_apply(v)))
        if not torch.isfinite(hv).all():
            break
        lam = float(hv.norm())
        if lam == 0.0:
            break
        v = hv / lam
    return max(lam, 1e-12)


def hutchinson_diag(grad_fn: GradFn, state: LangevinState, probes: int = 8, seed: int = 0) -> Tensor:
    """``|diag H|`` estimated as ``mean_k |xi_k * (H xi_k)|`` with Rademacher probes (``probes`` gradients)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    acc = torch.zeros_like(state.z)
    for _ in range(probes):
        xi = (torch.randint(0, 2, state.z.shape, generator=gen) * 2 - 1).to(state.z)
        acc += xi * hessian_vector_product(grad_fn, state.z, state.grad, xi)
    return (acc / probes).abs()


class Langevin(MCMCKernel):
    r"""SGLD / pSGLD / MALA kernel for :class:`pyro.infer.MCMC` on any Pyro model with continuous latents.

    Each call of :meth:`sample` (one MCMC draw) makes ``thin`` Langevin steps. Warm-up is the first
    ``warmup_steps`` draws given to :meth:`setup`: the preconditioner (pSGLD) and the step size
    (MALA) adapt only then and are frozen afterwards.

    Args:
        model: Pyro model (or give ``potential_fn`` and ``initial_params`` instead).
        potential_fn: ``dict -> U`` on unconstrained params, instead of a model.
        step_size: epsilon_0, or ``"auto"`` = ``auto_scale / lambda_max`` (see module doc).
        auto_scale: c in the ``"auto"`` rule (default 1.0 with Metropolis, 0.5 without).
        metropolis: MALA (exact) instead of SGLD/ULA.
        preconditioner: ``"identity"``, ``"rmsprop"`` (pSGLD), a fixed positive tensor (D,)
            (diagonal), a symmetric positive definite (D, D) tensor or a :class:`DensePreconditioner`
            (e.g. the Laplace covariance at the MAP: ``preconditioner="laplace"`` in the runner).
        rmsprop_alpha, rmsprop_delta: pSGLD's decay alpha and floor delta (relative to the median
            of ``sqrt(V)`` at the start, so the floor is scale-free).
        schedule: ``"constant"`` or ``"poly"``: :math:`\epsilon_t = \epsilon_0 (1 + t/t_0)^{-\gamma}`
            over all steps (warm-up included).
        decay_gamma, decay_t0: gamma and t_0 of the ``"poly"`` schedule.
        target_accept: MALA warm-up target.
        thin: Langevin steps per returned draw.
        init_strategy, transforms, max_plate_nesting: as for Pyro's HMC.
    """

    def __init__(self, model=None, potential_fn=None, step_size="auto", auto_scale=None,
                 metropolis=False, preconditioner="identity", rmsprop_alpha=0.99,
                 rmsprop_delta=1e-3, schedule="constant", decay_gamma=0.55, decay_t0=100.0,
                 target_accept=0.574, thin=1, init_strategy=init_to_uniform, transforms=None,
                 max_plate_nesting=None, seed=0):
        if model is None and potential_fn is None:
            raise BRGMError("Langevin kernel needs a model or a potential_fn")
        if not (step_size == "auto" or (isinstance(step_size, (int, float)) and step_size > 0)):
            raise BRGMError(f"step_size must be 'auto' or a positive number, got {step_size!r}")
        if schedule not in ("constant", "poly"):
            raise BRGMError(f"schedule must be 'constant' or 'poly', got {schedule!r}")
        if isinstance(preconditioner, str) and preconditioner not in ("identity", "rmsprop"):
            raise BRGMError(f"preconditioner must be 'identity', 'rmsprop' or a tensor, got {preconditioner!r}")
        if int(thin) < 1:
            raise BRGMError(f"thin must be >= 1, got {thin}")
        self.model = model
        self.potential_fn = potential_fn
        self.transforms = transforms
        self._max_plate_nesting = max_plate_nesting
        self._init_strategy = init_strategy
        self._step_size_arg = step_size
        self.auto_scale = auto_scale if auto_scale is not None else (1.0 if metropolis else 0.5)
        self.metropolis = bool(metropolis)
        self.preconditioner = preconditioner
        self.rmsprop_alpha, self.rmsprop_delta = rmsprop_alpha, rmsprop_delta
        self.schedule, self.decay_gamma, self.decay_t0 = schedule, decay_gamma, decay_t0
        self.target_accept = target_accept
        self.thin = int(thin)
        self.seed = seed
        self._initial_params = None
        self._reset()

    # ----------------------------------------------------------------- Pyro kernel protocol
    def _reset(self):
        self._t = 0  # draws made (MCMC calls of sample)
        self._steps = 0  # Langevin steps made
        self._warmup_steps = 0
        self._state: Optional[LangevinState] = None
        self._precond: Optional[Tensor] = None
        self._V: Optional[Tensor] = None
        self._floor = 0.0
        self.step_size = float("nan") if self._step_size_arg == "auto" else float(self._step_size_arg)
        self._log_eps_bar = 0.0
        self._log_eps_n = 0
        self._divergences: list[int] = []
        self._accept_sum = 0.0
        self._accept_n = 0
        self.num_grad_evals = 0
        self.last_info: dict = {}

    @property
    def initial_params(self):
        return self._initial_params

    @initial_params.setter
    def initial_params(self, params):
        self._initial_params = params

    def setup(self, warmup_steps, *args, **kwargs):
        self._reset()
        self._warmup_steps = int(warmup_steps)
        if self.model is not None:
            init_params, potential_fn, transforms, _ = initialize_model(
                self.model, model_args=args, model_kwargs=kwargs, transforms=self.transforms,
                max_plate_nesting=self._max_plate_nesting, init_strategy=self._init_strategy,
                initial_params=self._initial_params)
            self.potential_fn = potential_fn
            self.transforms = transforms
            if self._initial_params is None:
                self._initial_params = init_params
        elif self._initial_params is None:
            raise BRGMError("Langevin kernel with a potential_fn needs initial_params")
        if self.transforms is None:
            self.transforms = {}
        self._names = sorted(self._initial_params)
        self._shapes = [self._initial_params[k].shape for k in self._names]
        self._sizes = [int(math.prod(s)) for s in self._shapes]

    def cleanup(self):
        self._state = None

    def logging(self):
        return OrderedDict([("step size", f"{self.step_size:.2e}"),
                            ("acc. prob", f"{self.mean_accept_prob:.3f}")])

    def diagnostics(self):
        return {"divergences": list(self._divergences),
                "acceptance rate": self.mean_accept_prob}

    @property
    def mean_accept_prob(self) -> float:
        return self._accept_sum / max(self._accept_n, 1)

    # ----------------------------------------------------------------- flat <-> dict
    def _flatten(self, params: dict) -> Tensor:
        return torch.cat([params[k].detach().reshape(-1) for k in self._names])

    def _unflatten(self, z: Tensor) -> dict:
        out, i = {}, 0
        for k, shape, n in zip(self._names, self._shapes, self._sizes):
            out[k] = z[i:i + n].reshape(shape)
            i += n
        return out

    def _grad_fn(self, z: Tensor):
        self.num_grad_evals += 1
        zz = z.detach().requires_grad_(True)
        u = self.potential_fn(self._unflatten(zz))
        (g,) = torch.autograd.grad(u, zz)
        return u.detach(), g.detach()

    # ----------------------------------------------------------------- adaptation
    def _update_precond(self, g: Tensor) -> None:
        a = self.rmsprop_alpha
        self._V = a * self._V + (1 - a) * g * g
        self._precond = 1.0 / (self._floor + self._V.sqrt())

    def _start(self, params: dict) -> None:
        self._state = langevin_init(self._flatten(params), self._grad_fn)
        if not (torch.isfinite(self._state.grad).all() and torch.isfinite(self._state.potential)):
            raise BRGMError("Langevin: the potential or its gradient is not finite at the initial point")
        D = self._state.z.numel()
        if isinstance(self.preconditioner, DensePreconditioner):
            self._precond = self.preconditioner
        elif isinstance(self.preconditioner, torch.Tensor) and self.preconditioner.ndim == 2:
            p = self.preconditioner.detach().to(self._state.z)
            if tuple(p.shape) != (D, D):
                raise BRGMError(f"Langevin: a matrix preconditioner must be ({D}, {D}); got {tuple(p.shape)}")
            try:
                self._precond = DensePreconditioner(p)
            except RuntimeError:
                raise BRGMError("Langevin: the matrix preconditioner is not positive definite") from None
        elif isinstance(self.preconditioner, torch.Tensor):
            p = self.preconditioner.detach().reshape(-1).to(self._state.z)
            if p.numel() != D or not bool((p > 0).all()):
                raise BRGMError("Langevin: a tensor preconditioner must be positive with one entry per latent")
            self._precond = p
        elif self.preconditioner == "rmsprop":
            self._V = hutchinson_diag(self._grad_fn, self._state, seed=self.seed) + self._state.grad ** 2
            self._floor = self.rmsprop_delta * float(self._V.sqrt().median().clamp_min(1e-12))
            self._precond = 1.0 / (self._floor + self._V.sqrt())
        if self._step_size_arg == "auto":
            self._calibrate()

    def _calibrate(self) -> None:
        lam = max_curvature(self._grad_fn, self._state, self._precond, seed=self.seed)
        self.step_size = self.auto_scale / lam
        self._eps0 = self.step_size
        self._log_eps_bar, self._log_eps_n = 0.0, 0

    def _current_eps(self) -> float:
        if self.schedule == "poly":
            return self._eps0 * (1.0 + self._steps / self.decay_t0) ** (-self.decay_gamma)
        return self.step_size

    def _end_warmup(self) -> None:
        if self.metropolis and self._log_eps_n > 0:
            self.step_size = math.exp(self._log_eps_bar / self._log_eps_n)
            self._eps0 = self.step_size
        elif self.preconditioner == "rmsprop" and self._step_size_arg == "auto":
            self._calibrate()  # the preconditioner is now frozen: re-fit the step to it

    # ----------------------------------------------------------------- one draw
    def sample(self, params):
        if self._state is None:
            self._start(params)
            self._eps0 = self.step_size
        warm = self._t < self._warmup_steps
        acc_sum, n_acc, div = 0.0, 0, False
        eps = self._current_eps()
        for _ in range(self.thin):
            eps = self._current_eps()
            self._state, info = langevin_step(self._state, self._grad_fn, eps, self._precond, self.metropolis)
            self._steps += 1
            acc_sum += info.accept_prob
            n_acc += int(info.accepted)
            div = div or info.diverging
            if warm:
                if self.preconditioner == "rmsprop":
                    self._update_precond(self._state.grad)
                if self.metropolis:
                    self._adapt_step(info.accept_prob)
                if not self.metropolis and info.diverging and self._step_size_arg == "auto":
                    self.step_size *= 0.5  # a warm-up divergence halves the (auto) step size
                    self._eps0 = self.step_size
        self._t += 1
        if self._t == self._warmup_steps:
            self._end_warmup()
        acc = acc_sum / self.thin
        if not warm:
            self._accept_sum += acc
            self._accept_n += 1
            if div:
                self._divergences.append(self._t - 1 - self._warmup_steps)
        self.last_info = {"step_size": eps, "accept_prob": acc, "accepted": n_acc / self.thin,
                          "diverging": div, "potential_energy": float(self._state.potential),
                          "n_steps": self.thin}
        return self._unflatten(self._state.z.clone())

    def _adapt_step(self, accept_prob: float) -> None:
        # Robbins-Monro on log(eps) towards target acceptance; average log eps over the second half.
        k = self._steps
        self.step_size *= math.exp((accept_prob - self.target_accept) / math.sqrt(k + 10.0))
        self._eps0 = self.step_size
        if k * 2 >= self._warmup_steps * self.thin:
            self._log_eps_bar += math.log(self.step_size)
            self._log_eps_n += 1
