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

Inference (``--methods``): ``map-vi``: MAP (1,000 Adam steps, lr 0.1 -> 0.01: converged, because a
learned sigma is the residual of the fit) then VI (AutoNormal over every site, warm-started at the
MAP, 200 steps, 2 particles, plain ELBO), both estimates reported (MAP's joint mode of sigma and
VI's posterior mean); ``inla``: the integrated nested Laplace method (``run_inla`` defaults: 500
steps of w's MAP, one refinement, 200 draws), one batch per noise level. Pixel likelihood only
(the perceptual term would add a second, misspecified, noise model).

    python benchmarks/learned_latents.py --threads 1 --out runs/learned_latents
    python benchmarks/learned_latents.py --methods inla --parts noise,blur --threads 1 --out runs/learned_inla
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

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


def model_drawn(G, n: int, seed: int = 123, clamp: bool = True) -> torch.Tensor:
    """G(mapping(z)), clamped to the image range [-1, 1] as an image file would be (then G cannot
    reproduce the clamped pixels: on faces 3 and 4 of these 8 the clamp alone is an RMS misfit of
    0.019 and 0.023, as large as the lowest noise level), or unclamped (the model's own output)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = G.mapping(torch.randn(n, G.z_dim, generator=g))
        x = G(w[:, None].expand(n, G.num_ws, G.w_dim))
        return x.clamp(-1, 1) if clamp else x


def prior_drawn(G, stats, n: int, seed: int = 321) -> torch.Tensor:
    """G(w) with w drawn from the Gaussian W+ prior itself (prior "gaussian": w_i ~ N(mu, sigma^2),
    independent layers), unclamped: truths for which the model with that prior is exactly right."""
    from brgm_pyro.models.priors import PRIORS

    prior = PRIORS.get("gaussian")(G, stats)
    with torch.no_grad():
        return G(prior.draw_init(n, torch.Generator().manual_seed(seed)))


def posterior(model, y, args, seed=0):
    """A well-converged MAP (the learned sigma is the residual of the fit: an early-stopped fit
    over-estimates it), then the plain ELBO (no hyperprior, which would widen q(w) and with it sigma)."""
    m = run_map(model, y, steps=args.map_steps, lr=args.map_lr, lr_decay=0.1, progress=False, seed=seed)
    v = run_vi(model, y, init=m.latents, steps=args.vi_steps, num_samples=args.draws, progress=False, seed=seed,
               hyperprior=None, num_particles=2)
    return m, v


def summarise(draws: torch.Tensor, truth: float, rel: float = 0.2) -> dict:
    d = draws.double()
    mean = d.mean(0)
    lo, hi = torch.quantile(d, 0.05, dim=0), torch.quantile(d, 0.95, dim=0)
    return {"truth": truth, "mean_of_means": float(mean.mean()), "per_image_mean": mean.tolist(),
            "within_20pct": float(((mean - truth).abs() <= rel * truth).double().mean()),
            "covered_90": float(((lo <= truth) & (truth <= hi)).double().mean()),
            "interval_90": [lo.tolist(), hi.tolist()]}


def _corrupt(f, x, levels, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        y = f(x)
        y = y + levels[:, None, None, None] * torch.randn(y.shape, generator=g)
        return y * f.mask if f.mask is not None else y


def inla_noise_rows(G, stats, truths: dict, masks, args, log) -> list[dict]:
    """INLA, one batch of ``faces`` images per (truth, task, noise level)."""
    from brgm_pyro.inference import run_inla

    rows = []
    for kind, x in truths.items():
        for task in args.tasks.split(","):
            for k, s in enumerate(args.noise):
                f = SuperResolution(8, "bicubic") if task == "sr8" else Inpainting(masks)
                y = _corrupt(f, x, torch.full((x.shape[0],), s), seed=1 + k)
                model = build_model(G, f, prior="brgm", sigma_pixel="learn", noise_per_image=True, stats=stats,
                                    discrepancy=_disc(args, G))
                t0 = time.perf_counter()
                r = run_inla(model, y, num_samples=args.draws, progress=False, seed=k, **args.inla)
                row = {"method": "inla", "truth_kind": kind, "task": task, "discrepancy": args.discrepancy,
                       **summarise(r.draws["sigma_pixel"], s), "seconds": time.perf_counter() - t0,
                       "jacobian_s": r.timing["jacobian_s"]}
                rows.append(row)
                log(f"inla noise {kind:12s} {task:8s} sigma={s:.3f}: mean {row['mean_of_means']:.4f} "
                    f"within 20 %: {row['within_20pct']:.2f} covered: {row['covered_90']:.2f} ({row['seconds']:.0f} s)")
    return rows


DEFAULT_WIDTHS = [1.0, 2.0, 3.0]


def _blurred(f, x, width: float, k: int) -> torch.Tensor:
    """x blurred with a Gaussian kernel of std ``width``, down-sampled, noise 0.02. The noise seed is
    2 + the width's place among the default widths (so ``--widths 3 2`` sees the same observations
    as the default run), else 2 + ``k``."""
    g = torch.Generator().manual_seed(2 + (DEFAULT_WIDTHS.index(width) if width in DEFAULT_WIDTHS else k))
    with torch.no_grad():
        y = f(x, {"kernel_width": torch.full((x.shape[0],), width)})
        return y + 0.02 * torch.randn(y.shape, generator=g)


def inla_blur_rows(G, stats, x, args, log) -> list[dict]:
    """INLA on the blur width, one batch per true width."""
    from brgm_pyro.inference import run_inla

    rows = []
    for k, t in enumerate(args.widths):
        f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
        y = _blurred(f, x, t, k)
        model = build_model(G, f, prior=args.blur_prior, sigma_pixel=0.02, stats=stats, discrepancy=_disc(args, G))
        t0 = time.perf_counter()
        r = run_inla(model, y, num_samples=args.draws, progress=False, seed=k, **args.inla)
        row = {"method": "inla", "task": "sr4_gauss", "discrepancy": args.discrepancy, "truths": args.blur_truths,
               "prior": args.blur_prior, **summarise(r.draws["kernel_width"], t), "seconds": time.perf_counter() - t0}
        rows.append(row)
        log(f"inla blur width {t:.1f} ({args.blur_truths}, prior {args.blur_prior}): mean {row['mean_of_means']:.3f} 90 % covered: {row['covered_90']:.2f} "
            f"within 20 %: {row['within_20pct']:.2f} ({row['seconds']:.0f} s)")
    return rows


def _disc(args, G):
    """What build_model takes for ``--discrepancy``: None, "auto", tau, or a discrepancy JSON file
    (e.g. one written by ``brgm fit-discrepancy --out``, with its spectrum)."""
    if not (isinstance(args.discrepancy, str) and args.discrepancy.endswith(".json")):
        if args.discrepancy_colour == "learn":
            raise SystemExit("--discrepancy-colour learn needs --discrepancy FILE.json with a spectrum")
        return args.discrepancy
    from brgm_pyro.models.discrepancy import Discrepancy

    rec = json.loads(Path(args.discrepancy).read_text())
    return Discrepancy(float(rec["tau"]), spectrum=rec.get("spectrum"),
                       colour="learn" if args.discrepancy_colour == "learn" else None)


def _disc_key(args) -> Optional[str]:
    """How the records name the discrepancy arm."""
    d = args.discrepancy
    return d if getattr(args, "discrepancy_colour", "fixed") == "fixed" else f"{d} (colour learned)"


def nuts_blur_face(G, stats, y, args, seed: int) -> dict:
    """NUTS on (w, kernel_width) for one observation (1, C, h, w), started at Laplace draws around a
    converged joint MAP: the width's draws (chains, draws), their R-hat and bulk ESS."""
    import arviz as az

    from brgm_pyro.inference.mcmc import run_mcmc

    f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
    sigma = "learn" if args.blur_sigma == "learn" else float(args.blur_sigma)
    model = build_model(G, f, prior=args.blur_prior, sigma_pixel=sigma, stats=stats, discrepancy=_disc(args, G))
    m = run_map(model, y, steps=args.map_steps, lr=args.map_lr, lr_decay=0.1, progress=False, seed=seed)
    r = run_mcmc(model, y, method="nuts", num_chains=args.nuts_chains, steps=args.nuts_warmup,
                 num_samples=args.nuts_draws, map_w=m.latents, progress=False, seed=seed,
                 workers=args.nuts_workers, kernel_options={"max_tree_depth": args.nuts_depth})
    d = r.draws["kernel_width"].double().reshape(args.nuts_chains, -1).numpy()
    halves = d if d.shape[0] > 1 else d[:, : d.shape[1] // 2 * 2].reshape(2, -1)  # one chain: its two halves
    extra = {f"{k}_mean": float(r.draws[k].mean()) for k in ("sigma_pixel", "discrepancy_colour") if k in r.draws}
    return {**extra, "draws": d.reshape(-1).tolist(), "map": float(m.latents["kernel_width"]),
            "r_hat": float(az.rhat(halves)), "ess_bulk": float(az.ess(d)), "grad_evals": r.extra.get("grad_evals")}


def merge_nuts_blur(args, out: Path) -> dict:
    """Combine the per-face NUTS blur records of several runs (one record per width and face)."""
    recs: dict = {}
    for d in args.merge:
        src = Path(d) / "learned_latents.json"
        if not src.exists():
            raise SystemExit(f"--merge: {src} does not exist (has that run saved a face yet?)")
        for r in map(_legacy, json.loads(src.read_text()).get("blur_nuts_faces", [])):
            recs.setdefault((r["truths"], r["prior"], str(r["discrepancy"]), r["sigma"], r["truth"], r["face"]), r)
    faces = list(recs.values())
    kinds = {(r["truths"], r["prior"], r["discrepancy"], r["sigma"]) for r in faces}
    if len(kinds) != 1:
        raise SystemExit(f"--merge: the runs differ in truths/prior/discrepancy: {sorted(map(str, kinds))}")
    args.blur_truths, args.blur_prior, args.discrepancy, args.blur_sigma = next(iter(kinds))
    args.discrepancy_colour = "fixed"  # the merged records' arm name already says it
    args.widths = sorted({r["truth"] for r in faces})
    res = {"settings": vars(args), "blur_nuts_faces": faces,
           "blur_nuts": nuts_blur_summary(faces, args)}
    _save(out, res)
    for row in res["blur_nuts"]:
        print(f"width {row['truth']:.1f}: {row['faces']} faces, mean {row['mean_of_means']:.3f}, within 20 % "
              f"{row['within_20pct']:.2f}, 90 % covers {row['covered_90']:.2f}, max R-hat {row['max_r_hat']:.2f}, "
              f"min ESS {row['min_ess_bulk']:.0f}")
    return res


def _legacy(rec: dict) -> dict:
    """A per-face record with the fields later runs add (runs before --blur-sigma assumed 0.02)."""
    return {"sigma": "0.02", **rec}


def nuts_blur_rows(G, stats, x, args, log, done: list[dict], save) -> list[dict]:
    """NUTS per face and true width (the same observations as the INLA rows); resumes from ``done``
    (the per-face records of an interrupted run), saving after every face."""
    key = {"truths": args.blur_truths, "prior": args.blur_prior, "discrepancy": _disc_key(args),
           "sigma": args.blur_sigma}
    faces = [r for r in map(_legacy, done) if all(r.get(n) == v for n, v in key.items())]
    for k, t in enumerate(args.widths):
        f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
        y = _blurred(f, x, t, k)
        for b in (reversed(range(x.shape[0])) if args.reverse_faces else range(x.shape[0])):
            if args.only_faces is not None and b not in args.only_faces:
                continue
            if any(r["truth"] == t and r["face"] == b for r in faces):
                continue
            t0 = time.perf_counter()
            rec = {**key, "truth": t, "face": b, **nuts_blur_face(G, stats, y[b:b + 1], args, seed=b),
                   "seconds": time.perf_counter() - t0}
            faces.append(rec)
            d = torch.tensor(rec["draws"])
            log(f"nuts blur width {t:.1f} face {b}: mean {float(d.mean()):.3f} [{float(d.quantile(0.05)):.3f}, "
                f"{float(d.quantile(0.95)):.3f}] MAP {rec['map']:.3f} R-hat {rec['r_hat']:.3f} ESS {rec['ess_bulk']:.0f} "
                f"({rec['seconds']:.0f} s)")
            save(faces)
    return nuts_blur_summary(faces, args)


def nuts_blur_summary(faces: list[dict], args) -> list[dict]:
    """One row per true width from the per-face NUTS records."""
    rows = []
    for t in args.widths:
        recs = sorted((r for r in faces if r["truth"] == t), key=lambda r: r["face"])
        if not recs:
            continue
        draws = torch.tensor([r["draws"] for r in recs]).T  # (S, faces)
        rows.append({"method": "nuts", "task": "sr4_gauss", "discrepancy": _disc_key(args),
                     "truths": args.blur_truths, "prior": args.blur_prior, **summarise(draws, t),
                     "max_r_hat": max(r["r_hat"] for r in recs), "min_ess_bulk": min(r["ess_bulk"] for r in recs),
                     "seconds": sum(r["seconds"] for r in recs), "faces": len(recs)})
    return rows


def noise_rows(G, stats, truths: dict, masks, args, log) -> list[dict]:
    """One run per (truth, task): the faces repeated once per noise level in one batch, each image
    with its own learned sigma (so the noise levels cannot share an estimate)."""
    rows = []
    levels = torch.tensor(args.noise).repeat_interleave(args.faces)  # (K B,)
    for kind, x in truths.items():
        xs = x.repeat(len(args.noise), 1, 1, 1)
        for task in args.tasks.split(","):
            f = SuperResolution(8, "bicubic") if task == "sr8" else Inpainting(masks.repeat(len(args.noise), 1, 1, 1))
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                y = f(xs)
                y = y + levels[:, None, None, None] * torch.randn(y.shape, generator=g)
                if f.mask is not None:
                    y = y * f.mask
            model = build_model(G, f, prior="brgm", sigma_pixel="learn", noise_per_image=True, stats=stats)
            t0 = time.perf_counter()
            m, v = posterior(model, y, args)
            for k, s in enumerate(args.noise):
                sl = slice(k * args.faces, (k + 1) * args.faces)
                r = {"truth_kind": kind, "task": task, **summarise(v.draws["sigma_pixel"][:, sl], s),
                     "map_mean": float(m.latents["sigma_pixel"][sl].mean()),
                     "map_within_20pct": float(((m.latents["sigma_pixel"][sl] - s).abs() <= 0.2 * s).double().mean()),
                     "seconds": time.perf_counter() - t0}
                rows.append(r)
                log(f"noise {kind:12s} {task:8s} sigma={s:.3f}: VI mean {r['mean_of_means']:.4f} "
                    f"within 20 %: {r['within_20pct']:.2f} covered: {r['covered_90']:.2f} | MAP {r['map_mean']:.4f} "
                    f"within 20 %: {r['map_within_20pct']:.2f} ({r['seconds']:.0f} s for the batch)")
    return rows


def blur_rows(G, stats, x, args, log) -> list[dict]:
    """One run: the faces repeated once per true width, each image with its own latent width."""
    rows = []
    K, B = len(args.widths), x.shape[0]
    widths = torch.tensor(args.widths).repeat_interleave(B)
    f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        y = f(x.repeat(K, 1, 1, 1), {"kernel_width": widths})
        y = y + 0.02 * torch.randn(y.shape, generator=g)
    model = build_model(G, f, prior="brgm", sigma_pixel=0.02, stats=stats, discrepancy=_disc(args, G))
    t0 = time.perf_counter()
    m, v = posterior(model, y, args)
    for k, t in enumerate(args.widths):
        sl = slice(k * B, (k + 1) * B)
        r = {"task": "sr4_gauss", "discrepancy": args.discrepancy, **summarise(v.draws["kernel_width"][:, sl], t),
             "map_mean": float(m.latents["kernel_width"][sl].mean()),
             "map_per_image": m.latents["kernel_width"][sl].tolist(), "seconds": time.perf_counter() - t0}
        rows.append(r)
        log(f"blur width {t:.1f}: VI mean {r['mean_of_means']:.3f} (MAP {r['map_mean']:.3f}) "
            f"90 % covered: {r['covered_90']:.2f} within 20 %: {r['within_20pct']:.2f} ({r['seconds']:.0f} s)")
    return rows


def nuts_rows(G, stats, truths: dict, args, log) -> list[dict]:
    """NUTS per image (x8 SR, the under-determined case): the exact posterior of sigma, to which
    the MAP (over-fit) and mean-field VI (inflated) estimates are compared."""
    from brgm_pyro.inference.mcmc import run_mcmc

    rows = []
    f = SuperResolution(8, "bicubic")
    for kind, x in truths.items():
        for s in args.noise:
            g = torch.Generator().manual_seed(int(1000 * s))
            for b in range(min(args.nuts_faces, x.shape[0])):
                with torch.no_grad():
                    y = f(x[b:b + 1]) + s * torch.randn(1, *f.out_shape(G.image_shape), generator=g)
                model = build_model(G, f, prior="brgm", sigma_pixel="learn", stats=stats)
                t0 = time.perf_counter()
                m = run_map(model, y, steps=args.map_steps, lr=args.map_lr, lr_decay=0.1, progress=False)
                res = run_mcmc(model, y, method="nuts", num_chains=1, steps=args.nuts_warmup,
                               num_samples=args.nuts_draws, map_w=m.latents, progress=False, seed=b)
                d = res.draws["sigma_pixel"].double()
                r = {"truth_kind": kind, "task": "sr8", "face": b, "truth": s, "nuts_mean": float(d.mean()),
                     "q05": float(d.quantile(0.05)), "q95": float(d.quantile(0.95)),
                     "map": float(m.latents["sigma_pixel"]), "seconds": time.perf_counter() - t0}
                rows.append(r)
                log(f"nuts {kind:12s} sr8 sigma={s:.3f} face {b}: posterior mean {r['nuts_mean']:.4f} "
                    f"[{r['q05']:.4f}, {r['q95']:.4f}] MAP {r['map']:.4f} ({r['seconds']:.0f} s)")
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8)
    ap.add_argument("--noise", type=float, nargs="+", default=[0.02, 0.05, 0.1])
    ap.add_argument("--widths", type=float, nargs="+", default=DEFAULT_WIDTHS)
    ap.add_argument("--map-steps", type=int, default=1000)
    ap.add_argument("--map-lr", type=float, default=0.1)
    ap.add_argument("--tasks", default="sr8,inpaint")
    ap.add_argument("--truths", default="model-drawn,test faces",
                    help="comma-separated: model-drawn (G(mapping(z)) clamped to [-1, 1]), "
                         "'model-drawn unclamped', 'test faces'")
    ap.add_argument("--vi-steps", type=int, default=200)
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--parts", default="noise,blur,nuts")
    ap.add_argument("--nuts-faces", type=int, default=8)
    ap.add_argument("--nuts-warmup", type=int, default=150)
    ap.add_argument("--nuts-draws", type=int, default=150)
    ap.add_argument("--nuts-chains", type=int, default=2, help="blur rows with --methods nuts: chains per face")
    ap.add_argument("--nuts-workers", type=int, default=2, help="blur rows with --methods nuts: chains run at once")
    ap.add_argument("--nuts-depth", type=int, default=6, help="blur rows with --methods nuts: NUTS max tree depth")
    ap.add_argument("--blur-sigma", default="0.02", help="blur rows with --methods nuts: the pixel noise std the "
                    "model assumes (the truth is 0.02), or 'learn' (a per-image latent beside the width)")
    ap.add_argument("--only-faces", type=int, nargs="+", default=None, help="blur rows with --methods nuts: these faces only")
    ap.add_argument("--reverse-faces", action="store_true", help="blur rows with --methods nuts: last face first "
                    "(a second process then meets the first one halfway; combine them with --merge)")
    ap.add_argument("--merge", nargs="+", default=None, help="blur rows with --methods nuts: combine the per-face "
                    "records of these --out directories into --out (no inference)")
    ap.add_argument("--methods", default="map-vi", help="map-vi, inla and/or nuts (nuts: blur rows, per face; "
                    "an interrupted run resumes from --out)")
    ap.add_argument("--discrepancy", default=None, help="inla, nuts and blur rows: 'auto' adds the generator's discrepancy term "
                    "(what brgm reconstruct does by default for every method), a number sets tau, a .json file is a "
                    "discrepancy record (brgm fit-discrepancy --out; with a spectrum: coloured e)")
    ap.add_argument("--discrepancy-colour", default="fixed", choices=["fixed", "learn"], help="with a --discrepancy "
                    "file: 'learn' makes the misfit's colour a per-image latent (white <-> the file's spectrum)")
    ap.add_argument("--inla", default="{}", help="JSON of run_inla options (e.g. '{\"grid_points\": 25}')")
    ap.add_argument("--blur-truths", default="test faces", choices=["test faces", "model-drawn", "prior-drawn"],
                    help="blur rows: held-out faces, G(mapping(z)), or G(w) with w drawn from the Gaussian W+ prior "
                         "(use with --blur-prior gaussian: the model is then exactly right)")
    ap.add_argument("--blur-prior", default="brgm", help="blur rows: the model's prior (registered name)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/learned_latents")
    a = ap.parse_args(argv)
    a.inla = json.loads(a.inla)
    if a.discrepancy not in (None, "auto") and not a.discrepancy.endswith(".json"):
        a.discrepancy = float(a.discrepancy)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if a.merge:
        return merge_nuts_blur(a, out)
    G = load_generator("builtin:faces64").eval()
    stats = latent_stats_for(G)
    _, faces = face_batch(range(a.faces), "test")
    res: dict = {"settings": vars(a)}
    if "noise" in a.parts:
        make = {"model-drawn": lambda: model_drawn(G, a.faces), "test faces": lambda: faces,
                "model-drawn unclamped": lambda: model_drawn(G, a.faces, clamp=False)}
        truths = {k: f() for k, f in make.items() if k in a.truths.split(",")}
        if "map-vi" in a.methods:
            res["noise"] = noise_rows(G, stats, truths, freeform_masks(a.faces), a, log)
        if "inla" in a.methods:
            res["noise_inla"] = inla_noise_rows(G, stats, truths, freeform_masks(a.faces), a, log)
        _save(out, res)
    if "nuts" in a.parts:
        truths = {"model-drawn": model_drawn(G, a.faces), "test faces": faces}
        res["nuts"] = nuts_rows(G, stats, {k: v for k, v in truths.items() if k in a.truths.split(",")}, a, log)
    if "blur" in a.parts:
        faces = {"test faces": lambda: faces, "model-drawn": lambda: model_drawn(G, a.faces),
                 "prior-drawn": lambda: prior_drawn(G, stats, a.faces)}[a.blur_truths]()
        if "map-vi" in a.methods:
            res["blur"] = blur_rows(G, stats, faces, a, log)
        if "inla" in a.methods:
            res["blur_inla"] = inla_blur_rows(G, stats, faces, a, log)
        if "nuts" in a.methods:
            prev = out / "learned_latents.json"
            done = json.loads(prev.read_text()).get("blur_nuts_faces", []) if prev.exists() else []

            def save(recs):
                res["blur_nuts_faces"] = recs
                _save(out, res)

            res["blur_nuts"] = nuts_blur_rows(G, stats, faces, a, log, done, save)
    _save(out, res)
    return res


def _save(out: Path, res: dict) -> None:
    from brgm_pyro.io import atomic_path

    with atomic_path(out / "learned_latents.json") as tmp:
        Path(tmp).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
