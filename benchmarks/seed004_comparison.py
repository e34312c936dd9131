"""Seed 004's comparison on our generator: bicubic / GEOCROSS / BRGM / flow / RLS, MAP and VI.

Tasks on faces of the *test* split of the procedural faces (``--first-face``, ``--faces``):
``sr8`` and ``sr16`` (anti-aliased bicubic downsampling to 8x8 and 4x4, as seed 004 simulates its
observations) and ``inpaint`` (the free-form masks of benchmarks/eval_faces64.py, 35-50 %
missing). Observations are noise-free. Baselines: PIL bicubic upsampling (SR), harmonic fill
(in-painting).

Priors (``--variants``, names of :data:`VARIANTS`): ``geocross`` (PULSE's factor on the Gaussian
prior), ``brgm`` (Gaussian + colinearity), ``flow`` (the fitted flow, Bayesian form, with the
colinearity factor), ``rls`` (RLS's three terms with their weights and its L1 fidelity: Laplace
noise of scale b = sigma_pixel, weights divided by b, so that MAP minimises RLS's objective).
The Gaussian-likelihood priors use pixel noise sigma_pixel = 0.05 ([-1, 1] units); no perceptual
likelihood (the perceptual network scores the results, it should not also fit them).

For each prior: MAP (``--steps`` Adam steps, run_map's defaults for every prior), then VI (mean-field
Gaussian guide warm-started at the MAP, ``--vi-steps``, ``--num-samples`` draws). Reported per
method: PSNR, SSIM and the faces perceptual distance (||phi(x) - phi(truth)||^2 with the bundled
faces network) of the MAP image / the VI posterior-mean image, and for VI the diversity: the mean
pairwise perceptual distance between posterior samples that fit the observation (RMSE of f(G(w_s))
against y at most ``--fit-tol``), with the fraction of samples that fit.

    python benchmarks/seed004_comparison.py --threads 1 --faces 64 --out runs/seed004
    # the ablation of seed 004's appendix (MAP, validation faces 64-79):
    python benchmarks/seed004_comparison.py --threads 1 --first-face 64 --faces 16 --tasks sr8,sr16 \\
        --methods map --variants rls,rls-no-Pg,rls-no-Pw,rls-no-Pcross,flow,flow-nocolin,flow+Pg+Pcross,brgm \\
        --out runs/seed004_ablation
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_faces64 import bicubic_up, freeform_mask, harmonic_fill, score, summarize  # noqa: E402

from brgm_pyro.data.faces import face_batch, face_grid  # noqa: E402
from brgm_pyro.inference import run_map, run_vi  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402

SIGMA = 0.05
#: name -> (registered prior, prior options, pixel noise model)
VARIANTS = {
    "geocross": ("geocross", {}, "gaussian"),
    "brgm": ("brgm", {}, "gaussian"),
    "flow": ("flow", {}, "gaussian"),
    "flow-nocolin": ("flow", {"colinearity": False}, "gaussian"),
    "flow+Pg+Pcross": ("flow", {"gaussianization": 2e-4 / 10 / SIGMA, "cross": 1e-2 / SIGMA}, "gaussian"),
    "rls": ("rls", {"fidelity_scale": SIGMA}, "laplace"),
    "rls-no-Pg": ("rls", {"fidelity_scale": SIGMA, "lambda_g": 0.0}, "laplace"),
    "rls-no-Pw": ("rls", {"fidelity_scale": SIGMA, "lambda_w": 1e-12}, "laplace"),
    "rls-no-Pcross": ("rls", {"fidelity_scale": SIGMA, "lambda_c": 0.0}, "laplace"),
}


def corruption(task: str, first: int, n: int):
    if task == "sr8":
        return SuperResolution(8, "bicubic")
    if task == "sr16":
        return SuperResolution(16, "bicubic")
    if task == "inpaint":
        return Inpainting(torch.from_numpy(np.stack([freeform_mask(i) for i in range(first, first + n)]))[:, None])
    raise SystemExit(f"unknown task {task}")


def baseline(task: str, y, f, size: int):
    return harmonic_fill(y, f.mask) if task == "inpaint" else bicubic_up(y, size)


def fits(model, samples_w, y, tol: float) -> torch.Tensor:
    """(S, B) bool: which posterior samples reproduce the observation (RMSE over observed pixels <= tol)."""
    with torch.no_grad():
        pred = model.predict(samples_w)
    m = model.mask
    r = (pred - y) ** 2
    if m is not None:
        mm = m.expand_as(y).float()
        return ((r * mm).sum((-3, -2, -1)) / mm.sum((-3, -2, -1))).sqrt() <= tol
    return r.mean((-3, -2, -1)).sqrt() <= tol


def diversity(phi, samples, ok) -> tuple[float, float]:
    """Mean pairwise ||phi(a) - phi(b)||^2 among the fitting samples of each face, mean over faces
    with at least two; and the fraction of samples that fit."""
    S, B = ok.shape
    out = []
    with torch.no_grad():
        feats = phi(samples.clamp(-1, 1).reshape(S * B, *samples.shape[2:])).reshape(S, B, -1)
    for b in range(B):
        f = feats[ok[:, b], b]
        if f.shape[0] >= 2:
            dist = torch.cdist(f, f).pow(2)
            k = f.shape[0]
            out.append(float(dist.sum() / (k * (k - 1))))
    return (float(np.mean(out)) if out else float("nan")), float(ok.float().mean())


def run_variant(G, phi, truth, task, name, a, log) -> dict:
    prior, opts, noise = VARIANTS[name]
    rows = {"map": [], "vi": []}
    div, fit, imgs = [], [], {"map": [], "vi": []}
    t0 = time.time()
    for s in range(0, truth.shape[0], a.batch):
        xt = truth[s:s + a.batch]
        f = corruption(task, a.first_face + s, xt.shape[0])
        y = f(xt)
        model = build_model(G, f, prior=prior, sigma_pixel=SIGMA, noise=noise, prior_options=opts)
        m = run_map(model, y, steps=a.steps, seed=a.seed, progress=False)
        rows["map"] += score(m.image.detach(), xt, phi)
        imgs["map"].append(m.image.detach())
        if "vi" in a.methods:
            v = run_vi(model, y, guide="normal", steps=a.vi_steps, init_w=m.w.detach(), num_samples=a.num_samples,
                       seed=a.seed, progress=False)
            mean = v.samples.detach().mean(0)
            rows["vi"] += score(mean, xt, phi)
            imgs["vi"].append(v.samples[:4].detach())
            dv, fr = diversity(phi, v.samples.detach(), fits(model, v.samples_w.detach(), y, a.fit_tol))
            div.append(dv)
            fit.append(fr)
    out = {"map": summarize(rows["map"])}
    if rows["vi"]:
        out["vi"] = {**summarize(rows["vi"]), "diversity": float(np.nanmean(div)), "fit_fraction": float(np.mean(fit))}
    msg = "  ".join(f"{k}: PSNR {v['psnr']:.2f} SSIM {v['ssim']:.3f} LPIPS-f {v['lpips_faces']:.3f}"
                    + (f" div {v['diversity']:.3f} fit {v['fit_fraction']:.2f}" if "diversity" in v else "")
                    for k, v in out.items())
    log(f"  {name:15s} {msg}  ({time.time() - t0:.0f} s)")
    return out, {k: torch.cat(v, 1 if k == "vi" else 0) for k, v in imgs.items() if v}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--first-face", type=int, default=0)
    ap.add_argument("--tasks", default="sr8,sr16,inpaint")
    ap.add_argument("--variants", default="geocross,brgm,flow,rls")
    ap.add_argument("--methods", default="map,vi")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--vi-steps", type=int, default=200)
    ap.add_argument("--num-samples", type=int, default=8)
    ap.add_argument("--fit-tol", type=float, default=2 * SIGMA)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/seed004")
    ap.add_argument("--merge", nargs="+", default=None, metavar="DIR",
                    help="combine the results.json of runs over disjoint faces (e.g. two processes, one per core) "
                         "into --out, weighted by their face counts; runs nothing")
    a = ap.parse_args(argv)
    if a.merge:
        return merge_runs([Path(d) for d in a.merge], Path(a.out))
    a.methods = a.methods.split(",")
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    log = _logger(out)
    from brgm_pyro.models.perceptual import load_faces64_percept

    G = load_generator(a.generator)
    phi = load_faces64_percept()
    _, truth = face_batch(range(a.first_face, a.first_face + a.faces), "test")
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.is_file() else {"settings": vars(a), "tasks": {}}
    log(f"seed004 comparison: faces {a.first_face}..{a.first_face + a.faces - 1} tasks {a.tasks} "
        f"variants {a.variants} methods {a.methods} steps {a.steps}/{a.vi_steps}")
    for task in a.tasks.split(","):
        log(f"{task}:")
        t = results["tasks"].setdefault(task, {})
        f = corruption(task, a.first_face, a.faces)
        y = f(truth)
        base = baseline(task, y, f, truth.shape[-1])
        t["baseline"] = summarize(score(base, truth, phi))
        panels = [truth[:6], base[:6]]
        for name in a.variants.split(","):
            if name in t:  # checkpointed: a rerun continues where it stopped
                continue
            t[name], imgs = run_variant(G, phi, truth, task, name, a, log)
            panels += [imgs["map"][:6]] + ([imgs["vi"][0, :6], imgs["vi"][1, :6]] if "vi" in imgs else [])
            _write(res_path, results)
            rows = [face_grid(p.clamp(-1, 1), nrow=6) for p in panels]
            from PIL import Image

            Image.fromarray(np.concatenate(rows, 0)).save(out / f"{task}_examples.png")
    (out / "results.md").write_text(to_markdown(results))
    log(f"wrote {out / 'results.md'}")
    return results


def _merge_summary(parts: list[dict]) -> dict:
    """Pool per-run summaries (means over n faces each) into one over all faces, std included."""
    n = np.array([p["n"] for p in parts], float)
    w = n / n.sum()
    out = {k: float(sum(wi * p[k] for wi, p in zip(w, parts))) for k in parts[0] if k not in ("n", "psnr_std")}
    if "psnr_std" in parts[0]:  # pooled variance: E[x^2] - E[x]^2 over the union
        ex2 = sum(wi * (p["psnr_std"] ** 2 + p["psnr"] ** 2) for wi, p in zip(w, parts))
        out["psnr_std"] = float(np.sqrt(max(ex2 - out["psnr"] ** 2, 0.0)))
    out["n"] = int(n.sum())
    return out


def merge_runs(dirs: list[Path], out: Path) -> dict:
    """Merge ``results.json`` of runs over disjoint faces; every run must hold the same tasks and rows."""
    runs = [json.loads((d / "results.json").read_text()) for d in dirs]
    faces = sorted((r["settings"]["first_face"], r["settings"]["faces"]) for r in runs)
    merged = {"settings": {**runs[0]["settings"], "merged_from": [str(d) for d in dirs], "face_ranges": faces},
              "tasks": {}}
    for task, t0 in runs[0]["tasks"].items():
        mt = merged["tasks"][task] = {"baseline": _merge_summary([r["tasks"][task]["baseline"] for r in runs])}
        for name, v in t0.items():
            if name == "baseline" or not all(name in r["tasks"].get(task, {}) for r in runs):
                continue
            mt[name] = {m: _merge_summary([r["tasks"][task][name][m] for r in runs]) for m in v}
    out.mkdir(parents=True, exist_ok=True)
    _write(out / "results.json", merged)
    (out / "results.md").write_text(to_markdown(merged))
    print(to_markdown(merged))
    return merged


def _write(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def _logger(out: Path):
    logf = open(out / "log.txt", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    return log


def to_markdown(r: dict) -> str:
    lines = ["| task | prior | method | PSNR (dB) | SSIM | LPIPS-faces | diversity | fit |", "|---|---|---|---|---|---|---|---|"]
    for task, t in r["tasks"].items():
        b = t["baseline"]
        lines.append(f"| {task} | {'harmonic fill' if task == 'inpaint' else 'bicubic'} | - | {b['psnr']:.2f} | "
                     f"{b['ssim']:.3f} | {b['lpips_faces']:.3f} | - | - |")
        for name, v in t.items():
            if name == "baseline":
                continue
            for meth, s in v.items():
                div = f"{s['diversity']:.3f} | {s['fit_fraction']:.2f}" if "diversity" in s else "- | -"
                lines.append(f"| {task} | {name} | {meth} | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                             f"{s['lpips_faces']:.3f} | {div} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
