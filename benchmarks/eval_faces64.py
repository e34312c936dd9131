"""Quality figures of ``builtin:faces64`` (the numbers in docs/model_card_faces64.md).

On the first N faces of the *test* split (seed ``TEST_SEED``; never seen in training):

1. ``inversion``: W+ MAP inversion of the clean image (no corruption), full BRGM model
   (prior + colinearity + pixel + perceptual), ``--steps`` Adam steps (300), with the inversion
   optimiser default of ``brgm reconstruct --task none`` (constant lr 0.2) unless ``--lr`` is given.
2. ``sr8``: x8 super-resolution (64 -> 8 pixels, box kernel, noise-free observation). Baseline:
   bicubic upsampling of the 8x8 image (PIL BICUBIC). MAP for the paper's ablation ladder:
   ``pixel`` (flat prior, pixel likelihood only), ``+gauss`` (Gaussian prior on each w_i),
   ``+colin`` (BRGM prior: Gaussian + colinearity), ``+percept`` (and the perceptual likelihood
   of the bundled faces network; the full BRGM).
3. ``inpaint``: a large free-form mask per face (seeded random thick strokes and blobs, 35-50 %
   of the pixels missing). Baseline: harmonic fill (missing pixels repeatedly replaced by the
   mean of their 4 neighbours, 500 sweeps). Same ladder.

Metrics on the full 64x64 image in [0, 1]: PSNR (dB), SSIM, and the LPIPS-style distance of
the bundled faces network (lower is better). Reported as mean over faces (and std of PSNR).

Usage (the model card's figures)::

    python benchmarks/eval_faces64.py --faces 64 --steps 300 --inversion-rungs pixel,+percept --out runs/eval_faces64

Settings were chosen on validation faces (``--first-face 64 --faces 16``), never on faces 0-63.

Writes ``results.json`` and ``results.md`` (tables) to ``--out``, and ``examples.png`` (a few
faces per task: truth, observation, baseline, each ladder rung).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from brgm_pyro import metrics
from brgm_pyro.data.faces import TEST_SEED, face_batch, face_grid, to_uint8
from brgm_pyro.inference import run_map
from brgm_pyro.inference.map import INVERSION_MAP_OPTIONS
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity, Inpainting, SuperResolution
from brgm_pyro.models.generators.loading import load_generator

LADDER = [  # name, prior, use phi
    ("pixel", "flat", False),
    ("+gauss", "gaussian", False),
    ("+colin", "brgm", False),
    ("+percept", "brgm", True),
]


def freeform_mask(i: int, size: int = 64, seed: int = TEST_SEED) -> np.ndarray:
    """Observed-pixel mask (size, size) bool for test face i: seeded strokes + blobs, 35-50 % missing."""
    rng = np.random.default_rng((seed, 777, i))
    for _ in range(100):
        img = Image.new("L", (size, size), 255)
        d = ImageDraw.Draw(img)
        for _ in range(rng.integers(3, 6)):
            x, y = rng.uniform(8, size - 8, 2)
            pts = [(x, y)]
            for _ in range(rng.integers(2, 5)):
                a = rng.uniform(0, 2 * math.pi)
                r = rng.uniform(8, 22)
                x = float(np.clip(x + r * math.cos(a), 0, size))
                y = float(np.clip(y + r * math.sin(a), 0, size))
                pts.append((x, y))
            d.line(pts, fill=0, width=int(rng.integers(5, 10)), joint="curve")
        for _ in range(rng.integers(1, 3)):
            x, y = rng.uniform(10, size - 10, 2)
            r = rng.uniform(5, 11)
            d.ellipse([x - r, y - r, x + r, y + r], fill=0)
        m = np.asarray(img) > 127
        if 0.35 <= 1 - m.mean() <= 0.5:
            return m
    return m


def bicubic_up(y: torch.Tensor, size: int) -> torch.Tensor:
    """PIL bicubic upsampling of (B, 3, h, w) in [-1, 1] to (B, 3, size, size)."""
    out = []
    for img in to_uint8(y):
        up = Image.fromarray(img).resize((size, size), Image.Resampling.BICUBIC)
        out.append(torch.from_numpy(np.asarray(up).copy()).permute(2, 0, 1).float() / 127.5 - 1)
    return torch.stack(out)


def harmonic_fill(y: torch.Tensor, mask: torch.Tensor, sweeps: int = 500) -> torch.Tensor:
    """Fill missing pixels (mask False) with the harmonic interpolation of the observed ones."""
    m = mask.float().expand_as(y)
    obs_mean = (y * m).sum((-1, -2), keepdim=True) / m.sum((-1, -2), keepdim=True)
    x = torch.where(m > 0, y, obs_mean.expand_as(y))
    k = torch.tensor([[0, 0.25, 0], [0.25, 0, 0.25], [0, 0.25, 0]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    for _ in range(sweeps):
        avg = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k, groups=3)
        x = torch.where(m > 0, y, avg)
    return x


def score(x: torch.Tensor, truth: torch.Tensor, phi) -> list[dict]:
    out = []
    with torch.no_grad():
        lp = (phi(x.clamp(-1, 1)) - phi(truth)).pow(2).sum(1)
    for k in range(x.shape[0]):
        a = ((x[k].clamp(-1, 1) + 1) / 2).cpu()
        b = ((truth[k] + 1) / 2).cpu()
        out.append({"psnr": metrics.psnr(a, b, channels_first=True),
                    "ssim": metrics.ssim(a, b, channels_first=True), "lpips_faces": float(lp[k])})
    return out


def summarize(rows: list[dict]) -> dict:
    keys = rows[0].keys()
    s = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    s["psnr_std"] = float(np.std([r["psnr"] for r in rows]))
    s["n"] = len(rows)
    return s


def run_task(G, phi, truth, corruption_fn, rungs, steps, batch, seed, log, map_kw=None):
    """MAP for each rung over the faces in batches; returns {rung: (rows, images)}."""
    res = {}
    for name, prior, use_phi in rungs:
        rows, imgs, t0 = [], [], time.time()
        for s in range(0, truth.shape[0], batch):
            xt = truth[s:s + batch]
            f = corruption_fn(s, xt.shape[0])
            y = f(xt)
            model = build_model(G, f, prior=prior, phi=phi if use_phi else None)
            r = run_map(model, y, steps=steps, seed=seed, progress=False, **(map_kw or {}))
            img = r.image.detach()
            rows += score(img, xt, phi)
            imgs.append(img)
        res[name] = (rows, torch.cat(imgs))
        sm = summarize(rows)
        log(f"  {name:9s} PSNR {sm['psnr']:.2f} dB  SSIM {sm['ssim']:.3f}  LPIPS-faces {sm['lpips_faces']:.3f}"
            f"  ({time.time() - t0:.0f} s)")
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--first-face", type=int, default=0,
                    help="test faces first..first+faces-1 (use 64.. as a validation set when tuning settings, "
                         "so that the reported faces 0..63 stay untouched)")
    ap.add_argument("--lr", type=float, default=None, help="MAP learning rate (default: run_map's)")
    ap.add_argument("--lr-decay", type=float, default=None, help="MAP learning-rate decay (default: run_map's)")
    ap.add_argument("--lr-rampdown", type=float, default=None, help="MAP learning-rate ramp-down (default: run_map's)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--tasks", default="inversion,sr8,inpaint")
    ap.add_argument("--rungs", default="pixel,+gauss,+colin,+percept")
    ap.add_argument("--inversion-rungs", default="+percept",
                    help="ladder rungs used for the inversion task (comma-separated)")
    ap.add_argument("--out", default="runs/eval_faces64")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    map_kw = {k: v for k, v in (("lr", a.lr), ("lr_decay", a.lr_decay),
                                                   ("lr_rampdown", a.lr_rampdown)) if v is not None}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = open(out / "log.txt", "a")

    def log(msg):
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        print(line, flush=True)
        logf.write(line + "\n")
        logf.flush()

    from brgm_pyro.models.perceptual import load_faces64_percept

    G = load_generator(a.generator)
    for p in G.parameters():
        p.requires_grad_(False)
    phi = load_faces64_percept()
    _, truth = face_batch(range(a.first_face, a.first_face + a.faces), "test")
    tasks = a.tasks.split(",")
    rungs = [r for r in LADDER if r[0] in a.rungs.split(",")]
    log(f"eval_faces64: generator={a.generator} faces={a.first_face}..{a.first_face + a.faces - 1} "
        f"(test split) MAP options {map_kw or 'default'} steps={a.steps} "
        f"batch={a.batch} threads={torch.get_num_threads()} tasks={tasks}")
    results: dict = {"settings": vars(a), "tasks": {}}
    panels = []
    n_show = min(6, a.faces)
    if "inversion" in tasks:
        log("W+ inversion (no corruption, MAP):")
        inv_rungs = [r for r in LADDER if r[0] in a.inversion_rungs.split(",")]
        # like `brgm reconstruct --task none`: the inversion optimiser default unless --lr is given
        inv_kw = map_kw if a.lr is not None else {**INVERSION_MAP_OPTIONS, **map_kw}
        log(f"  MAP options {inv_kw}")
        res = run_task(G, phi, truth, lambda s, b: Identity(), inv_rungs, a.steps, a.batch, a.seed, log, inv_kw)
        results["tasks"]["inversion"] = {("map_full_brgm" if k == "+percept" else k): summarize(v[0])
                                         for k, v in res.items()}
        panels.append(("inversion", [truth[:n_show]] + [v[1][:n_show] for v in res.values()]))
    if "sr8" in tasks:
        log("x8 super-resolution (8x8 -> 64x64):")
        f = SuperResolution(8)
        y = f(truth)
        base = bicubic_up(y, 64)
        brow = score(base, truth, phi)
        log(f"  bicubic   PSNR {summarize(brow)['psnr']:.2f} dB  SSIM {summarize(brow)['ssim']:.3f}")
        res = run_task(G, phi, truth, lambda s, b: SuperResolution(8), rungs, a.steps, a.batch, a.seed, log, map_kw)
        results["tasks"]["sr8"] = {"bicubic": summarize(brow), **{k: summarize(v[0]) for k, v in res.items()}}
        up_nn = F.interpolate(y, scale_factor=8, mode="nearest")
        panels.append(("sr8", [truth[:n_show], up_nn[:n_show], base[:n_show]] +
                       [v[1][:n_show] for v in res.values()]))
    if "inpaint" in tasks:
        log("in-painting (free-form masks, 35-50 % missing):")
        ids = range(a.first_face, a.first_face + a.faces)
        masks = torch.from_numpy(np.stack([freeform_mask(i) for i in ids]))[:, None]
        results["missing_fraction"] = float(1 - masks.float().mean())
        y = truth * masks
        base = harmonic_fill(y, masks)
        brow = score(base, truth, phi)
        log(f"  harmonic  PSNR {summarize(brow)['psnr']:.2f} dB  SSIM {summarize(brow)['ssim']:.3f} "
            f"(missing {results['missing_fraction']:.1%})")
        res = run_task(G, phi, truth, lambda s, b: Inpainting(masks[s:s + b]), rungs, a.steps, a.batch,
                       a.seed, log, map_kw)
        results["tasks"]["inpaint"] = {"harmonic_fill": summarize(brow),
                                       **{k: summarize(v[0]) for k, v in res.items()}}
        # the usual in-painting output: observed pixels kept, G(w) only in the holes
        for k, v in res.items():
            comp = torch.where(masks.expand_as(truth), truth, v[1])
            sm = summarize(score(comp, truth, phi))
            results["tasks"]["inpaint"][k + " (pasted)"] = sm
            log(f"  {k:9s} observed pixels pasted back: PSNR {sm['psnr']:.2f} dB  SSIM {sm['ssim']:.3f}")
        panels.append(("inpaint", [truth[:n_show], y[:n_show], base[:n_show]] +
                       [v[1][:n_show] for v in res.values()]))
    results["wall_time_s"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    if panels:
        rows = []
        for _, cols in panels:
            for c in cols:
                rows.append(face_grid(c.clamp(-1, 1), nrow=n_show))
        Image.fromarray(np.concatenate(rows, 0)).save(out / "examples.png")
    log(f"done in {results['wall_time_s']} s; wrote {out / 'results.md'}")
    return results


def to_markdown(r: dict) -> str:
    lines = [f"Faces: {r['settings']['faces']} test faces; MAP {r['settings']['steps']} steps.", ""]
    t = r["tasks"]
    if "inversion" in t:
        lines += ["| W+ inversion (MAP) | PSNR (dB) | SSIM | LPIPS-faces |", "|---|---|---|---|"]
        for k, s in t["inversion"].items():
            label = "full BRGM model" if k == "map_full_brgm" else k
            lines.append(f"| {label} (std PSNR {s['psnr_std']:.2f}) | {s['psnr']:.2f} | {s['ssim']:.3f} | "
                         f"{s['lpips_faces']:.3f} |")
        lines.append("")
    names = {"bicubic": "bicubic upsampling", "harmonic_fill": "harmonic fill (baseline)",
             "pixel": "MAP: pixel likelihood only", "+gauss": "MAP: + Gaussian prior",
             "+colin": "MAP: + colinearity", "+percept": "MAP: + perceptual (full BRGM)"}
    names.update({k + " (pasted)": v + ", observed pixels pasted back" for k, v in list(names.items())
                  if k.startswith(("pixel", "+"))})
    for task, title in (("sr8", "x8 super-resolution"), ("inpaint", "in-painting (free-form)")):
        if task not in t:
            continue
        lines += [f"| {title} | PSNR (dB) | SSIM | LPIPS-faces |", "|---|---|---|---|"]
        for k, s in t[task].items():
            lines.append(f"| {names.get(k, k)} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['lpips_faces']:.3f} |")
        lines.append("")
    return "\n".join(lines)


t_start = time.time()

if __name__ == "__main__":
    main()
