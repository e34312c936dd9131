"""Compare inference algorithms for BRGM on one bundled face: MAP, VI, SGLD, pSGLD and NUTS.

Two tasks on test face 0 of the procedural faces data set: x8 super-resolution (8x8 observed)
and in-painting (a 24x32 block over nose and mouth missing), both with Gaussian pixel noise
sigma = 0.05 and the model's pixel likelihood at the same sigma (no perceptual term, so that the
comparison is about the samplers). Every method starts from the same MAP (1000 Adam steps;
at 300 the in-painting MAP is far from converged: log p(w, y) = 305 against 4022 at 1000).

Every sampler's chains start at independent draws of the Laplace approximation N(MAP, P^-1)
(Gauss-Newton precision at the MAP; the typical set of a 1280-dimensional posterior is far from
its mode). Budgets are matched in gradient evaluations: NUTS runs first (``--chains`` chains,
``--warmup`` + ``--draws`` draws each, the Laplace covariance as its mass matrix); SGLD and pSGLD
then get the same number of gradient evaluations (their thinning is set to match), with the same
chains, starts and draws; VI gets ``budget / particles`` steps.

Reported per method: wall time (seconds of the method itself; the shared MAP is reported on its
own row), gradient evaluations (MAP warm start and curvature included), ESS/s (smallest bulk ESS
over the scalar summaries of ``brgm diagnose`` divided by the method's seconds), PSNR of the
posterior mean image to the truth, coverage of the true pixels by per-pixel 90% credible
intervals (all pixels; for in-painting also the missing ones), and the largest R-hat.

    python examples/compare_inference.py [--generator builtin:faces64] [--out examples/compare_out]

Writes ``results.md``, ``results.json``, ``compare.png`` and, for NUTS, ``posterior_<task>.nc``
with ``diagnostics_<task>/`` (trace and rank plots) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brgm_pyro.data.faces import face_image  # noqa: E402
from brgm_pyro.diagnostics import diagnose, write_plots  # noqa: E402
from brgm_pyro.inference import run_map, run_vi  # noqa: E402
from brgm_pyro.inference.arviz_io import to_inference_data, write_inference_data  # noqa: E402
from brgm_pyro.inference.mcmc import run_mcmc  # noqa: E402
from brgm_pyro.inference.mcmc.langevin import langevin_init, max_curvature  # noqa: E402
from brgm_pyro.metrics import psnr  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402

SIGMA = 0.05


def to01(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [-1, 1] -> (H, W, C) in [0, 1]."""
    return ((x.detach().cpu().float().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy()


def coverage(samples: torch.Tensor, truth: torch.Tensor, where=None) -> float:
    """Fraction of true pixel values inside the per-pixel 5%-95% quantiles of the draws."""
    lo = torch.quantile(samples.float(), 0.05, dim=0)
    hi = torch.quantile(samples.float(), 0.95, dim=0)
    inside = (truth >= lo) & (truth <= hi)
    if where is not None:
        inside = inside[where.expand_as(inside)]
    return float(inside.float().mean())


def paper_sgld_check(model, y, w_map, steps: int = 20, eps: float = 1e-3, seed: int = 0) -> dict:
    """Unadjusted Langevin with a learning-rate-like step (1e-3) and no safeguards, from the MAP,
    against the curvature rule eps = 0.5 / lambda_max: the first diverges, the second does not."""
    g = torch.Generator().manual_seed(seed)

    def grad_fn(z):
        zz = z.detach().reshape(w_map.shape).requires_grad_(True)
        u = -model.log_joint(zz, y).sum()
        (gr,) = torch.autograd.grad(u, zz)
        return u.detach(), gr.reshape(-1)

    st = langevin_init(w_map.reshape(-1), grad_fn)
    lam = max_curvature(grad_fn, st, iters=20)
    out = {"lambda_max": lam, "auto_step": 0.5 / lam, "eps_lambda_paper": eps * lam}
    for name, e in (("paper", eps), ("auto", 0.5 / lam)):
        z, u0 = st.z.clone(), float(st.potential)
        diverged_at = None
        for t in range(steps):
            u, gr = grad_fn(z)
            if not (math.isfinite(float(u)) and torch.isfinite(gr).all()) or float(u) > 1e8:
                diverged_at = t
                break
            z = z - 0.5 * e * gr + math.sqrt(e) * torch.randn(z.shape, generator=g)
        u_end = float(grad_fn(z)[0]) if diverged_at is None else float("inf")
        out[name] = {"step": e, "U_start": u0, "U_end": u_end, "diverged_at": diverged_at}
    return out


def make_problem(task: str, G, face: int = 0, seed: int = 0, discrepancy: str = "off", prior: str = "brgm"):
    """The example's problem: (truth x (1, 3, 64, 64), corruption, missing-pixel mask or None, model, y).

    x8 box-kernel super-resolution, or in-painting of the 24 x 32 block [30:54, 16:48], of test face
    ``face``, observation noise N(0, SIGMA^2) drawn with ``seed``. (benchmarks/nuts_geometry.py
    rebuilds the same problem from here.)
    """
    x = face_image(face, "test")[None]
    if task == "superres":
        corr, where = SuperResolution(8, "box"), None
    else:
        mask = torch.ones(64, 64)
        mask[30:54, 16:48] = 0
        corr, where = Inpainting(mask), ~mask.bool()[None]
    disc = None if discrepancy == "off" else ("auto" if discrepancy == "auto" else float(discrepancy))
    model = build_model(G, corr, prior=prior, sigma_pixel=SIGMA, discrepancy=disc)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = corr(x) + SIGMA * torch.randn(corr(x).shape, generator=gen)
    return x, corr, where, model, y


def run_task(task: str, G, args, out: Path) -> dict:
    x, corr, where, model, y = make_problem(task, G, args.face, args.seed, args.discrepancy, args.prior)
    rows, images = [], {"truth": to01(x[0])}
    obs = corr(x)[0]
    images["observation"] = to01(torch.nn.functional.interpolate(obs[None], size=64, mode="nearest")[0]
                                 if task == "superres" else obs)

    t0 = time.perf_counter()
    map_kw = {k: v for k, v in (("lr", args.map_lr), ("lr_decay", args.map_lr_decay)) if v is not None}
    res_map = run_map(model, y, steps=args.map_steps, seed=args.seed, progress=False, **map_kw)
    t_map = time.perf_counter() - t0
    w_map = res_map.w
    images["MAP"] = to01(res_map.image[0])
    rows.append({"method": "MAP", "seconds": t_map, "grad_evals": args.map_steps,
                 "psnr": psnr(to01(res_map.image[0]), images["truth"])})
    with torch.no_grad():
        rows[-1]["lp"] = float(model.log_joint(w_map, y).sum())
    print(f"[{task}] MAP {t_map:.1f} s, PSNR {rows[-1]['psnr']:.2f}, log p(w, y) {rows[-1]['lp']:.1f}", flush=True)
    check = paper_sgld_check(model, y, w_map, seed=args.seed)
    print(f"[{task}] lambda_max at the MAP {check['lambda_max']:.3g}; paper-like SGLD step 1e-3 "
          f"(eps*lambda = {check['eps_lambda_paper']:.3g}): {check['paper']}; auto step: {check['auto']}", flush=True)

    results = {}

    def record(name, res, seconds, extra_grads=0):
        S = res.samples
        mean = S.mean(0)[0]
        row = {"method": name, "seconds": seconds,
               "grad_evals": int(res.extra.get("sampler_grad_evals", 0)) + int(res.extra.get("laplace_grad_evals", 0))
               + extra_grads,
               "psnr": psnr(to01(mean), images["truth"]),
               "coverage90": coverage(S[:, 0], x[0])}
        if where is not None:
            row["coverage90_missing"] = coverage(S[:, 0], x[0], where)
        idata = to_inference_data(res, model, y)
        rep = diagnose(idata)
        row["min_ess_bulk"] = rep["min_ess_bulk"]
        row["ess_per_s"] = rep["min_ess_bulk"] / seconds
        row["max_r_hat"] = rep["max_r_hat"] if res.extra.get("num_chains", 1) > 1 else float("nan")
        if "divergences" in rep:
            row["divergences"] = rep["divergences"]
        rows.append(row)
        images[f"{name} mean"] = to01(mean)
        results[name] = (res, idata, rep)
        print(f"[{task}] {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in row.items() if k != "method"), flush=True)
        return row

    # NUTS first: its gradient count sets the budget of the others
    t0 = time.perf_counter()
    res = run_mcmc(model, y, method="nuts", init=args.init, init_jitter=args.init_jitter, map_w=w_map,
                   steps=args.warmup, num_samples=args.draws, num_chains=args.chains, mass=args.mass,
                   curvature=args.curvature,
                   max_tree_depth=args.max_tree_depth, seed=args.seed, progress=False,
                   workers=args.workers, threads_per_worker=args.threads)
    row = record("NUTS", res, time.perf_counter() - t0)
    budget = res.extra["sampler_grad_evals"] + res.extra["laplace_grad_evals"]
    idata_nuts, rep_nuts = results["NUTS"][1], results["NUTS"][2]
    write_inference_data(idata_nuts, out / f"posterior_{task}.nc")
    write_plots(idata_nuts, out / f"diagnostics_{task}")
    (out / f"diagnostics_{task}" / "diagnostics.json").write_text(json.dumps(rep_nuts, indent=2, default=float))
    images["NUTS std"] = res.samples.std(0)[0].mean(0).numpy()

    steps_per_chain = args.warmup + args.draws
    thin = max(1, round(budget / (args.chains * steps_per_chain)))
    methods = set(args.methods.split(","))
    for name, method in (("SGLD", "sgld"), ("pSGLD", "psgld")):
        if method not in methods:
            continue
        t0 = time.perf_counter()
        res = run_mcmc(model, y, method=method, init="laplace", map_w=w_map, steps=args.warmup,
                       num_samples=args.draws, num_chains=args.chains, thin=thin, curvature=args.curvature,
                       seed=args.seed, progress=False, workers=args.workers, threads_per_worker=args.threads)
        record(name, res, time.perf_counter() - t0)

    if "vi" in methods:
        vi_steps = max(1, budget // args.vi_particles)
        t0 = time.perf_counter()
        res = run_vi(model, y, steps=vi_steps, num_particles=args.vi_particles,
                     num_samples=args.chains * args.draws, init_w=w_map, seed=args.seed, progress=False)
        res.extra["sampler_grad_evals"] = vi_steps * args.vi_particles
        record("VI", res, time.perf_counter() - t0)
    for r in rows[1:]:
        r["grad_evals"] += args.map_steps  # every method starts from the MAP
    return {"task": task, "rows": rows, "images": images, "sgld_check": check,
            "nuts_diagnostics": {k: v for k, v in rep_nuts.items()}}


def write_outputs(all_tasks: list, args, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = [f"Generator `{args.generator}`, test face {args.face}, sigma = {SIGMA}, seed {args.seed}; "
             f"{args.chains} chains x ({args.warmup} warm-up + {args.draws}) draws; NUTS max tree depth "
             f"{args.max_tree_depth}; torch threads {torch.get_num_threads()}"
             f"{f', MCMC chains {args.workers} at a time in separate processes' if args.workers > 1 else ''}.", ""]
    for t in all_tasks:
        lines += [f"### {t['task']}", "",
                  "| method | seconds | grad evals | min ESS | ESS/s | PSNR (dB) | 90% coverage | "
                  + ("coverage (missing) | " if t["task"] == "inpaint" else "") + "max R-hat |",
                  "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if t["task"] == "inpaint" else "") + "---:|"]
        for r in t["rows"]:
            f = lambda k, fmt: (fmt.format(r[k]) if k in r and r[k] == r[k] else "-")  # noqa: E731
            lines.append(f"| {r['method']} | {f('seconds', '{:.1f}')} | {r['grad_evals']} | "
                         f"{f('min_ess_bulk', '{:.0f}')} | {f('ess_per_s', '{:.2f}')} | {f('psnr', '{:.2f}')} | "
                         f"{f('coverage90', '{:.3f}')} | "
                         + (f"{f('coverage90_missing', '{:.3f}')} | " if t["task"] == "inpaint" else "")
                         + f"{f('max_r_hat', '{:.3f}')} |")
        c = t["sgld_check"]
        fate = ("stayed finite for 20 steps" if c["paper"]["diverged_at"] is None
                else f"diverged (non-finite or U > 1e8) at step {c['paper']['diverged_at']}")
        lines += ["", f"lambda_max of the Hessian at the MAP: {c['lambda_max']:.3g}. Unadjusted Langevin with a "
                  f"learning-rate-like step 1e-3 (eps * lambda_max = {c['eps_lambda_paper']:.3g}; stable only "
                  f"below 4): {fate}; with the curvature rule eps = 0.5 / lambda_max = {c['auto']['step']:.2e}: "
                  f"U {c['auto']['U_start']:.1f} -> {c['auto']['U_end']:.1f} after 20 steps, finite.", ""]
        d = t["nuts_diagnostics"]
        lines += ["NUTS diagnostics (`brgm diagnose`):", "", "```"]
        from brgm_pyro.diagnostics import format_report

        lines += format_report(d) + ["```", ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps([{k: v for k, v in t.items() if k != "images"}
                                                  for t in all_tasks], indent=2, default=float))
    cols = ["truth", "observation", "MAP", "VI mean", "SGLD mean", "pSGLD mean", "NUTS mean", "NUTS std"]
    fig, axes = plt.subplots(len(all_tasks), len(cols), figsize=(2 * len(cols), 2.2 * len(all_tasks)))
    axes = np.atleast_2d(axes)
    for i, t in enumerate(all_tasks):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            im = t["images"].get(c)
            if im is not None:
                ax.imshow(im, cmap="magma" if im.ndim == 2 else None)
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(c, fontsize=9)
        axes[i, 0].set_ylabel(t["task"])
    fig.tight_layout()
    fig.savefig(out / "compare.png", dpi=90)
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "compare_out"))
    ap.add_argument("--tasks", default="superres,inpaint")
    ap.add_argument("--methods", default="sgld,psgld,vi", help="besides MAP and NUTS (always run)")
    ap.add_argument("--face", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--map-steps", type=int, default=1000)
    ap.add_argument("--map-lr", type=float, default=None, help="MAP learning rate (default: run_map's)")
    ap.add_argument("--map-lr-decay", type=float, default=None, help="MAP learning-rate decay (default: run_map's)")
    ap.add_argument("--discrepancy", default="off",
                    help="off, auto (the scale stored beside the weights by brgm fit-discrepancy) or tau")
    ap.add_argument("--prior", default="brgm", help="the prior on W+ (a registered name: brgm, flow, rls, studentt, ...)")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=15)
    ap.add_argument("--draws", type=int, default=25)
    ap.add_argument("--max-tree-depth", type=int, default=5)
    ap.add_argument("--init", default="laplace", choices=["laplace", "map"], help="NUTS chains start at Laplace "
                    "draws around the MAP (dispersed) or at the MAP itself (with --init-jitter)")
    ap.add_argument("--init-jitter", type=float, default=0.0, help="with --init map: chains 1.. start at the MAP "
                    "plus this many prior standard deviations of Gaussian noise")
    ap.add_argument("--curvature", default="gauss_newton", choices=["gauss_newton", "hessian"])
    ap.add_argument("--mass", default="laplace", choices=["laplace", "laplace_warmup"],
                    help="NUTS metric: the Laplace covariance at the MAP, or each chain's own from the mean Laplace "
                         "precision of its warm-up draws (docs/mcmc.md)")
    ap.add_argument("--vi-particles", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (per worker process)")
    ap.add_argument("--workers", type=int, default=1,
                    help="run MCMC chains this many at a time in CPU processes (wall time falls, draws unchanged)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    G = load_generator(args.generator)
    t0 = time.perf_counter()
    tasks = [run_task(t, G, args, out) for t in args.tasks.split(",")]
    write_outputs(tasks, args, out)
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
