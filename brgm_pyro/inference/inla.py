r"""Integrated nested Laplace approximation (INLA) for a scalar latent: a learned noise level or an
inferred corruption parameter, and w given it.

Rue, Martino & Chopin (2009): for a model with a few hyperparameters theta and a high-dimensional
latent w, integrate w out with a Laplace approximation and integrate theta numerically on a grid,

.. math::

    p(\theta \mid y) \propto p(\theta)\, p(y \mid \theta), \qquad
    p(y \mid \theta) = \int p(y \mid w, \theta)\, p(w)\, dw .

Here the inner integral is the closed form of the model linearised at a point :math:`w_c` (the
MAP of w given the current estimate of theta), with the prior's Gaussian
:math:`w \sim N(\mu, S_0)` (mean :meth:`~Prior.init_value`, precision :meth:`~Prior.curvature`:
exact for the Gaussian prior; the colinearity factor of ``brgm`` is left out, as in the Laplace
metric) and the Gaussian pixel likelihood with per-element variance :math:`N_\theta`
(:math:`\sigma^2`, plus :math:`\tau^2 \mathrm{diag}(A A^\top)` with a discrepancy term):

.. math::

    f_\theta(G(w)) \approx p_\theta + J_\theta (w - w_c), \quad
    r_0 = y - p_\theta - J_\theta(\mu - w_c), \quad
    P_\theta = S_0^{-1} + J_\theta^\top N_\theta^{-1} J_\theta, \quad
    b = J_\theta^\top N_\theta^{-1} r_0,

    \log p(y \mid \theta) = -\tfrac12\big[r_0^\top N_\theta^{-1} r_0 - b^\top P_\theta^{-1} b
        + \log|N_\theta| + \log|P_\theta| + \log|S_0| + n \log 2\pi\big],
    \qquad w \mid y, \theta \sim N(\mu + P_\theta^{-1} b,\; P_\theta^{-1})

(Woodbury). For a linear generator with a Gaussian prior this *is* the exact posterior. theta
moves on a grid in its unconstrained coordinate u (log sigma, log width; the Jacobian enters the
density), first over the prior's range, then zoomed onto the posterior's mass; draws of u come
from the grid density's inverse CDF, and w | theta from the Gaussian. The linearisation point is
refined ``refine`` times: theta at its posterior mean, the conditional MAP of w again, a new
Jacobian.

Why: a learned noise level is what the fit leaves over, and the usual approximations bias it
(docs/latent_sites.md): the joint MAP over-fits an under-determined observation (x8 SR: 192 values
for 1,280 latent dimensions) and mean-field VI inflates sigma. Integrating w out removes both: on
the linearised model the evidence counts only the directions the data determine (MacKay's
gamma). Cost: one Jacobian of f(G(w)) per linearisation, min(n, D) passes (n observed values, D
latent dimensions; D forward-mode passes when theta is a corruption parameter), and a D x D
eigen- or Cholesky decomposition per image.

Supports one scalar latent site (per image or shared) owned by the pixel likelihood or the
corruption, or none (then it is the linearised Laplace approximation at the MAP); a Gaussian
pixel likelihood alone (no perceptual term: its ~2.4e5 features per image make the Jacobian too
large) and a linear corruption. Anything else is refused in one line.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import Tensor
from torch.distributions import biject_to

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.engine import optimise
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.sites import initial_values
from brgm_pyro.models.density import log_density_terms

DEFAULT_INLA_STEPS = 500
DEFAULT_REFINE_STEPS = 200
GRID_POINTS = 41


@dataclass
class _Parts:
    """What the method needs of the model: the pixel likelihood, the scalar latent (or None) and
    whether the corruption owns it (then J depends on theta)."""

    lik: object
    theta: object
    in_corruption: bool


def _parts(model) -> _Parts:
    from brgm_pyro.models.likelihoods import PixelGaussian

    name = "method inla"
    if len(model.likelihoods) != 1 or not isinstance(model.likelihoods[0], PixelGaussian):
        kinds = ", ".join(type(l).__name__ for l in model.likelihoods)
        raise BRGMError(f"{name} needs a Gaussian pixel likelihood alone; the model has {kinds} (build it without "
                        "the perceptual term: phi=None, --no-percept; noise='gaussian', --noise gaussian)")
    if not model.corruption.linear:
        raise BRGMError(f"{name} needs a linear corruption; {model.corruption.name!r} is not")
    if model.temperature != 1.0:
        raise BRGMError(f"{name} computes the untempered posterior (temperature 1)")
    lats = model.scalar_latents
    if len(lats) > 1:
        raise BRGMError(f"{name} integrates one scalar latent on a grid; the model has "
                        f"{', '.join(l.name for l in lats)}: fix all but one, or use nuts")
    if lats and lats[0] in model.prior.latents():
        raise BRGMError(f"{name} integrates latents of the likelihood or corruption; {lats[0].name!r} is the prior's")
    if model.prior.curvature() is None:
        raise BRGMError(f"the prior {type(model.prior).__name__} states no curvature, which {name} needs for its "
                        "Gaussian approximation")
    theta = lats[0] if lats else None
    return _Parts(model.likelihoods[0], theta, theta is not None and theta in model.corruption.latents())


# --- Jacobians --------------------------------------------------------------------------------------

def _check_size(B: int, rows: int, D: int, max_gib: float) -> None:
    gib = B * rows * D * 4 / 2 ** 30
    if gib > max_gib:
        raise BRGMError(f"method inla needs a {rows} x {D} Jacobian per image ({gib:.1f} GiB for {B} images), more "
                        f"than max_jacobian_gib={max_gib}; use fewer images per batch, or nuts / vi")


def _chunk_starts(total: int, chunk: int) -> list[tuple[int, int]]:
    """(first index, size) of each pass over ``total`` rows or columns, ``chunk`` at a time."""
    return [(s, min(chunk, total - s)) for s in range(0, total, chunk)]


def _estimate_after_first(desc: str, chunks: list, first_s: float, progress: bool) -> None:
    """After the first of ``chunks`` passes: ``"INLA: Jacobian of f(G): about 2.1 h (288 passes of 32 x 26 s)"``
    on stderr when the passes will take over a minute (the engine's rule for MAP and VI)."""
    if not progress or len(chunks) < 2:
        return
    from brgm_pyro.inference.engine import estimate_line

    size = chunks[0][1]
    line = estimate_line(f"INLA: {desc}", len(chunks), first_s)
    if line is not None:
        print(line.replace(" steps x ", f" passes of {size} x "), file=sys.stderr, flush=True)


def _jvp_columns(G, w: Tensor, s: int, k: int) -> Tensor:
    """dG(w)/dw times the basis tangents s..s+k-1 (of each image's D coordinates): (k, B, C, H, W)."""
    B, D = w.shape[0], w[0].numel()
    V = torch.zeros(k, B, D, dtype=w.dtype, device=w.device)
    V[torch.arange(k, device=w.device), :, torch.arange(s, s + k, device=w.device)] = 1.0
    fn = lambda v: torch.func.jvp(G, (w,), (v,))[1]  # noqa: E731
    with torch.no_grad():
        return torch.func.vmap(fn)(V.reshape(k, *w.shape))


def image_jacobian(G, w: Tensor, chunk: int = 32, progress: bool = False) -> Tensor:
    """dG(w)/dw per image: (B, C H W, D), D = L d, by forward-mode passes (``chunk`` tangents at once)."""
    from tqdm.auto import tqdm

    B, D = w.shape[0], w[0].numel()
    w = w.detach()
    out = torch.zeros(B, math.prod(G.image_shape), D, dtype=w.dtype, device=w.device)
    chunks = _chunk_starts(D, chunk)
    for i, (s, k) in enumerate(tqdm(chunks, desc="Jacobian of G", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        out[:, :, s:s + k] = _jvp_columns(G, w, s, k).reshape(k, B, -1).permute(1, 2, 0)
        if i == 0:
            _estimate_after_first("Jacobian of G", chunks, time.perf_counter() - t0, progress)
    return out


def observation_jacobian(model, w: Tensor, params: dict, chunk: int = 32, progress: bool = False) -> Tensor:
    """d f(G(w))/dw per image at fixed scalar latents: (B, n, D), n = the observation's size.

    min(n, D) passes: n backward passes (``chunk`` rows at once) when n <= D, else D forward-mode
    columns of G, each chunk pushed through the (linear) corruption at once, so that G's own
    Jacobian (B, C H W, D) is never held (108 GiB at 1024 x 1024)."""
    from tqdm.auto import tqdm

    B, D = w.shape[0], w[0].numel()
    n = math.prod(model.obs_shape)
    J = torch.zeros(B, n, D, dtype=w.dtype, device=w.device)
    chunks = _chunk_starts(min(n, D), chunk)
    if n > D:
        w = w.detach()
        for i, (s, k) in enumerate(tqdm(chunks, desc="Jacobian of f(G)", disable=not progress, leave=False)):
            t0 = time.perf_counter()
            cols = _jvp_columns(model.generator, w, s, k)  # (k, B, C, H, W)
            with torch.no_grad():
                J[:, :, s:s + k] = model.corruption(cols, params).reshape(k, B, n).permute(1, 2, 0)
            if i == 0:
                _estimate_after_first("Jacobian of f(G)", chunks, time.perf_counter() - t0, progress)
        return J
    wv = w.detach().clone().requires_grad_(True)
    pred = model.predict(wv, params).reshape(B, n)
    for i, (s, k) in enumerate(tqdm(chunks, desc="Jacobian of f(G)", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        E = torch.zeros(k, B, n, dtype=pred.dtype, device=pred.device)
        E[torch.arange(k, device=pred.device), :, torch.arange(s, s + k, device=pred.device)] = 1.0
        (g,) = torch.autograd.grad(pred, wv, grad_outputs=E, retain_graph=True, is_grads_batched=True)
        J[:, s:s + k] = g.reshape(k, B, D).permute(1, 0, 2)
        if i == 0:
            _estimate_after_first("Jacobian of f(G)", chunks, time.perf_counter() - t0, progress)
    return J


# --- the linearised model and its evidence -----------------------------------------------------------

def _flat(model, x: Tensor, B: int) -> Tensor:
    return x.expand(B, *model.obs_shape).reshape(B, -1).double()


class Linearisation:
    """The model linearised at ``w_c`` (B, L, d): log p(y | theta) and w | y, theta in closed form.

    ``theta`` values are (B,) for a per-image latent, () for a shared one, None without one.
    """

    def __init__(self, model, parts: _Parts, y: Tensor, w_c: Tensor, theta0: Optional[Tensor],
                 chunk: Optional[int] = None, progress: bool = False, max_gib: float = 2.0) -> None:
        self.model, self.parts, self.y = model, parts, y
        B, D = w_c.shape[0], w_c[0].numel()
        if chunk is None:  # k tangents / cotangents per pass cost about k images of G: the memory budget's
            from brgm_pyro.memory import items_per_chunk

            chunk = min(32, items_per_chunk(model, 32, B, grad=not parts.in_corruption))
        self.B, self.D = B, D
        prior = model.prior
        self.mu = prior.init_value().to(y).expand(B, *w_c.shape[1:]).reshape(B, D).double()
        self.s0 = (1.0 / prior.curvature().to(y).expand(B, *w_c.shape[1:]).reshape(B, D)).double()
        self.w_c = w_c.detach().reshape(B, D).double()
        mask = model.mask
        self.m = _flat(model, mask.to(y.dtype) if mask is not None else torch.ones((), dtype=y.dtype,
                                                                                   device=y.device), B)
        self.yv = _flat(model, y, B)
        self.n_obs = self.m.sum(-1)
        n = self.yv.shape[-1]
        t0 = time.perf_counter()
        if parts.in_corruption:
            _check_size(B, math.prod(model.generator.image_shape), D, max_gib)
            with torch.no_grad():
                self.x_c = model.render(w_c.detach())
            self.JG = image_jacobian(model.generator, w_c, chunk, progress)  # (B, P, D) float32
            self.passes = D
        else:
            _check_size(B, n, D, max_gib)
            params = {} if theta0 is None else {parts.theta.name: theta0}
            with torch.no_grad():
                self.p_c = _flat(model, model.predict(w_c.detach(), params), B)
            self.J = observation_jacobian(model, w_c, params, chunk, progress)
            self.passes = min(n, D)
        self.jacobian_s = time.perf_counter() - t0
        self._eig = None

    # -- pieces depending on theta --
    def params(self, theta) -> dict:
        return {} if theta is None else {self.parts.theta.name: theta}

    def noise_var(self, theta) -> Tensor:
        """Per observed element variance (B, n) of the pixel likelihood, discrepancy included."""
        s = self.parts.lik.total_scale(self.params(theta), self.y)
        return _flat(self.model, torch.as_tensor(s, dtype=self.y.dtype, device=self.y.device) ** 2, self.B)

    def operator(self, theta) -> tuple[Tensor, Tensor]:
        """(J_theta (B, n, D) float64, p_theta (B, n)): the linearised f_theta(G(w)) at w_c."""
        if not self.parts.in_corruption:
            return self.J.double(), self.p_c
        B, D = self.B, self.D
        params = self.params(theta)
        with torch.no_grad():
            cols = self.JG.permute(2, 0, 1).reshape(D, B, *self.model.generator.image_shape)
            J = self.model.corruption(cols, params).reshape(D, B, -1).permute(1, 2, 0)
            p = self.model.corruption(self.x_c, params)
        return J.double(), _flat(self.model, p, B)

    def scalar_noise(self) -> bool:
        """True when only a per-image scalar noise variance depends on theta (the eigen path)."""
        if self.parts.in_corruption:
            return False
        th = self.parts.theta
        v = self.noise_var(None if th is None else _theta_like(th, self.B, self.y))
        obs = self.m > 0
        vmax = torch.where(obs, v, torch.full_like(v, -math.inf)).amax(-1)
        vmin = torch.where(obs, v, torch.full_like(v, math.inf)).amin(-1)
        return bool(((vmax - vmin) <= 1e-9 * vmax.abs()).all())

    def observed_var(self, theta) -> Tensor:
        """The noise variance of each image's observed elements (B,) (the eigen path's v)."""
        v = self.noise_var(theta)
        return torch.where(self.m > 0, v, torch.full_like(v, -math.inf)).amax(-1)

    # -- the general path: one Cholesky per image and theta --
    def gaussian(self, theta, form: Optional[str] = None) -> dict:
        """log p(y | theta) (B,), the conditional mean of w (B, D) and what draws need: the Cholesky
        factor L of P (P^-1 = L^-T L^-1), or in the dual form (n < D) that of C."""
        J, p = self.operator(theta)
        v = self.noise_var(theta)
        r0 = self.yv - p - torch.einsum("bnd,bd->bn", J, self.mu - self.w_c)
        if form == "dual" or (form is None and J.shape[1] < J.shape[2]):
            return self._gaussian_dual(J, v, r0)
        prec = self.m / v
        Jw = J * prec.sqrt()[..., None]
        P = Jw.transpose(1, 2) @ Jw + torch.diag_embed(1.0 / self.s0)
        L = torch.linalg.cholesky(P)
        b = torch.einsum("bnd,bn->bd", J, prec * r0)
        Pb = torch.cholesky_solve(b[..., None], L)[..., 0]
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        quad = (prec * r0 ** 2).sum(-1) - (b * Pb).sum(-1)
        logn = torch.where(self.m > 0, v.log(), torch.zeros_like(v)).sum(-1)
        ev = -0.5 * (quad + logn + logdet + self.s0.log().sum(-1) + self.n_obs * math.log(2 * math.pi))
        return {"log_evidence": ev, "mean": self.mu + Pb, "chol": L}

    def _gaussian_dual(self, J: Tensor, v: Tensor, r0: Tensor) -> dict:
        """The same in observation space (n < D): C = J S0 J^T + N over the observed elements
        (unobserved ones get unit variance and zero rows, so they drop out exactly)."""
        obs = self.m > 0
        Js = J * self.s0.sqrt()[:, None, :] * self.m[..., None]
        C = Js @ Js.transpose(1, 2) + torch.diag_embed(torch.where(obs, v, torch.ones_like(v)))
        L = torch.linalg.cholesky(C)
        r = torch.where(obs, r0, torch.zeros_like(r0))
        a = torch.cholesky_solve(r[..., None], L)[..., 0]
        ev = -0.5 * ((r * a).sum(-1) + 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
                     + self.n_obs * math.log(2 * math.pi))
        mean = self.mu + self.s0.sqrt() * (Js.transpose(1, 2) @ a[..., None])[..., 0]
        # P^-1 = S0^1/2 (I - Js^T C^-1 Js) S0^1/2: draws as S0^1/2 (xi - Js^T C^-1 (Js xi + N^1/2 eta))
        return {"log_evidence": ev, "mean": mean, "dual": (Js, L, torch.where(obs, v, torch.zeros_like(v)))}

    def draw_given(self, g: dict, xi: Tensor, eta: Tensor) -> Tensor:
        """Draws of w (S, B, D) from :meth:`gaussian`'s output with standard normals xi (S, B, D),
        eta (S, B, n) (eta is used by the dual form: Matheron's rule)."""
        if "chol" in g:
            z = torch.linalg.solve_triangular(g["chol"].transpose(-1, -2), xi.permute(1, 2, 0), upper=True)
            return g["mean"] + z.permute(2, 0, 1)
        Js, L, v = g["dual"]
        u = (Js @ xi.permute(1, 2, 0)).permute(2, 0, 1) + v.sqrt() * eta  # (S, B, n)
        c = torch.cholesky_solve(u.permute(1, 2, 0), L)  # (B, n, S)
        z = xi - (Js.transpose(1, 2) @ c).permute(2, 0, 1)
        return g["mean"] + self.s0.sqrt() * z

    # -- the eigen path: theta moves only a scalar noise variance v per image --
    def _eigen(self) -> dict:
        if self._eig is None:
            J, p = self.operator(None)
            r0 = self.yv - p - torch.einsum("bnd,bd->bn", J, self.mu - self.w_c)
            Js = J * self.s0.sqrt()[:, None, :] * self.m.sqrt()[..., None]
            lam, V = torch.linalg.eigh(Js.transpose(1, 2) @ Js)
            z = (Js.transpose(1, 2) @ (self.m.sqrt() * r0)[..., None])  # (B, D, 1)
            q = (V.transpose(1, 2) @ z)[..., 0]
            self._eig = {"lam": lam.clamp_min(0.0), "V": V, "q": q, "rr": (self.m * r0 ** 2).sum(-1)}
        return self._eig

    def eigen_evidence(self, v: Tensor) -> Tensor:
        """log p(y | v) for per-image noise variances v (B, K): (B, K)."""
        e = self._eigen()
        lam, q = e["lam"][:, None, :], e["q"][:, None, :]
        v3 = v[..., None]
        quad = e["rr"][:, None] / v - (q ** 2 / (v3 * (v3 + lam))).sum(-1)
        return -0.5 * (quad + self.n_obs[:, None] * (v.log() + math.log(2 * math.pi)) + torch.log1p(lam / v3).sum(-1))

    def eigen_draw(self, v: Tensor, xi: Optional[Tensor]) -> Tensor:
        """The conditional mean (xi None) or a draw of w given per-image variances v (B,): (B, D)."""
        e = self._eigen()
        coef = e["q"] / (v[:, None] + e["lam"])
        if xi is not None:
            coef = coef + xi / torch.sqrt(1.0 + e["lam"] / v[:, None])
        return self.mu + self.s0.sqrt() * (e["V"] @ coef[..., None])[..., 0]


def _theta_like(th, B: int, like: Tensor) -> Tensor:
    """The scalar latent's starting value in its natural layout ((B,) per image, () shared)."""
    v = torch.as_tensor(th.init, dtype=like.dtype, device=like.device)
    return v.expand(B).clone() if th.per_image else v


# --- the grid over theta ---------------------------------------------------------------------------

def _prior_range(th, like: Tensor, tail: float = 1e-4) -> tuple[float, float]:
    """The prior's central 1 - 2 tail of theta, in its unconstrained coordinate u."""
    t = biject_to(th.prior.support)
    q = torch.tensor([tail, 1.0 - tail], dtype=torch.float64, device="cpu")  # the grid lives on the CPU
    try:
        ends = th.prior.icdf(q.to(like.dtype).to(like.device))
    except (NotImplementedError, AttributeError, ValueError):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            d = th.prior.sample((20000,)).double().cpu()
        ends = torch.quantile(d, q)
    u = t.inv(ends.to(like.dtype).to(like.device)).double().cpu()
    return float(u[0]), float(u[1])


def _weights(u: Tensor) -> Tensor:
    """Trapezoid weights of a uniform grid (G, K)."""
    du = (u[:, 1:2] - u[:, :1])
    w = du.expand_as(u).clone()
    w[:, 0] *= 0.5
    w[:, -1] *= 0.5
    return w


def _normalise(u: Tensor, lp: Tensor) -> Tensor:
    p = torch.exp(lp - lp.amax(-1, keepdim=True))
    return p / (p * _weights(u)).sum(-1, keepdim=True)


def grid_posterior(log_post, lo: float, hi: float, groups: int, points: int = GRID_POINTS, zooms: int = 3,
                   fine: int = 20) -> dict:
    """The density of u on a grid (G, K') zoomed ``zooms`` times onto its mass (mean +- 6 sd).

    ``log_post(u (G, K)) -> (G, K)``: the unnormalised log posterior density of u, evaluated at
    ``points`` nodes per zoom. The returned grid is ``fine`` times denser: the log density
    interpolated by a cubic spline between the nodes (smooth densities: quantiles and draws then
    agree with quadrature to ~1e-4 of the mean, not only the mean)."""
    from scipy.interpolate import CubicSpline

    u = torch.linspace(lo, hi, points, dtype=torch.float64, device="cpu").expand(groups, points).clone()
    for z in range(zooms + 1):
        lp = log_post(u)
        p = _normalise(u, lp)
        if z == zooms:
            break
        w = _weights(u) * p
        mean = (w * u).sum(-1)
        sd = ((w * (u - mean[:, None]) ** 2).sum(-1)).clamp_min(0).sqrt()
        half = torch.maximum(6 * sd, 1.5 * (u[:, 1] - u[:, 0]))
        u = mean[:, None] + half[:, None] * torch.linspace(-1, 1, points, dtype=torch.float64, device="cpu")
    uf = torch.stack([torch.linspace(float(r[0]), float(r[-1]), fine * (points - 1) + 1, dtype=torch.float64,
                                     device="cpu")
                      for r in u])
    lpf = torch.stack([torch.from_numpy(CubicSpline(r.numpy(), l.numpy())(f.numpy()))
                       for r, l, f in zip(u, lp, uf)])
    return {"u": uf, "density": _normalise(uf, lpf), "log_post": lpf, "nodes": u, "log_post_nodes": lp}


def sample_grid(post: dict, num: int, gen: torch.Generator) -> Tensor:
    """``num`` draws of u per group from the grid density's inverse CDF (trapezoid rule): (num, G)."""
    u, p = post["u"].numpy(), post["density"].numpy()
    U = torch.rand(num, u.shape[0], generator=gen, dtype=torch.float64).numpy()
    out = np.empty_like(U)
    for g in range(u.shape[0]):
        mid = 0.5 * (p[g, 1:] + p[g, :-1]) * np.diff(u[g])
        cdf = np.concatenate([[0.0], np.cumsum(mid)])
        out[:, g] = np.interp(U[:, g], cdf / cdf[-1], u[g])
    return torch.from_numpy(out)


def _log_posterior_fn(lin: Linearisation, eigen: bool):
    """u (G, K) -> log p(u | y) up to a constant, (G, K): evidence + log prior + log |d theta / du|."""
    th = lin.parts.theta
    t = biject_to(th.prior.support)

    def fn(u: Tensor) -> Tensor:
        theta = t(u.to(lin.y.dtype).to(lin.y.device))
        cols = []
        for k in range(u.shape[1]):
            val = theta[:, k] if th.per_image else theta[0, k]
            if eigen:
                cols.append(lin.observed_var(val))  # one variance per image (checked constant)
            else:
                ev = lin.gaussian(val)["log_evidence"]
                cols.append(ev if th.per_image else ev.sum(-1, keepdim=True))
        if eigen:
            v = torch.stack(cols, -1)  # (B, K)
            ev = lin.eigen_evidence(v)
            ev = ev if th.per_image else ev.sum(0, keepdim=True)
        else:
            ev = torch.stack(cols, -1)
        lprior = th.prior.log_prob(theta) + t.log_abs_det_jacobian(u.to(theta), theta)
        return ev.cpu().double() + lprior.double().cpu()

    return fn


# --- the method ------------------------------------------------------------------------------------

def conditional_map(model, y: Tensor, w0: Tensor, fixed: dict, steps: int, lr: float, lr_decay: float,
                    progress: bool) -> tuple[Tensor, dict]:
    """argmax_w log p(w, y | theta) with the scalar latents held at ``fixed`` (Adam from ``w0``)."""
    import pyro

    names = list(dict.fromkeys(model.site_terms().values()))
    w = w0.detach().clone().requires_grad_(True)

    def loss():
        with pyro.validation_enabled(False):
            terms = log_density_terms(model, y, {**fixed, model.image_site: w})
        vec = torch.stack([-terms[n] if n in terms else w.new_zeros(()) for n in names])
        return vec.sum(), vec

    out = optimise(lambda: [w], loss, names, steps=steps, lr=lr, lr_decay=lr_decay, desc="INLA: MAP of w",
                   progress=progress)
    return w.detach(), out


def _draws(lin: Linearisation, post: Optional[dict], eigen: bool, num: int, seed: int) -> dict:
    """``num`` joint draws: theta from the grid, w | theta from the linearised Gaussian (natural layout)."""
    model, B, D = lin.model, lin.B, lin.D
    th = lin.parts.theta
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    shape = (B, *model.generator.latent_shape)
    out = {}
    if th is not None:
        t = biject_to(th.prior.support)
        u = sample_grid(post, num, gen)  # (S, G)
        theta = t(u.to(lin.y.dtype)).to(lin.y.device)
        out[th.name] = theta if th.per_image else theta[:, 0]
    xi = torch.randn(num, B, D, generator=gen, dtype=torch.float64).to(lin.y.device)
    eta = torch.randn(num, B, lin.yv.shape[-1], generator=gen, dtype=torch.float64).to(lin.y.device)
    ws = torch.empty(num, B, D, dtype=torch.float64, device=lin.y.device)
    if eigen:
        for s in range(num):
            val = None if th is None else out[th.name][s]
            ws[s] = lin.eigen_draw(lin.observed_var(val), xi[s])
    else:  # w | theta at the grid point nearest each draw of theta (one Cholesky per grid point used)
        idx = (None if th is None else
               (post["u"][None] - u[..., None]).abs().argmin(-1).expand(num, B))  # (S, B)
        ks = [None] if idx is None else sorted(set(idx.reshape(-1).tolist()))
        for k in ks:
            val = None
            if k is not None:
                tk = t(post["u"][:, k].to(lin.y.dtype)).to(lin.y.device)
                val = tk.expand(B) if th.per_image else tk[0]
            cand = lin.draw_given(lin.gaussian(val), xi, eta)
            sel = torch.ones(num, B, dtype=torch.bool, device=ws.device) if k is None else (idx == k).to(ws.device)
            ws[sel] = cand[sel]
    out[model.image_site] = ws.to(lin.y.dtype).reshape(num, *shape)
    return out


def run_inla(
    model,
    y: Tensor,
    *,
    steps: Optional[int] = None,
    num_samples: int = 16,
    seed: int = 0,
    progress: bool = True,
    init: Optional[dict] = None,
    init_w: Optional[Tensor] = None,
    refine: int = 1,
    refine_steps: int = DEFAULT_REFINE_STEPS,
    lr: float = 0.1,
    lr_decay: float = 0.1,
    grid_points: int = GRID_POINTS,
    zooms: int = 3,
    chunk: Optional[int] = None,
    max_jacobian_gib: float = 2.0,
    restarts: int = 0,
) -> InferenceResult:
    """The posterior of the model's scalar latent (grid) and of w given it (linearised Laplace).

    Args:
        model: a :class:`~brgm_pyro.models.brgm.BRGMModel` with a Gaussian pixel likelihood alone,
            a linear corruption and at most one scalar latent (of the likelihood or corruption).
        y: (B, C, h, w) observations.
        steps: Adam steps of the first conditional MAP of w (theta at its component's initial
            value; lr ``lr`` decaying to ``lr * lr_decay``). Default 500.
        num_samples: joint draws returned.
        refine: how many times the linearisation point is moved (theta to its posterior mean, a
            Gauss-Newton step of w (:func:`gauss_newton_step`), ``refine_steps`` more Adam steps,
            then a new Jacobian).
        grid_points, zooms: the grid over theta's unconstrained coordinate (the prior's central
            99.98 %, then ``zooms`` times onto mean +- 6 sd of the current grid density).
        chunk: Jacobian rows/columns per pass (default: up to 32, fewer when the memory budget
            asks, :mod:`brgm_pyro.memory`). max_jacobian_gib: refuse larger Jacobians.
        restarts: extra starting points of the first conditional MAP (each component's own
            starting-point draws, seeded by ``seed``); per image the fit with the highest log joint
            is kept (:func:`best_of_starts`). For in-painting, where Adam can stop in a basin whose
            residual sits above the noise floor, and sigma would then learn that misfit.
    Returns:
        :class:`InferenceResult`: ``latents`` = theta's posterior mean and w's conditional mean at
        it, ``draws``/``samples`` joint draws, ``extra['grid']`` theta's grid, density (per unit of
        theta) and log evidence per group (image, or one for a shared theta).
    """
    steps = DEFAULT_INLA_STEPS if steps is None else int(steps)
    model.check_observation(y)
    parts = _parts(model)
    th, site = parts.theta, model.image_site
    values = initial_values(model, y, init, init_w)
    fixed = {} if th is None else {th.name: values[th.name]}
    t0 = time.perf_counter()
    w_c, out = conditional_map(model, y, values[site], fixed, steps, lr, lr_decay, progress)
    w_c, chosen = best_of_starts(model, y, w_c, fixed, int(restarts), steps, lr, lr_decay, progress, seed, th)
    history, passes, post, gn_steps = out["history"], 0, None, []
    rounds = 0 if th is None else max(int(refine), 0)
    for r in range(rounds + 1):
        lin = Linearisation(model, parts, y, w_c, fixed.get(th.name) if th else None, chunk, progress,
                            max_jacobian_gib)
        passes += lin.passes
        eigen = lin.scalar_noise()
        if th is not None:
            lo, hi = _prior_range(th, y)
            post = grid_posterior(_log_posterior_fn(lin, eigen), lo, hi, y.shape[0] if th.per_image else 1,
                                  grid_points, zooms)
            fixed = {th.name: _posterior_mean(th, post, y)}
        if r < rounds:
            w_c, steps_taken = gauss_newton_step(lin, fixed.get(th.name), w_c, eigen)
            gn_steps.append(steps_taken)
            w_c, out = conditional_map(model, y, w_c, fixed, refine_steps, lr, lr_decay, progress)
            history = {k: history[k] + out["history"][k] for k in history}
    draws, latents, samples, image = _finish(lin, post, eigen, fixed, num_samples, seed)
    extra = {"seed": seed, "refine": rounds, "jacobian_passes": passes, "eigen": eigen, "gauss_newton": gn_steps,
             "start": chosen, "warnings": _cautions(model, parts),
             "grid": None if post is None else _grid_record(th, post)}
    timing = {"total_s": time.perf_counter() - t0, "per_step_s": out["timing"]["per_step_s"],
              "steps": len(history.get("loss", [])), "jacobian_s": lin.jacobian_s}
    return InferenceResult(method="inla", latents={k: latents[k] for k in model.latent_sites()}, image=image,
                           draws=draws, samples=samples, history=history, timing=timing,
                           stopped=out["stopped"], extra=extra, image_site=site)


def _finish(lin: Linearisation, post: Optional[dict], eigen: bool, fixed: dict, num_samples: int, seed: int):
    """(draws, latents, predictive samples, image) at the last linearisation."""
    model, y, th = lin.model, lin.y, lin.parts.theta
    draws = _draws(lin, post, eigen, num_samples, seed) if num_samples > 0 else None
    latents = {**fixed, model.image_site: _conditional_mean(lin, fixed.get(th.name) if th else None, eigen)}
    samples = model.predictive_images(draws, y, seed=seed) if draws is not None else None
    with torch.no_grad():
        image = samples.mean(0) if samples is not None else model.render(latents[model.image_site])
    return draws, latents, samples, image


def best_of_starts(model, y: Tensor, w_first: Tensor, fixed: dict, restarts: int, steps: int, lr: float,
                   lr_decay: float, progress: bool, seed: int, theta=None) -> tuple[Tensor, list[int]]:
    """Per image, the conditional MAP of w with the highest true log joint among ``w_first`` (start 0)
    and ``restarts`` more Adam runs from the model's own starting-point draws (starts 1..).

    The estimate of a learned noise level is the residual of this fit (docs/latent_sites.md): a
    start that ends in a basin whose residual is above the noise floor makes sigma learn the misfit,
    and a longer Adam run does not leave such a basin. With ``theta`` (the scalar latent, held at
    ``fixed[theta.name]`` during the fits) the fits are ranked by the log joint maximised over theta
    on a grid of its prior's range (the profile), not at its starting value, where a smaller prior
    cost could outrank a smaller residual. Returns (w (B, L, d), start chosen per image).
    """
    site = model.image_site
    if restarts <= 0:
        return w_first, [0] * y.shape[0]
    starts = model.draw_inits(restarts, y.shape[0], seed)[site]
    score = _profile_score(model, y, fixed, theta)
    best = w_first.clone()
    best_lp = score(best)
    chosen = torch.zeros(y.shape[0], dtype=torch.long, device="cpu")  # a record, not a model tensor
    for r in range(restarts):
        w, _ = conditional_map(model, y, starts[r].to(w_first), fixed, steps, lr, lr_decay, progress)
        lp = score(w)
        ok = torch.isfinite(lp) & (lp > best_lp)
        best[ok], best_lp[ok], chosen[ok.cpu()] = w[ok], lp[ok], r + 1
    return best, chosen.tolist()


def _profile_score(model, y: Tensor, fixed: dict, theta, points: int = 25):
    """w -> per-image log joint (B,), maximised over ``theta`` on ``points`` values of its prior's
    central range (uniform in the unconstrained coordinate); at ``fixed`` when theta is None."""
    site = model.image_site
    grid = [{}]
    if theta is not None:
        like = _theta_like(theta, y.shape[0], y)
        t = biject_to(theta.prior.support)
        grid = [{theta.name: torch.full_like(like, float(t(u)))}
                for u in torch.linspace(*_prior_range(theta, y), points, dtype=torch.float64, device="cpu")]

    def score(w: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.stack([_per_image_log_joint(model, y, {**fixed, site: w, **g}) for g in grid]).amax(0)

    return score


def gauss_newton_step(lin: Linearisation, theta, w_c: Tensor, eigen: bool) -> tuple[Tensor, list]:
    """Per image, move the linearisation point to the linearised model's mode at theta (the
    Gauss-Newton step of the inner problem, as INLA's Newton iterations) when that raises the true
    log joint, halving the step up to 3 times; else stay. Costs at most 4 forward passes of G.

    Adam reaches an in-painting mode slowly (a long curved valley: docs/defaults.md); one
    Gauss-Newton step along the Jacobian already computed goes much further. Returns the new
    point and the step length taken per image (0: none)."""
    model, y = lin.model, lin.y
    target = _conditional_mean(lin, theta, eigen)
    fixed = {} if theta is None else {lin.parts.theta.name: theta}

    def per_image(w):
        with torch.no_grad():
            return _per_image_log_joint(model, y, {**fixed, model.image_site: w})

    best, best_lp = w_c.clone(), per_image(w_c)
    taken = torch.zeros(w_c.shape[0], dtype=torch.float64, device=w_c.device)
    todo = torch.ones(w_c.shape[0], dtype=torch.bool, device=w_c.device)
    for alpha in (1.0, 0.5, 0.25, 0.125):
        cand = w_c + alpha * (target - w_c)
        lp = per_image(cand)
        ok = todo & torch.isfinite(lp) & (lp > best_lp)
        best[ok], best_lp[ok], taken[ok] = cand[ok], lp[ok], alpha
        todo &= ~ok
        if not todo.any():
            break
    return best, taken.tolist()


def _per_image_log_joint(model, y: Tensor, latents: dict) -> Tensor:
    """log p(latents_b, y_b) per image (B,), from the model's own trace (the images plate kept)."""
    import pyro
    from pyro import poutine
    from pyro.distributions.util import scale_and_mask

    from brgm_pyro.models.density import plate_layout

    values = plate_layout(model, latents, 0)
    with pyro.validation_enabled(False), poutine.block(hide_types=["param"]):
        tr = poutine.trace(poutine.condition(model, data=values)).get_trace(y)
    total = y.new_zeros(y.shape[0], dtype=torch.float64)
    terms = model.site_terms()
    for name, site in tr.nodes.items():
        if site["type"] != "sample" or name not in terms:
            continue
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"]).double()
        total = total + (lp.reshape(y.shape[0], -1).sum(-1) if lp.numel() >= y.shape[0] and lp.ndim >= 1
                         else lp.sum() / y.shape[0])
    return total


def _cautions(model, parts: _Parts) -> list[str]:
    """What the user should know about this run's accuracy (written to run.json and stderr)."""
    if parts.in_corruption and not getattr(model.generator, "linear", False):
        # measured: x4 SR blur width, prior-drawn truths, exact model: INLA 1.23-1.26 for a true 1.0,
        # NUTS 0.98-1.03, covering it (docs/latent_sites.md); the linearised posterior of w is far too wide
        return [f"INLA's posterior of {parts.theta.name!r} is biased with a non-linear generator (its Laplace step "
                "misjudges how w's spread moves the observation; docs/latent_sites.md): use --method nuts for "
                "intervals of a corruption parameter"]
    return []


def _posterior_mean(th, post: dict, like: Tensor) -> Tensor:
    """E[theta | y] from the grid, natural layout."""
    t = biject_to(th.prior.support)
    theta = t(post["u"].to(like.dtype)).double()
    m = (_weights(post["u"]) * post["density"] * theta).sum(-1).to(like.dtype).to(like.device)
    return m if th.per_image else m[0]


def _conditional_mean(lin: Linearisation, theta, eigen: bool) -> Tensor:
    shape = (lin.B, *lin.model.generator.latent_shape)
    mean = lin.eigen_draw(lin.observed_var(theta), None) if eigen else lin.gaussian(theta)["mean"]
    return mean.to(lin.y.dtype).reshape(shape)


def _grid_record(th, post: dict) -> dict:
    """theta's grid and density per unit of theta (G, K), for reports and plots."""
    t = biject_to(th.prior.support)
    theta = t(post["u"])
    jac = t.log_abs_det_jacobian(post["u"], theta).exp()
    return {"site": th.name, "theta": theta.tolist(), "density": (post["density"] / jac).tolist(),
            "nodes": t(post["nodes"]).tolist(), "log_posterior_u_nodes": post["log_post_nodes"].tolist()}


__all__ = ["run_inla", "best_of_starts", "Linearisation", "grid_posterior", "image_jacobian", "observation_jacobian",
           "conditional_map"]
