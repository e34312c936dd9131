"""Why NUTS mixes slowly on in-painting: the posterior's curvature across its typical set (issue #13).

HMC/NUTS with a fixed metric M^-1 (ours: the Laplace covariance P^-1 at the MAP) mixes in a few
leapfrog steps only if the Hessian H(w) of U = -log p(w | y) looks the same everywhere the chains
go. In the metric's whitened coordinates the eigenvalues lambda of P^-1/2 H(w) P^-1/2 say how far
it does not: leapfrog is stable only for a step eps < 2 / sqrt(lambda_max), and a trajectory must
be about pi / (2 sqrt(lambda_min)) long to cross the softest direction, so an independent draw
costs at least ~ sqrt(lambda_max / lambda_min) gradients (more with NUTS's acceptance target, and
random-walk-like when the tree-depth cap cuts trajectories short).

For the example's problem (``examples/compare_inference.py``: one test face, x8 SR or the
[30:54, 16:48] in-painting block, its noise and seed), this script computes the MAP, the exact
Gauss-Newton precision P there (what ``run_mcmc(mass="laplace")`` uses), and at draws of a
previous NUTS run (its ``posterior_<task>.nc``; each draw is a point of the typical set): the
whitened distance from the MAP, the log joint, and the spectrum of the exact Hessian H(w) in
three metrics: P at the MAP, the Gauss-Newton precision at another draw, and the mean of the
Gauss-Newton precisions at the other draws (leave-one-out: a metric "from warm-up draws").

    python benchmarks/nuts_geometry.py --posterior runs/nuts_inpaint_w400/posterior_inpaint.nc \
        --task inpaint --discrepancy auto --map-steps 3000 --out runs/nuts_geometry
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
from compare_inference import make_problem  # noqa: E402

from brgm_pyro.inference import run_map  # noqa: E402
from brgm_pyro.inference.mcmc.laplace import exact_hessian, gauss_newton_precision  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402


def whitened_spectrum(P: torch.Tensor, H: torch.Tensor) -> np.ndarray:
    """Eigenvalues of L^-1 H L^-T with P = L L^T (H in the metric P^-1), ascending, float64."""
    Li = torch.linalg.inv(torch.linalg.cholesky(P))
    return torch.linalg.eigvalsh(Li @ H @ Li.T).numpy()


def summary(lam: np.ndarray) -> dict:
    """The numbers that set a fixed-metric sampler's cost, from a whitened Hessian spectrum."""
    pos = lam[lam > 0]
    lo = float(pos.min()) if pos.size else float("nan")
    return {"lambda_max": float(lam.max()), "lambda_min_positive": lo, "negative": int((lam < 0).sum()),
            "step_stable": 2.0 / math.sqrt(float(lam.max())), "steps_per_crossing":
            (math.pi / 2) * math.sqrt(float(lam.max()) / lo) if pos.size else float("nan")}


def points_from(path: Path, per_chain: int) -> dict[str, torch.Tensor]:
    """Draws of w spread over each chain of an ArviZ posterior: name -> (1, L, d)."""
    import arviz as az

    w = az.from_netcdf(path).posterior["w"].values  # (chains, draws, B, L, d)
    C, S = w.shape[:2]
    picks = np.linspace(S // 4, S - 1, per_chain).astype(int)
    return {f"chain {c} draw {s}": torch.as_tensor(w[c, s]).float() for c in range(C) for s in picks}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--posterior", required=True, help="posterior_<task>.nc of a compare_inference.py NUTS run")
    ap.add_argument("--task", default="inpaint", choices=["inpaint", "superres"])
    ap.add_argument("--discrepancy", default="auto")
    ap.add_argument("--face", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--map-steps", type=int, default=3000)
    ap.add_argument("--per-chain", type=int, default=2, help="draws taken from each chain")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="runs/nuts_geometry")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    G = load_generator("builtin:faces64")
    _, _, _, model, y = make_problem(a.task, G, a.face, a.seed, a.discrepancy)
    t0 = time.perf_counter()
    w_map = run_map(model, y, steps=a.map_steps, seed=a.seed, progress=False).w
    P = gauss_newton_precision(model, y, w_map)
    pts = points_from(Path(a.posterior), a.per_chain)
    L = torch.linalg.cholesky(P)
    gn = {k: gauss_newton_precision(model, y, w) for k, w in pts.items()}
    rows = [{"point": "MAP", "lp": float(model.log_joint(w_map, y).sum()), "distance": 0.0,
             "in MAP metric": summary(whitened_spectrum(P, exact_hessian(model, y, w_map)))}]
    names = list(pts)
    for i, k in enumerate(names):
        H = exact_hessian(model, y, pts[k])
        others = [gn[n] for n in names if n != k]
        dist = float((L.T @ (pts[k] - w_map).reshape(-1).double()).norm())
        with torch.no_grad():
            lp = float(model.log_joint(pts[k], y).sum())
        rows.append({"point": k, "lp": lp, "distance": dist,
                     "in MAP metric": summary(whitened_spectrum(P, H)),
                     "in one other draw's metric": summary(whitened_spectrum(gn[names[i - 1]], H)),
                     "in the mean metric of the other draws": summary(whitened_spectrum(sum(others) / len(others), H))})
        print(f"{k}: lp {lp:.0f}, distance {dist:.1f}, " + "; ".join(
            f"{m}: lambda {r['lambda_min_positive']:.3g}..{r['lambda_max']:.3g}, ~{r['steps_per_crossing']:.0f} steps"
            for m, r in rows[-1].items() if isinstance(r, dict)), flush=True)
    res = {"task": a.task, "D": int(w_map.numel()), "typical_radius": math.sqrt(w_map.numel()), "rows": rows,
           "seconds": time.perf_counter() - t0, "command": " ".join(sys.argv)}
    (out / f"geometry_{a.task}.json").write_text(json.dumps(res, indent=1))
    (out / f"geometry_{a.task}.md").write_text(markdown(res))
    print(markdown(res))
    return res


def markdown(res: dict) -> str:
    metrics = ["in MAP metric", "in one other draw's metric", "in the mean metric of the other draws"]
    lines = [f"{res['task']}: D = {res['D']} (a Gaussian's typical set is ~{res['typical_radius']:.0f} whitened "
             "units from its mode); lambda = eigenvalues of the exact Hessian in the metric; steps = "
             "(pi/2) sqrt(lambda_max / lambda_min+)", "",
             "| point | lp | distance from MAP | " + " | ".join(f"{m}: lambda_min+ .. max (negative), steps"
                                                       for m in metrics) + " |",
             "|---|---:|---:|" + "---:|" * len(metrics)]
    for r in res["rows"]:
        cells = [f"{r[m]['lambda_min_positive']:.3g} .. {r[m]['lambda_max']:.3g} ({r[m]['negative']}), "
                 f"{r[m]['steps_per_crossing']:.0f}" if m in r else "-" for m in metrics]
        lines.append(f"| {r['point']} | {r['lp']:.0f} | {r['distance']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
