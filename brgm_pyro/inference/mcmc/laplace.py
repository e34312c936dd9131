r"""Gauss-Newton (Laplace) curvature of the BRGM posterior at a point, for preconditioning.

At the MAP :math:`\hat w` the posterior is approximately :math:`\mathcal N(\hat w, P^{-1})` with

.. math::

    P = \mathrm{diag}(c_{prior}) + \sum_{\ell} \frac{1}{T} J_\ell^\top \mathrm{diag}(I_\ell) J_\ell,
    \qquad J_\ell = \frac{\partial m_\ell(w)}{\partial w}\Big|_{\hat w}

where :math:`m_\ell` is the mean of likelihood :math:`\ell` (the observed pixels of f(G(w)) for
the pixel term, phi(f(G(w))) for the perceptual term), :math:`I_\ell` the Fisher information of
its noise per element (1/sigma^2 for a Gaussian; stated by the likelihood), :math:`c_{prior}` the
prior's stated curvature (1/sigma_prior^2 for the Gaussian) and T the temperature. (The colinearity factor's curvature, of order :math:`\kappa / \lVert w_i\rVert^2`,
is left out: it is orders of magnitude below the prior's.) ``J`` is M x D (M observed values, D
latent coordinates) and is formed exactly with min(M, D) passes: its M rows by vector-Jacobian
products when M <= D (super-resolution), or its D columns by Jacobian-vector products when D < M
(in-painting observes most pixels; each column is the derivative of the VJP :math:`J^\top u` in
u, a double backward), batched ``chunk`` at a time. Only when min(M, D) exceeds ``max_rows``
(large generators) is a Gaussian sketch used:
:math:`J^\top J \approx \frac1k \sum_{i \le k} (J^\top s_i)(J^\top s_i)^\top`, :math:`s_i \sim
\mathcal N(0, I_M)` (unbiased; k = ``max_rows`` backward passes). A sketch has rank k: with
k < D the directions outside its range get the prior's curvature alone. (On the faces64
in-painting posterior, D = 1280, M = 9,984, the 512-pass sketch was off by up to 8.7x in
precision along some directions; the exact J by 1,280 batched columns took 8.6 s on two
threads against 51 s for 9,984 rows one at a time.)

Why it matters: at ``sigma_pixel = 0.05`` the likelihood makes the posterior ~10^4 times stiffer in
the directions the observation determines than in the prior-only directions. Any sampler with an
identity (or diagonal) metric must take steps set by the stiff directions and then needs
~sqrt(10^4) (HMC) to ~10^4 (Langevin) steps to cross the soft ones. With :math:`P^{-1}` as
HMC's inverse mass matrix, or as the Langevin preconditioner, the sampled geometry is close to
isotropic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError


def _prior_precision(model, B: int, device) -> Tensor:
    """diag(-d^2 log p(w)) as the prior states it (its curvature), expanded over images: (D,) float64."""
    curv = model.prior.curvature()
    if curv is None:
        raise BRGMError(f"the prior {type(model.prior).__name__} states no curvature, which the Laplace metric "
                        "needs; use mass='diag' (--mass diag) or init='map'/'prior'")
    return curv.detach().double().expand(B, *curv.shape[-2:]).reshape(-1).to(device)


# Passes allowed for an exact J (min(M, D) of them); the sketch above it. 1,536 makes the faces64
# generator's D = 1,280 exact for every corruption (8.6 s for in-painting on two CPU threads).
DEFAULT_LAPLACE_PASSES = 1536


def _auto_chunk(model) -> int:
    """Rows/columns of J per batched pass: 64 for small generators, fewer as the image grows, so that
    the batched backward's memory (chunk copies of G's activations' gradients) stays near that of a
    64 x 64 generator's 64 copies (1 at 1024 x 1024)."""
    C, H, W = model.generator.image_shape
    return int(max(1, min(64, 2 ** 22 // (C * H * W))))


def gauss_newton_precision(model, y: Tensor, w, max_rows: int = DEFAULT_LAPLACE_PASSES, seed: int = 0,
                           info: dict | None = None, chunk: int | None = None) -> Tensor:
    """The generalised Gauss-Newton precision P (D, D) of w at ``w``, D = B L d, float64.

    P = diag(prior curvature) + sum_l (1/T) J_l^T diag(I_l) J_l, with J_l the Jacobian of
    likelihood l's mean function and I_l the Fisher information of its noise per element
    (1/sigma^2 for a Gaussian): both stated by the likelihood (:meth:`Likelihood.gauss_newton`).

    Args:
        model: a :class:`~brgm_pyro.models.brgm.BRGMModel` whose prior states its curvature and
            whose likelihoods state their Fisher information.
        y: (B, C, h, w) observation (only used for shapes; P does not depend on y).
        w: the point, usually the MAP: the latents dict (scalars are held at their values) or w.
        max_rows: passes allowed per likelihood: J is exact in min(M, D) passes when that is at
            most max_rows, else J^T J is sketched with max_rows Gaussian combinations.
        seed: the sketch's seed.
        chunk: rows or columns of J per batched pass (memory: chunk copies of the backward graph;
            default from the generator's image size, 64 at 64 x 64, 1 at 1024 x 1024).
        info: if a dict, ``info["backward_passes"]`` is set to the number of VJPs computed.
    """
    lat = model.as_latents(w)
    w = lat[model.image_site]
    params = {lat_.name: lat[lat_.name].detach() for lat_ in model.scalar_latents}
    B, D = w.shape[0], w.numel()
    prec = torch.diag(_prior_precision(model, B, w.device))
    wv = w.detach().clone().requires_grad_(True)
    pred = model.predict(wv, params)
    g = torch.Generator(device="cpu").manual_seed(seed)
    passes = 0
    for lik in model.likelihoods:
        mean, fisher = lik.gauss_newton(pred, model.mask, params)
        flat = mean.reshape(-1)
        M = flat.numel()
        root = torch.as_tensor(fisher, dtype=flat.dtype, device=flat.device).sqrt().expand(M) / model.temperature ** 0.5
        passes += min(M, D, max_rows)
        if min(M, D) <= max_rows:
            J = _jacobian(flat, wv, chunk or _auto_chunk(model)) * root[:, None].double()  # rows of diag(I)^1/2 J
            prec += J.T @ J
        else:
            acc = torch.zeros(D, D, dtype=torch.float64, device=w.device)
            for _ in range(max_rows):
                s = torch.randn(M, generator=g).to(flat)
                v = torch.autograd.grad(flat, wv, grad_outputs=s * root, retain_graph=True)[0].reshape(-1).double()
                acc += torch.outer(v, v)
            prec += acc / max_rows
    if info is not None:
        info["backward_passes"] = passes
    return prec


def _batched_grads(out: Tensor, inp: Tensor, chunk: int, **kw) -> Tensor:
    """(out.numel(), inp.numel()) float64: row i is d out_i / d inp, by backward passes of the basis
    vectors of ``out``, ``chunk`` at a time (``is_grads_batched``). The graph is kept."""
    eye = torch.eye(out.numel(), dtype=out.dtype, device=out.device)
    rows = [torch.autograd.grad(out, inp, grad_outputs=eye[i:i + chunk].reshape(-1, *out.shape), retain_graph=True,
                                is_grads_batched=True, **kw)[0].reshape(-1, inp.numel()).double()
            for i in range(0, out.numel(), chunk)]
    return torch.cat(rows)


def _jacobian(flat: Tensor, wv: Tensor, chunk: int) -> Tensor:
    """d flat / d wv as an (M, D) float64 matrix, exactly, in min(M, D) passes ``chunk`` at a time.

    M <= D: rows e_i^T J by batched VJPs. D < M: columns J e_j by batched JVPs, each the derivative
    in u of the VJP J^T u (linear in u, so any u works; zeros keeps it cheap).
    """
    if flat.numel() <= wv.numel():
        return _batched_grads(flat, wv, chunk)
    u = torch.zeros_like(flat, requires_grad=True)
    (vjp,) = torch.autograd.grad(flat, wv, grad_outputs=u, create_graph=True)
    return _batched_grads(vjp, u, chunk).T


def _fold(H: Tensor, floor: float, info: dict | None = None) -> Tensor:
    """Symmetrise and make positive definite: eigenvalues -> max(|lambda|, floor) (SoftAbs-like)."""
    H = 0.5 * (H + H.T)
    lam, V = torch.linalg.eigh(H)
    if info is not None:
        info["negative_eigenvalues"] = info.get("negative_eigenvalues", 0) + int((lam < 0).sum())
    return (V * lam.abs().clamp_min(floor)) @ V.T


def exact_hessian(model, y: Tensor, w, chunk: int = 32, info: dict | None = None) -> Tensor:
    r"""The Hessian in w of :math:`U = -\log p(\text{latents}, y)` at ``w`` (scalars held fixed),
    symmetrised, not made definite: (D, D) float64. D Hessian-vector products by double backward,
    ``chunk`` at a time (about D gradient evaluations)."""
    lat = model.as_latents(w)
    w = lat[model.image_site]
    D = w.numel()
    wv = w.detach().clone().requires_grad_(True)
    U = -model.log_joint({**{k: v.detach() for k, v in lat.items()}, model.image_site: wv}, y).sum()
    (g,) = torch.autograd.grad(U, wv, create_graph=True)
    H = _batched_grads(g, wv, chunk)
    if info is not None:
        info["backward_passes"] = D
    return 0.5 * (H + H.T)


def hessian_precision(model, y: Tensor, w, chunk: int = 32, info: dict | None = None) -> Tensor:
    r"""The exact Hessian (:func:`exact_hessian`) made positive definite: (D, D) float64.

    Eigenvalues are replaced by :math:`\max(|\lambda|, \min_k c_k)` with c the prior's curvature
    (negative curvature away from a mode is folded, as in SoftAbs). Costs about D gradient
    evaluations: use it for D up to a few thousand (faces64: D = 1280), Gauss-Newton above.
    """
    H = exact_hessian(model, y, w, chunk=chunk, info=info)
    B = model.as_latents(w)[model.image_site].shape[0]
    return _fold(H, float(_prior_precision(model, B, H.device).min()), info)


def scalar_precision(model, y: Tensor, latents: dict, info: dict | None = None) -> dict[str, Tensor]:
    r"""Exact Hessian of U in the unconstrained coordinates u of each scalar latent (w held fixed).

    With :math:`\theta = T(u)` (e.g. sigma = exp(u)), :math:`U(u) = -\log p(\theta, w, y) - \log|T'(u)|`,
    Pyro's potential in the coordinates NUTS moves in. Returns site -> (k, k) float64, k = 1 or B.
    """
    from torch.distributions import biject_to

    out = {}
    fixed = {k: v.detach() for k, v in latents.items()}
    for lat in model.scalar_latents:
        t = biject_to(lat.prior.support)
        theta0 = fixed[lat.name]
        u0 = t.inv(theta0).detach().reshape(-1)

        def U(u, lat=lat, t=t, shape=theta0.shape):
            uu = u.reshape(shape)
            theta = t(uu)
            return -(model.log_joint({**fixed, lat.name: theta}, y).sum() + t.log_abs_det_jacobian(uu, theta).sum())

        H = torch.autograd.functional.hessian(U, u0).double().reshape(u0.numel(), u0.numel())
        out[lat.name] = _fold(H, 1e-8 * max(float(H.abs().max()), 1e-12), info)
        if info is not None:
            info["backward_passes"] = info.get("backward_passes", 0) + 2 * u0.numel()
    return out


def laplace_precision(model, y: Tensor, w, max_rows: int = DEFAULT_LAPLACE_PASSES, seed: int = 0,
                      info: dict | None = None, curvature: str = "gauss_newton") -> dict[str, Tensor]:
    """The Laplace precision at ``w`` in the unconstrained coordinates of every latent site, as blocks
    site -> (k, k) float64 (w's from ``curvature``, each scalar latent's from
    :func:`scalar_precision`; cross terms are left out). See :func:`laplace_covariance`."""
    lat = model.as_latents(w)
    info = {} if info is None else info
    if curvature == "hessian":
        blocks = {model.image_site: hessian_precision(model, y, lat, info=info)}
    elif curvature == "gauss_newton":
        blocks = {model.image_site: gauss_newton_precision(model, y, lat, max_rows=max_rows, seed=seed, info=info)}
    else:
        raise BRGMError(f"curvature must be 'gauss_newton' or 'hessian'; got {curvature!r}")
    passes = info.get("backward_passes", 0)
    blocks.update(scalar_precision(model, y, lat, info=info))
    info["backward_passes"] = info.get("backward_passes", passes)
    return blocks


def curvature_passes(model, y: Tensor, max_rows: int = DEFAULT_LAPLACE_PASSES, curvature: str = "gauss_newton") -> int:
    """Backward passes :func:`laplace_precision` will make for w: per likelihood min(M, D, max_rows)
    (M: the observation's size for the first, pixel, likelihood; D for the others, whose feature count
    is larger), or 2 D for ``curvature="hessian"``. Scalar latents add a few."""
    D = int(y.shape[0]) * math.prod(model.generator.latent_shape)
    if curvature == "hessian":
        return 2 * D
    M = math.prod(model.obs_shape) * int(y.shape[0])
    return sum(min(M if i == 0 else D, D, int(max_rows)) for i in range(len(model.likelihoods)))


def covariance_of(blocks: dict[str, Tensor], jitter: float = 1e-8) -> Tensor:
    """Block-diagonal inverse of precision blocks, sites in sorted-name order: (D, D) float32, symmetric."""
    covs = []
    for name in sorted(blocks):
        P = blocks[name]
        L = torch.linalg.cholesky(P + jitter * torch.eye(P.shape[0], dtype=P.dtype, device=P.device))
        covs.append(torch.cholesky_inverse(L))
    cov = torch.block_diag(*covs)
    return (0.5 * (cov + cov.T)).float()


def laplace_covariance(model, y: Tensor, w, max_rows: int = DEFAULT_LAPLACE_PASSES, seed: int = 0,
                       jitter: float = 1e-8, info: dict | None = None, curvature: str = "gauss_newton") -> Tensor:
    """P^{-1} (D, D): the Laplace posterior covariance at ``w`` in the unconstrained coordinates of
    every latent site, sites in sorted-name order (the order of Pyro's and our kernels' flat
    vectors), float32, symmetric positive definite. Block-diagonal: w's block from ``curvature``,
    each scalar latent's from :func:`scalar_precision` (cross terms are left out).

    ``w``: the latents dict at the point (or w alone for a model without scalar latents).
    ``curvature``: ``"gauss_newton"`` (:func:`gauss_newton_precision`, min(M, D) passes, sketched
    above ``max_rows``) or ``"hessian"`` (:func:`hessian_precision`, D Hessian-vector products, exact at ``w``).
    """
    return covariance_of(laplace_precision(model, y, w, max_rows=max_rows, seed=seed, info=info,
                                           curvature=curvature), jitter)


__all__ = ["DEFAULT_LAPLACE_PASSES", "curvature_passes", "exact_hessian", "gauss_newton_precision", "laplace_precision", "covariance_of", "hessian_precision", "scalar_precision", "laplace_covariance"]
