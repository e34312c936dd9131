"""Why INLA's blur-width posterior is biased on a non-linear generator: an importance-sampling probe.

For prior-drawn truths (the model with the Gaussian prior exactly right), x4 super-resolution with a
Gaussian kernel of std ``--width``, noise 0.02, this runs INLA's steps (a conditional MAP of w, the
linearisation, the grid over the width, one refinement) and then, at the final grid's nodes, draws
w from the linearised Gaussian posterior and weighs each draw by the true log joint over the
linearised one,

    log r(w) = log N(y | f_t(G(w)), s^2) - log N(y | p_t + J_t (w - w_c), s^2)

(the Gaussian prior cancels), so that p(y | t) = p_lin(y | t) E_q[r]. It prints, per node, INLA's
log posterior, the importance-sampling correction log mean r, var(log r) and the weights' ESS
per draw. A var(log r) of hundreds of thousands of nats^2 (measured: 2e5-6e5, ESS 1/K) says the
linearised posterior is not a usable proposal: it is far too wide where the data do not decide w
at first order, and G's curvature there moves the observation by more than the noise.

    python benchmarks/inla_blur_probe.py --width 1.0 --faces 2 --draws 64 --threads 1
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.distributions import biject_to

from brgm_pyro.inference import inla as I
from brgm_pyro.inference.sites import initial_values
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.corruptions.superres import blur_width_latent
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator


def setup(width: float, faces: int):
    """The model and observations of learned_latents.py's prior-drawn blur rows (same seeds)."""
    from learned_latents import _blurred, prior_drawn

    G = load_generator("builtin:faces64").eval()
    stats = latent_stats_for(G)
    f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
    y = _blurred(f, prior_drawn(G, stats, 8), width, {1.0: 0, 2.0: 1, 3.0: 2}.get(width, 0))[:faces]
    return build_model(G, f, prior="gaussian", sigma_pixel=0.02, stats=stats), y


def inla_steps(model, y, points: int = 25, zooms: int = 2):
    """INLA's steps with refine=1, restated from run_inla's body (which keeps its Linearisation to
    itself): (linearisation, grid posterior, parts). Keep in step with run_inla."""
    parts = I._parts(model)
    th = parts.theta
    vals = initial_values(model, y, None, None)
    w_c, _ = I.conditional_map(model, y, vals["w"], {th.name: vals[th.name]}, 500, 0.1, 0.1, False)
    lin = I.Linearisation(model, parts, y, w_c, None)
    lo, hi = I._prior_range(th, y)
    m = I._posterior_mean(th, I.grid_posterior(I._log_posterior_fn(lin, False), lo, hi, y.shape[0], points, zooms), y)
    w_c, _ = I.gauss_newton_step(lin, m, w_c, False)
    w_c, _ = I.conditional_map(model, y, w_c, {th.name: m}, 200, 0.1, 0.1, False)
    lin = I.Linearisation(model, parts, y, w_c, m)
    return lin, I.grid_posterior(I._log_posterior_fn(lin, False), lo, hi, y.shape[0], points, zooms), parts


def log_ratios(model, lin, theta: torch.Tensor, K: int, gen: torch.Generator, sigma: float = 0.02) -> torch.Tensor:
    """log r(w) (K, B) for K draws of w from the linearised posterior at ``theta`` (B,)."""
    B = lin.B
    J, p = lin.operator(theta)
    xi = torch.randn(K, B, lin.D, generator=gen, dtype=torch.float64)
    eta = torch.randn(K, B, lin.yv.shape[-1], generator=gen, dtype=torch.float64)
    ws = lin.draw_given(lin.gaussian(theta), xi, eta)
    lin_pred = p + torch.einsum("bnd,kbd->kbn", J, ws - lin.w_c)
    name = lin.parts.theta.name
    with torch.no_grad():
        true_pred = torch.stack([I._flat(model, model.predict(ws[k].float().reshape(B, *model.generator.latent_shape),
                                                              {name: theta}), B) for k in range(K)])
    obs = lin.m
    return -0.5 / sigma ** 2 * ((obs * (lin.yv - true_pred) ** 2).sum(-1) - (obs * (lin.yv - lin_pred) ** 2).sum(-1))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--faces", type=int, default=2)
    ap.add_argument("--draws", type=int, default=64, help="importance draws per grid node")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model, y = setup(a.width, a.faces)
    lin, post, parts = inla_steps(model, y)
    t = biject_to(parts.theta.prior.support)
    nodes, lp = post["nodes"], post["log_post_nodes"]
    gen = torch.Generator().manual_seed(0)
    corr, var, ess = (torch.zeros_like(nodes) for _ in range(3))
    for j in range(nodes.shape[1]):
        d = log_ratios(model, lin, t(nodes[:, j].float()), a.draws, gen)
        corr[:, j] = torch.logsumexp(d, 0) - math.log(a.draws)
        var[:, j] = d.var(0)
        ess[:, j] = 1.0 / (torch.softmax(d, 0) ** 2).sum(0) / a.draws
    for b in range(a.faces):
        mean = lambda l: float((torch.softmax(l, 0) * t(nodes[b])).sum())  # noqa: E731 (node-weighted mean)
        print(f"face {b}: true width {a.width}; INLA (node-weighted) mean {mean(lp[b]):.3f}, "
              f"importance-corrected {mean(lp[b] + corr[b]):.3f}")
        print("   width    INLA log post   log mean r   var(log r)   ESS/K")
        for j in range(0, nodes.shape[1], 3):
            print(f"   {float(t(nodes[b, j])):.3f} {float(lp[b, j] - lp[b].max()):14.2f} {float(corr[b, j]):12.1f} "
                  f"{float(var[b, j]):12.0f} {float(ess[b, j]):7.3f}")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
