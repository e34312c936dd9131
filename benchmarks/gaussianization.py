"""Seed 004's Fig. 2 on our generator: how Gaussian is W after each prior's whitening, and how well
each prior explains held-out mapped latents (docs/flow_prior.md).

Held-out latents: ``--num`` w = mapping(z) with z from seed 1000 (the flow was fitted on seeds 0
and 1; the Gaussian statistics on seed 0). For each prior, the squared norm of the whitened latent
is compared with chi^2_d (what it would follow if the prior were right):

* ours (BRGM): u = (w - mu) / sigma, per-dimension statistics;
* PULSE: v = leaky-ReLU^-1(w) (undo the mapping network's last activation, slope 0.2), then
  per-dimension whitening of v;
* flow: F(w), the fitted flow's Gaussianised latent.

and the held-out log-likelihood per dimension (nats) of: the per-dimension Gaussian (BRGM), a
full-covariance Gaussian, the per-dimension Student-t (``--prior studentt``), PULSE's Gaussian on
v (with the Jacobian of the inversion) and the flow.

    python benchmarks/gaussianization.py --threads 1 --out runs/gaussianization
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from brgm_pyro.models.generators.loading import latent_stats_for, load_generator
from brgm_pyro.models.priors.flow import flow_nats_per_dim, gaussian_nats_per_dim
from brgm_pyro.models.priors.rls import flow_for
from brgm_pyro.models.priors.studentt import fit_student_df
from brgm_pyro.training.train_prior import mapped_latents

SLOPE = 0.2  # StyleGAN2's leaky ReLU


def pulse_inverse(w: torch.Tensor) -> torch.Tensor:
    """Undo the last leaky ReLU (its gain is absorbed by the whitening that follows)."""
    return torch.where(w >= 0, w, w / SLOPE)


def pulse_nats_per_dim(w: torch.Tensor, m: torch.Tensor, s: torch.Tensor) -> float:
    """log N(v | m, s^2) + log|dv/dw| per coordinate, v = leaky-ReLU^-1(w)."""
    v = pulse_inverse(w)
    lp = -0.5 * ((v - m) / s).pow(2) - s.log() - 0.5 * math.log(2 * math.pi)
    jac = (w < 0).double() * math.log(1 / SLOPE)
    return float((lp.sum(-1) + jac.sum(-1)).mean()) / w.shape[-1]


def full_gaussian_nats_per_dim(w: torch.Tensor, train: torch.Tensor) -> float:
    mvn = torch.distributions.MultivariateNormal(train.mean(0), torch.cov(train.T) + 1e-9 * torch.eye(train.shape[1]))
    return float(mvn.log_prob(w).mean()) / w.shape[-1]


def studentt_nats_per_dim(w: torch.Tensor, mu, sigma, df: float) -> float:
    scale = sigma * math.sqrt((df - 2) / df)
    return float(torch.distributions.StudentT(df, mu, scale).log_prob(w).sum(-1).mean()) / w.shape[-1]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--num", type=int, default=5000)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/gaussianization")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    G = load_generator(a.generator)
    stats = latent_stats_for(G)
    wflow = flow_for(G)
    held = mapped_latents(G, a.num, seed=1000).double()
    train = mapped_latents(G, 10_000, seed=0).double()  # the statistics' draws
    mu, sigma = stats.mu.double(), stats.sigma.double()
    v = pulse_inverse(train)
    pm, ps = v.mean(0), v.std(0)
    d = G.w_dim
    g = torch.Generator().manual_seed(1001)
    smooth = held + wflow.cfg.noise * sigma * torch.randn(held.shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        norms = {"ours (BRGM): (w - mu) / sigma": ((held - mu) / sigma).pow(2).sum(-1),
                 "PULSE: leaky-ReLU^-1 + whitening": ((pulse_inverse(held) - pm) / ps).pow(2).sum(-1),
                 "flow: F(w)": wflow.gaussianise(held.float()).double().pow(2).sum(-1),
                 f"flow: F(w + {wflow.cfg.noise:g} sigma eps), the smoothed W it fits":
                     wflow.gaussianise(smooth.float()).double().pow(2).sum(-1)}
    df = fit_student_df(G, stats.mu, stats.sigma)
    def lls(x):
        return {"gaussian (BRGM, per-dimension)": gaussian_nats_per_dim(x, mu, sigma),
                "gaussian, full covariance": full_gaussian_nats_per_dim(x, train),
                f"student-t (per-dimension, nu={df:g})": studentt_nats_per_dim(x, mu, sigma, df),
                "PULSE (leaky-ReLU^-1 + Gaussian)": pulse_nats_per_dim(x, pm, ps),
                "flow": flow_nats_per_dim(wflow, x.float())}

    ll, ll_smooth = lls(held), lls(smooth)
    res = {"generator": a.generator, "d": d, "num": a.num, "flow_file": wflow.summary.get("path"),
           "heldout_nats_per_dim": ll, "heldout_smoothed_nats_per_dim": ll_smooth,
           "squared_norm": {k: {"mean": float(x.mean()), "std": float(x.std()), "median": float(x.median()),
                                "chi2_mean": d, "chi2_std": math.sqrt(2 * d)} for k, x in norms.items()}}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    _figure(norms, ll, ll_smooth, d, out / "gaussianization.png")
    print(json.dumps(res, indent=2))
    return res


def _figure(norms: dict, ll: dict, ll_smooth: dict, d: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy.stats import chi2

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    hi = float(np.percentile(torch.cat(list(norms.values())).numpy(), 97))
    bins = np.linspace(0, max(hi, 2.5 * d), 120)
    for k, x in norms.items():
        ax.hist(x.clamp(max=bins[-1]).numpy(), bins=bins, density=True, histtype="step", lw=1.6, label=k)
    grid = np.linspace(0, bins[-1], 400)
    ax.plot(grid, chi2.pdf(grid, d), "k--", lw=1.4, label=f"chi^2_{d}")
    ax.set_xlabel("squared norm of the whitened latent (held-out mapped w; last bin: all above)")
    ax.set_ylabel("density")
    ax.set_title("Gaussianization of W (seed 004, Fig. 2) on builtin:faces64")
    ax.legend(fontsize=8)
    names = list(ll)
    pos = np.arange(len(names))
    bx.barh(pos - 0.2, [ll[n] for n in names], height=0.4, color="tab:blue", label="held-out w")
    bx.barh(pos + 0.2, [ll_smooth[n] for n in names], height=0.4, color="tab:orange", label="held-out w, smoothed")
    bx.set_yticks(pos, names, fontsize=8)
    bx.set_xlabel("held-out log-likelihood (nats per dimension)")
    bx.invert_yaxis()
    bx.legend(fontsize=7, loc="lower right")
    for i, n in enumerate(names):
        bx.text(max(ll[n], 0), i - 0.2, f" {ll[n]:.2f}", va="center", fontsize=7)
        bx.text(max(ll_smooth[n], 0), i + 0.2, f" {ll_smooth[n]:.2f}", va="center", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
