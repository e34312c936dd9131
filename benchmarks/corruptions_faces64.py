"""The corruptions people meet, on ``builtin:faces64`` (the figures in docs/model_card_faces64.md).

For each task, on N faces of the *test* split: the classical baseline, the MAP of the full BRGM
model (prior + colinearity + pixel [+ perceptual]) and the posterior mean of VI warm-started at
the MAP, with the mean prior reliance (brgm_pyro.reliance) of the VI posterior.

| task | observation (seeded noise) | model sigma_pixel | baseline |
|---|---|---|---|
| colorize | Rec. 601 luma, 1 channel, noise-free | 0.05 | the gray image replicated to RGB |
| denoise | x + N(0, 0.2^2) | 0.2 (the noise) | Gaussian filter, width chosen on validation faces |
| deblur | Gaussian blur sigma 2 px (reflect) + N(0, 0.02^2) | 0.05 | Wiener deconvolution, true kernel, NSR chosen on validation faces |
| cs | m = n / 8 = 1,536 seeded Gaussian measurements + N(0, 0.02^2) | 0.05 | minimum-norm least squares (pseudo-inverse) |

sigma_pixel 0.05 (the default) where the noise is smaller: G's own misfit (W+ inversion 27.8 dB,
RMS error ~0.08 on [-1, 1]) dominates a 0.02 noise. The perceptual likelihood is used where the
observation is an image (not CS). Metrics on the full 64x64 image in [0, 1]: PSNR, SSIM
(brgm_pyro.metrics), LPIPS-faces (the bundled network's distance; lower is better).

Usage (the model card's figures; baselines' settings chosen first on validation faces 64-79)::

    python benchmarks/corruptions_faces64.py --choose-baselines --first-face 64 --faces 16 --out runs/corr_val
    python benchmarks/corruptions_faces64.py --faces 64 --threads 1 --out runs/corruptions_faces64

Writes ``results.json``, ``results.md`` and ``examples.png`` (per task: truth, observation,
baseline, MAP, VI mean, reliance) to ``--out``; ``log.txt`` as it goes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from brgm_pyro import metrics
from brgm_pyro.data.faces import face_batch, face_grid
from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.inference.map import DEFAULT_MAP_STEPS
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Blur, Colorization, CompressedSensing, Denoising
from brgm_pyro.models.generators.loading import load_generator
from brgm_pyro.reliance import prior_image_moments, reliance_from_draws

TASKS = ("colorize", "denoise", "deblur", "cs")
# chosen on validation faces 64-79 with --choose-baselines (docs/model_card_faces64.md)
GAUSS_FILTER_SIGMA = 1.0
WIENER_NSR = 1e-2


def make_task(task: str):
    """(corruption, observation noise std, model sigma_pixel, use the perceptual term)."""
    if task == "colorize":
        return Colorization(), 0.0, 0.05, True
    if task == "denoise":
        return Denoising(0.2), 0.2, 0.2, True
    if task == "deblur":
        return Blur("gauss", sigma=2.0, padding="reflect"), 0.02, 0.05, True
    if task == "cs":
        return CompressedSensing(3 * 64 * 64 // 8, (3, 64, 64), kind="gaussian", matrix_seed=0), 0.02, 0.05, False
    raise ValueError(task)


def observe(f, truth, noise: float, seed: int) -> torch.Tensor:
    """Seeded observation f(x) + noise (face-order independent: one generator per call)."""
    with torch.no_grad():
        y = f(truth)
    if noise:
        y = y + noise * torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    return y


def gauss_filter(y: torch.Tensor, sigma: float) -> torch.Tensor:
    """The Gaussian-filter denoiser: blur of width ``sigma`` pixels (reflect borders)."""
    return Blur("gauss", sigma=sigma, padding="reflect")(y)


def wiener(y: torch.Tensor, kernel: torch.Tensor, nsr: float) -> torch.Tensor:
    """Wiener deconvolution with the true kernel: X = conj(K) Y / (|K|^2 + nsr), per channel.

    The FFT assumes a periodic image; the observation is mirrored to 2H x 2W first (its reflect
    borders then continue smoothly) and the result cropped back.
    """
    h, w = y.shape[-2:]
    ym = torch.cat([y, y.flip(-1)], -1)
    ym = torch.cat([ym, ym.flip(-2)], -2).double()
    kh, kw = kernel.shape
    kp = torch.zeros(2 * h, 2 * w, dtype=torch.float64)
    kp[:kh, :kw] = kernel.double()
    kp = torch.roll(kp, (-(kh // 2), -(kw // 2)), (0, 1))  # centre at (0, 0)
    K = torch.fft.fft2(kp)
    X = torch.conj(K) * torch.fft.fft2(ym) / (K.abs() ** 2 + nsr)
    return torch.fft.ifft2(X).real[..., :h, :w].float()


def baseline(task: str, f, y: torch.Tensor, gauss_sigma: float = GAUSS_FILTER_SIGMA,
             nsr: float = WIENER_NSR) -> torch.Tensor:
    if task == "colorize":
        return y.expand(-1, 3, -1, -1)
    if task == "denoise":
        return gauss_filter(y, gauss_sigma)
    if task == "deblur":
        return wiener(y, f.kernel2d(), nsr)
    if task == "cs":
        return f.pinv(y)
    raise ValueError(task)


def score(x: torch.Tensor, truth: torch.Tensor, phi) -> list[dict]:
    with torch.no_grad():
        lp = (phi(x.clamp(-1, 1)) - phi(truth)).pow(2).sum(1)
    out = []
    for k in range(x.shape[0]):
        a, b = ((x[k].clamp(-1, 1) + 1) / 2).cpu(), ((truth[k] + 1) / 2).cpu()
        out.append({"psnr": metrics.psnr(a, b, channels_first=True),
                    "ssim": metrics.ssim(a, b, channels_first=True), "lpips_faces": float(lp[k])})
    return out


def summarize(rows: list[dict]) -> dict:
    s = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    s["psnr_std"] = float(np.std([r["psnr"] for r in rows]))
    s["n"] = len(rows)
    return s


def choose_baselines(truth, phi, log, seed: int) -> dict:
    """Grid-search the baselines' one setting on these (validation) faces, by PSNR."""
    out = {}
    f, noise, _, _ = make_task("denoise")
    y = observe(f, truth, noise, seed)
    grid = {s: summarize(score(gauss_filter(y, s), truth, phi))["psnr"] for s in (0.5, 0.75, 1.0, 1.25, 1.5, 2.0)}
    log(f"  Gaussian filter sigma -> PSNR: {grid}")
    out["gauss_filter_sigma"] = max(grid, key=grid.get)
    f, noise, _, _ = make_task("deblur")
    y = observe(f, truth, noise, seed)
    grid = {n: summarize(score(wiener(y, f.kernel2d(), n), truth, phi))["psnr"] for n in (1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)}
    log(f"  Wiener NSR -> PSNR: {grid}")
    out["wiener_nsr"] = max(grid, key=grid.get)
    return out


def run_task(task, G, phi, truth, a, log, moments) -> tuple[dict, list]:
    f, noise, sigma, use_phi = make_task(task)
    rows = {"baseline": [], "map": [], "vi_mean": []}
    imgs = {"obs": [], "baseline": [], "map": [], "vi_mean": [], "reliance": []}
    rel_means, t0 = [], time.time()
    for s in range(0, truth.shape[0], a.batch):
        xt = truth[s:s + a.batch]
        y = observe(f, xt, noise, a.seed + s)
        base = baseline(task, f, y)
        model = build_model(G, f, prior="brgm", sigma_pixel=sigma, phi=phi if use_phi and a.percept else None)
        m = run_map(model, y, steps=a.map_steps, seed=a.seed, progress=False)
        v = run_vi(model, y, steps=a.vi_steps, num_samples=a.num_samples, init=m.latents, seed=a.seed,
                   num_particles=a.vi_particles, progress=False)
        if moments is None:
            moments = prior_image_moments(model, a.prior_draws, seed=a.seed)
        rel = reliance_from_draws(v.samples.detach(), moments[1], a.prior_draws, moments[2])
        rel_means += rel.summary()["mean_prior_reliance"]
        for k, img in (("baseline", base), ("map", m.image.detach()), ("vi_mean", v.mean_image().detach())):
            rows[k] += score(img, xt, phi)
            imgs[k].append(img)
        imgs["obs"].append(y)
        imgs["reliance"].append(rel)
        log(f"  {task} faces {s}..{s + xt.shape[0] - 1}: done ({time.time() - t0:.0f} s)")
    res = {k: summarize(r) for k, r in rows.items()}
    res["mean_prior_reliance"] = float(np.mean(rel_means))
    res["wall_s"] = round(time.time() - t0, 1)
    for k in ("baseline", "map", "vi_mean"):
        log(f"  {task:8s} {k:9s} PSNR {res[k]['psnr']:.2f} dB  SSIM {res[k]['ssim']:.3f}  "
            f"LPIPS-faces {res[k]['lpips_faces']:.3f}")
    log(f"  {task:8s} mean prior reliance (VI) {res['mean_prior_reliance']:.3f}")
    return res, [imgs, moments]


def panel(task, imgs, n: int) -> np.ndarray:
    """Rows: truth-free panel of observation, baseline, MAP, VI mean, reliance for the first n faces."""
    obs = torch.cat(imgs["obs"])[:n]
    if obs.shape[-2:] != (64, 64):  # CS: show the observation as A^T y would mislead; show a blank
        obs = torch.zeros(n, 3, 64, 64)
    rows = [face_grid(obs.expand(-1, 3, -1, -1).clamp(-1, 1), nrow=n)]
    rows += [face_grid(torch.cat(imgs[k])[:n].clamp(-1, 1), nrow=n) for k in ("baseline", "map", "vi_mean")]
    from matplotlib import colormaps

    maps = torch.cat([r.channel_mean() for r in imgs["reliance"]])[:n].numpy()
    r = torch.from_numpy(colormaps["magma"](maps)[..., :3])  # dark = data, bright = prior
    rows.append(face_grid(r.permute(0, 3, 1, 2).float() * 2 - 1, nrow=n))
    return np.concatenate(rows, 0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--first-face", type=int, default=0, help="use 64.. (validation) when choosing settings")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--map-steps", type=int, default=DEFAULT_MAP_STEPS, help="run_map's default")
    ap.add_argument("--vi-steps", type=int, default=150)
    ap.add_argument("--vi-particles", type=int, default=4, help="ELBO particles per VI step")
    ap.add_argument("--num-samples", type=int, default=16)
    ap.add_argument("--no-percept", dest="percept", action="store_false",
                    help="leave the perceptual likelihood out of the model (cheaper; metrics still use the network)")
    ap.add_argument("--prior-draws", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--choose-baselines", action="store_true", help="only grid-search the baselines' settings")
    ap.add_argument("--out", default="runs/corruptions_faces64")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    from brgm_pyro.models.perceptual import load_faces64_percept

    G = load_generator("builtin:faces64")
    phi = load_faces64_percept()
    _, truth = face_batch(range(a.first_face, a.first_face + a.faces), "test")
    log(f"corruptions_faces64: faces {a.first_face}..{a.first_face + a.faces - 1} (test split), "
        f"MAP {a.map_steps} steps, VI {a.vi_steps} steps x {a.num_samples} draws, threads {torch.get_num_threads()}")
    if a.choose_baselines:
        chosen = choose_baselines(truth, phi, log, a.seed)
        log(f"chosen: {chosen}")
        (out / "baselines.json").write_text(json.dumps(chosen, indent=2))
        return chosen
    results: dict = {"settings": vars(a), "tasks": {}}
    panels, moments, t_start = [], None, time.time()
    for task in a.tasks.split(","):
        log(f"{task}:")
        res, (imgs, moments) = run_task(task, G, phi, truth, a, log, moments)
        results["tasks"][task] = res
        n = min(6, a.faces)
        panels.append(np.concatenate([face_grid(truth[:n], nrow=n), panel(task, imgs, n)], 0))
        (out / "results.json").write_text(json.dumps(results, indent=2))  # a checkpoint per task
        (out / "results.md").write_text(to_markdown(results))
    results["wall_time_s"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    from PIL import Image

    Image.fromarray(np.concatenate(panels, 1)).save(out / "examples.png")
    log(f"done in {results['wall_time_s']} s; wrote {out / 'results.md'}")
    return results


BASELINE_NAMES = {"colorize": "gray replicated to RGB", "denoise": f"Gaussian filter (sigma {GAUSS_FILTER_SIGMA} px)",
                  "deblur": f"Wiener deconvolution, true kernel (NSR {WIENER_NSR:g})",
                  "cs": "pseudo-inverse (minimum-norm least squares)"}


def to_markdown(r: dict) -> str:
    s = r["settings"]
    lines = [f"Faces {s['first_face']}..{s['first_face'] + s['faces'] - 1} of the test split; MAP {s['map_steps']} "
             f"steps; VI {s['vi_steps']} steps ({s.get('vi_particles', 4)} particles) from the MAP, posterior mean of "
             f"{s['num_samples']} draws; perceptual likelihood {'on' if s.get('percept', True) else 'off'}.", "",
             "| task | method | PSNR (dB) | SSIM | LPIPS-faces | mean prior reliance |", "|---|---|---|---|---|---|"]
    for task, t in r["tasks"].items():
        map_label = "MAP (full BRGM)" if s.get("percept", True) else "MAP (BRGM prior + pixel)"
        for k, label in (("baseline", BASELINE_NAMES[task]), ("map", map_label), ("vi_mean", "VI posterior mean")):
            rel = f"{t['mean_prior_reliance']:.3f}" if k == "vi_mean" else ""
            lines.append(f"| {task} | {label} | {t[k]['psnr']:.2f} (std {t[k]['psnr_std']:.2f}) | {t[k]['ssim']:.3f} | "
                         f"{t[k]['lpips_faces']:.3f} | {rel} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
