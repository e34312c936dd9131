"""Does NUTS leave a region of the in-painting posterior when its trees may grow long? (issue #13)

Starts one NUTS chain at a draw of an earlier run (``posterior_<task>.nc`` of
``examples/compare_inference.py``; e.g. the last draw of the chain that stayed ~230 nats below the
others) and lets trees grow to ``--depth``, in one of two fixed metrics:

* ``map``: the Laplace covariance at the MAP (what ``run_mcmc(mass="laplace")`` uses; ``--laplace-rows
  512`` reproduces the sketched Gauss-Newton metric of the runs before the tenth session);
* ``draws``: the inverse of the mean exact Gauss-Newton precision at draws ``--metric-at`` of every
  chain of the same run (a dense metric "from warm-up draws").

Prints, per kept draw, the tree depth, step size, acceptance statistic and potential energy U = -lp.
If every tree reaches the cap and lp stays put, the trajectories are too short for the geometry
(benchmarks/nuts_geometry.py measures why).

    python benchmarks/nuts_deep_probe.py --posterior runs/nuts_inpaint_w400/posterior_inpaint.nc \
        --chain 2 --draw 1099 --metric map --laplace-rows 512 --depth 10 --warmup 40 --draws 40
    python benchmarks/nuts_deep_probe.py --posterior runs/nuts_inpaint_w400/posterior_inpaint.nc \
        --chain 2 --draw 1099 --metric draws --depth 9 --warmup 30 --draws 30

(The tenth session's two runs were made with session scripts doing exactly this, before they were
moved here; docs/mcmc.md and examples/README.md report them.)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from compare_inference import make_problem  # noqa: E402

from brgm_pyro.inference import run_map  # noqa: E402
from brgm_pyro.inference.mcmc import run_mcmc  # noqa: E402
from brgm_pyro.inference.mcmc.laplace import gauss_newton_precision  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402


def mean_draws_covariance(model, y, pts: dict) -> torch.Tensor:
    """Inverse of the mean exact Gauss-Newton precision over the points: (D, D) float32, symmetric."""
    P = sum(gauss_newton_precision(model, y, w) for w in pts.values()) / len(pts)
    cov = torch.cholesky_inverse(torch.linalg.cholesky(P)).float()
    return 0.5 * (cov + cov.T)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posterior", required=True)
    ap.add_argument("--task", default="inpaint", choices=["inpaint", "superres"])
    ap.add_argument("--discrepancy", default="auto")
    ap.add_argument("--chain", type=int, default=2)
    ap.add_argument("--draw", type=int, default=-1)
    ap.add_argument("--metric", default="map", choices=["map", "draws"])
    ap.add_argument("--metric-at", default="300,700", help="with --metric draws: draw indices taken from every chain")
    ap.add_argument("--laplace-rows", type=int, default=None, help="with --metric map: passes of the Laplace metric")
    ap.add_argument("--map-steps", type=int, default=3000)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=40)
    ap.add_argument("--draws", type=int, default=40)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/nuts_deep_probe")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import arviz as az

    G = load_generator("builtin:faces64")
    _, _, _, model, y = make_problem(a.task, G, 0, 0, a.discrepancy)
    w = az.from_netcdf(a.posterior).posterior["w"].values
    w0 = torch.as_tensor(w[a.chain, a.draw]).float()[None]  # (1 chain, B, L, d)
    t0 = time.perf_counter()
    if a.metric == "map":
        w_map = run_map(model, y, steps=a.map_steps, seed=0, progress=False).w
        kw = dict(map_w=w_map, mass="laplace", laplace_rows=a.laplace_rows)
    else:
        at = [int(i) for i in a.metric_at.split(",")]
        pts = {(c, i): torch.as_tensor(w[c, i]).float() for c in range(w.shape[0]) for i in at}
        kw = dict(mass="diag", inverse_mass=mean_draws_covariance(model, y, pts))
    res = run_mcmc(model, y, method="nuts", init=w0, steps=a.warmup, num_samples=a.draws, num_chains=1,
                   max_tree_depth=a.depth, seed=a.seed, progress=True, **kw)
    ss = res.extra["sample_stats"]
    out = {k: np.round(ss[k][0], 4).tolist() for k in ("tree_depth", "step_size", "accept_prob", "potential_energy")}
    out.update(seconds=time.perf_counter() - t0, gradients=int(res.extra["sampler_grad_evals"]),
               at_cap=float(np.mean(ss["tree_depth"][0] >= a.depth)), command=" ".join(sys.argv))
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / f"probe_{a.metric}_depth{a.depth}.json").write_text(json.dumps(out, indent=1))
    print(f"{out['gradients']} gradients, {out['seconds']:.0f} s; trees at the cap {100 * out['at_cap']:.0f} %; "
          f"step {out['step_size'][0]:.4g}; lp {-max(out['potential_energy']):.0f}..{-min(out['potential_energy']):.0f}")
    return out


if __name__ == "__main__":
    main()
