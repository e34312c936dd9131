"""Simulation-based calibration of NUTS and MALA (Talts et al. 2018), for benchmarks/calibration.py.

A small linear generator (G(w) = M vec(w) + b, L = 2 layers of d = 3, a 1x4x4 image), a Gaussian
prior on w, in-painting of 2/3 of the pixels with Gaussian noise: the posterior is Gaussian and
the sampler is the only approximation. For each of ``--sbc-runs`` datasets: w* ~ prior,
y ~ p(y | w*), the sampler's chain (from a prior draw, 2 chains, the runner's adaptation), L = 99
draws thinned to near independence, and the rank of each coordinate of w* among them. Uniform
ranks on {0..L} for every coordinate (chi-square, 10 bins) are what an exact sampler gives.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from brgm_pyro import calibration
from brgm_pyro.inference.mcmc import run_mcmc
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Inpainting
from brgm_pyro.models.generators import LinearGenerator

RANK_DRAWS = 99
SIGMA = 0.3


def sbc_model():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=3)
    mask = torch.arange(16).reshape(4, 4) % 3 != 0
    return build_model(G, Inpainting(mask), prior="gaussian", sigma_pixel=SIGMA)


def one_run(model, method: str, i: int, warmup: int, kept: int, thin: int) -> np.ndarray:
    """Ranks (D,) of the true w among RANK_DRAWS thinned draws for simulated dataset i."""
    g = torch.Generator().manual_seed(50_000 + i)
    base = model.prior.distribution().base_dist
    w = base.loc + base.scale * torch.randn(base.loc.shape, generator=g)
    w = w.reshape(1, *model.generator.latent_shape)
    with torch.no_grad():
        y = model.predict(w) + SIGMA * torch.randn(1, *model.obs_shape, generator=g)
    r = run_mcmc(model, y, method=method, num_chains=2, steps=warmup, num_samples=kept, init="prior",
                 seed=i, progress=False, **({"thin": thin} if method == "mala" else {}))
    d = r.draws["w"].reshape(-1, w.numel())
    idx = np.linspace(0, d.shape[0] - 1, RANK_DRAWS).round().astype(int)  # thin across both chains
    return calibration.sbc_ranks(d[idx], w.reshape(-1)).numpy()


def part_sbc(args, out: Path, logf: Path) -> None:
    from calibration import log

    model = sbc_model()
    res_path = out / "sbc.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    settings = {"nuts": dict(warmup=100, kept=100, thin=1), "mala": dict(warmup=150, kept=150, thin=5)}
    for method, kw in settings.items():
        ranks = results.get(method, {}).get("ranks", [])
        t0 = time.perf_counter()
        for i in range(len(ranks), args.sbc_runs):
            ranks.append(one_run(model, method, i, **kw).tolist())
            if (i + 1) % 20 == 0:
                results[method] = {"ranks": ranks, **kw}
                res_path.write_text(json.dumps(results))
                log(f"sbc {method}: {i + 1}/{args.sbc_runs} runs ({time.perf_counter() - t0:.0f} s)", logf)
        R = np.array(ranks)
        per = [calibration.sbc_uniformity(R[:, j], RANK_DRAWS) for j in range(R.shape[1])]
        pooled = calibration.sbc_uniformity(R, RANK_DRAWS)
        results[method] = {"ranks": ranks, **kw, "pooled": pooled, "per_coordinate_p": [p["p_value"] for p in per],
                           "min_p": min(p["p_value"] for p in per)}
        res_path.write_text(json.dumps(results))
        log(f"sbc {method}: pooled chi2 p = {pooled['p_value']:.3f}, per-coordinate p min "
            f"{results[method]['min_p']:.3f} (Bonferroni over {R.shape[1]}: {min(1, R.shape[1] * results[method]['min_p']):.3f})",
            logf)
    plot_ranks(results, out / "sbc_ranks.png")


def plot_ranks(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in ("nuts", "mala") if m in results]
    D = len(results[methods[0]]["ranks"][0])
    fig, axes = plt.subplots(len(methods), D, figsize=(2.0 * D, 2.0 * len(methods)), squeeze=False)
    for r, m in enumerate(methods):
        R = np.array(results[m]["ranks"])
        n = R.shape[0]
        lo, hi = np.percentile(np.random.default_rng(0).binomial(n, 0.1, 10_000), [0.5, 99.5])
        for j in range(D):
            ax = axes[r, j]
            counts, _, _ = ax.hist(R[:, j], bins=np.linspace(0, RANK_DRAWS + 1, 11), color="C0")
            ax.axhspan(lo, hi, color="0.85", zorder=0)
            ax.axhline(n / 10, color="k", lw=0.6)
            ax.set_ylim(0, 1.15 * max(hi, counts.max()))
            ax.set_title(f"{m} w[{j}]", fontsize=8)
            ax.set_yticks([])
            ax.set_xticks([])
    fig.suptitle("SBC rank histograms (grey: 99 % band of a uniform histogram)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
