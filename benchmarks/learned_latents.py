"""Learned noise level and inferred blur width on builtin:faces64: does the posterior find the truth?

1. Noise: x8 super-resolution (bicubic) and free-form in-painting of 8 faces, observed with
   Gaussian noise of known std 0.02, 0.05 and 0.1 ([-1, 1] units). The model learns one
   ``sigma_pixel`` per image (``build_model(..., sigma_pixel="learn", noise_per_image=True)``,
   log-normal hyperprior around 0.05). Reported: the per-image posterior means (their mean over
   images), the fraction within 20 % of the truth, and the 90 % interval coverage. Two kinds of
   truth: images drawn from the generator itself (G(mapping(z))), where the model is right, and
   held-out test faces 0-7, where G cannot draw the truth exactly (its misfit looks like noise).
2. Blur width: x4 super-resolution with a Gaussian kernel of std 1, 2 and 3 input pixels,
   observation noise 0.02, the width inferred per image (``kernel_width``, log-normal prior
   around s/2 = 2). Reported: the posterior mean and whether the 90 % interval covers the truth.

Inference: MAP (300 Adam steps) then VI (AutoNormal over every site, warm-started at the MAP,
``vi_steps``); pixel likelihood only (the perceptual term would add a second, misspecified,
noise model).

    python benchmarks/learned_latents.py --threads 1 --out runs/learned_latents
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from brgm_pyro.data.faces import face_batch
from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Inpainting, SuperResolution
from brgm_pyro.models.corruptions.superres import blur_width_latent
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator


def freeform_masks(n: int) -> torch.Tensor:
    import importlib.util

    spec = importlib.util.spec_from_file_location("eval_faces64", Path(__file__).with_name("eval_faces64.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return torch.stack([torch.from_numpy(mod.freeform_mask(i)) for i in range(n)])[:, None]


def model_drawn(G, n: int, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = G.mapping(torch.randn(n, G.z_dim, generator=g))
        return G(w[:, None].expand(n, G.num_ws, G.w_dim)).clamp(-1, 1)


def posterior(model, y, args, seed=0):
    m = run_map(model, y, steps=args.map_steps, progress=False, seed=seed)
    v = run_vi(model, y, init=m.latents, steps=args.vi_steps, num_samples=args.draws, progress=False, seed=seed)
    return m, v


def summarise(draws: torch.Tensor, truth: float, rel: float = 0.2) -> dict:
    d = draws.double()
    mean = d.mean(0)
    lo, hi = torch.quantile(d, 0.05, dim=0), torch.quantile(d, 0.95, dim=0)
    return {"truth": truth, "mean_of_means": float(mean.mean()), "per_image_mean": mean.tolist(),
            "within_20pct": float(((mean - truth).abs() <= rel * truth).double().mean()),
            "covered_90": float(((lo <= truth) & (truth <= hi)).double().mean()),
            "interval_90": [lo.tolist(), hi.tolist()]}


def noise_rows(G, stats, truths: dict, masks, args, log) -> list[dict]:
    rows = []
    for kind, x in truths.items():
        for task in ("sr8", "inpaint"):
            f = SuperResolution(8, "bicubic") if task == "sr8" else Inpainting(masks)
            for s in args.noise:
                g = torch.Generator().manual_seed(int(1000 * s))
                with torch.no_grad():
                    y = f(x)
                    y = y + s * torch.randn(y.shape, generator=g)
                    if f.mask is not None:
                        y = y * f.mask
                model = build_model(G, f, prior="brgm", sigma_pixel="learn", noise_per_image=True, stats=stats)
                t0 = time.perf_counter()
                m, v = posterior(model, y, args)
                r = {"truth_kind": kind, "task": task, **summarise(v.draws["sigma_pixel"], s),
                     "map_mean": float(m.latents["sigma_pixel"].mean()), "seconds": time.perf_counter() - t0}
                rows.append(r)
                log(f"noise {kind:12s} {task:8s} sigma={s:.3f}: VI mean {r['mean_of_means']:.4f} "
                    f"(MAP {r['map_mean']:.4f}) within 20 %: {r['within_20pct']:.2f} "
                    f"covered: {r['covered_90']:.2f} ({r['seconds']:.0f} s)")
    return rows


def blur_rows(G, stats, x, args, log) -> list[dict]:
    rows = []
    for t in args.widths:
        f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
        g = torch.Generator().manual_seed(int(100 * t))
        with torch.no_grad():
            y = f(x, {"kernel_width": torch.full((x.shape[0],), float(t))})
            y = y + 0.02 * torch.randn(y.shape, generator=g)
        model = build_model(G, f, prior="brgm", sigma_pixel=0.02, stats=stats)
        t0 = time.perf_counter()
        m, v = posterior(model, y, args)
        r = {"task": "sr4_gauss", **summarise(v.draws["kernel_width"], t),
             "map_mean": float(m.latents["kernel_width"].mean()), "seconds": time.perf_counter() - t0}
        rows.append(r)
        log(f"blur width {t:.1f}: VI mean {r['mean_of_means']:.3f} (MAP {r['map_mean']:.3f}) "
            f"90 % covered: {r['covered_90']:.2f} within 20 %: {r['within_20pct']:.2f} ({r['seconds']:.0f} s)")
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    ap.add_argument("--widths", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    ap.add_argument("--map-steps", type=int, default=300)
    ap.add_argument("--vi-steps", type=int, default=300)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--parts", default="noise,blur")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/learned_latents")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    G = load_generator("builtin:faces64").eval()
    stats = latent_stats_for(G)
    _, faces = face_batch(range(a.faces), "test")
    res: dict = {"settings": vars(a)}
    if "noise" in a.parts:
        truths = {"model-drawn": model_drawn(G, a.faces), "test faces": faces}
        res["noise"] = noise_rows(G, stats, truths, freeform_masks(a.faces), a, log)
    if "blur" in a.parts:
        res["blur"] = blur_rows(G, stats, faces, a, log)
    (out / "learned_latents.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
