"""Our default MAP against a restatement of the paper's public MAP loop, side by side.

The reference is razvanmarinescu/brgm-pytorch, ``bayesmap_recon.py``; this file restates its loop
from its definition (not its code) on any generator of ours:

* start at ``w_avg`` repeated over W+, with ``w_avg`` the mean of 10,000 mapped ``z`` drawn from
  ``np.random.RandomState(123)``; Adam, constant lr 0.1, betas (0.9, 0.999), 501 steps;
* per image, loss = 0.001 * mean((f(x) - y)^2) on a 0..255 scale
  + 1e7 * mean((phi(A y) - phi(A f(x)))^2), A an area resize to the perceptual network's input size
  + 100 * mean(((w - w_avg) / sigma_s)^2), ONE scalar sigma_s = sqrt(sum_n ||w_n - w_avg||^2 / N)
  + lambda_c * sum over the full L x L matrix of |1 - cos(w_i, w_j)|, lambda_c = 0.1 (1 for
  super-resolution factors above 16); the generator's noise buffers stay fixed.

Both sides get the same generator, corruption object, observations and perceptual network, and
are scored the same way (PSNR, SSIM on the 64x64 image in [0, 1]; "LPIPS-faces" = the bundled
faces network's ``||phi(a) - phi(b)||^2``). Ours is ``run_map`` with its defaults, on the model
``brgm reconstruct`` builds (``build_model(G, f, phi=default phi, stats=latent_stats_for(G),
discrepancy="auto")`` when the generator has a stored discrepancy scale, as builtin:faces64 does),
scored on the image run_map returns (G(w*) + E[e | w*, y], the joint MAP of the clean image) and,
as a separate row, on G(w*) alone (``--model '{"discrepancy": null}'``: the model without the term).
Milliseconds per step are medians over repeats of short runs of both loops, interleaved in one
process so that machine noise hits both alike.

    python benchmarks/vs_reference.py --faces 64 --threads 1 --out runs/vs_reference

Choose settings on validation faces only (``--first-face 64 --faces 16``); report on faces 0-63.
Writes ``results.json`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_faces64 import bicubic_up, freeform_mask, harmonic_fill, score, summarize  # noqa: E402

from brgm_pyro.data.faces import face_batch  # noqa: E402
from brgm_pyro.inference import run_map  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator  # noqa: E402

REF_STEPS = 501
FACTOR = 8


# --- the reference loop, restated -----------------------------------------------------------------

@torch.no_grad()
def reference_stats(G, num: int = 10_000, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    """(w_avg (d,), sigma_s scalar) of the reference: RandomState(seed) z through the mapping network."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(num, G.z_dim)).float().to(G.device())
    w = torch.cat([G.mapping(z[i:i + 1000]) for i in range(0, num, 1000)])
    w = w[:, 0] if w.ndim == 3 else w
    w_avg = w.mean(0)
    return w_avg, ((w - w_avg).pow(2).sum() / num).sqrt()


def percept_size(phi, default: int) -> int:
    """The input size the perceptual network works at (the faces encoder: 64)."""
    enc = getattr(phi, "encoder", None)
    return int(getattr(enc, "resolution", None) or getattr(phi, "resolution", None) or default)


class ReferenceLoss:
    """Per-image reference loss summed over the batch (so each image is optimised on its own)."""

    def __init__(self, G, corruption, y, phi, w_avg, sigma_s, lambda_c: float, percept: bool = True,
                 lambda_pix: float = 1e-3, lambda_perc: float = 1e7, lambda_w: float = 100.0) -> None:
        self.G, self.f, self.y = G, corruption, y
        self.phi = phi if percept else None
        self.w_avg, self.sigma_s = w_avg, sigma_s
        self.lam = dict(pix=lambda_pix, perc=lambda_perc, w=lambda_w, c=lambda_c)
        self.size = percept_size(phi, G.img_resolution) if phi is not None else None
        if self.phi is not None:
            with torch.no_grad():
                self.target = self.phi(self.area(y))

    def area(self, x):
        return x if x.shape[-1] == self.size else F.interpolate(x, size=(self.size, self.size), mode="area")

    def __call__(self, ws):
        pred = self.f(self.G(ws))
        lam = self.lam
        loss = lam["pix"] * ((pred - self.y) * 127.5).pow(2).mean((-3, -2, -1)).sum()
        if self.phi is not None:
            loss = loss + lam["perc"] * (self.phi(self.area(pred)) - self.target).pow(2).mean(-1).sum()
        loss = loss + lam["w"] * ((ws - self.w_avg) / self.sigma_s).pow(2).mean((-2, -1)).sum()
        u = F.normalize(ws, dim=-1)
        return loss + lam["c"] * (1 - u @ u.transpose(-1, -2)).abs().sum((-2, -1)).sum()


def run_reference(loss: ReferenceLoss, batch: int, steps: int, snapshots=(), lr: float = 0.1):
    """Adam from w_avg; returns ({step: w}, per-step seconds)."""
    G = loss.G
    ws = loss.w_avg.expand(batch, G.num_ws, G.w_dim).clone().requires_grad_(True)
    opt = torch.optim.Adam([ws], lr=lr, betas=(0.9, 0.999))
    snaps, times = {}, []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss(ws).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        if step in snapshots:
            snaps[step] = ws.detach().clone()
    return snaps, times


# --- ours ------------------------------------------------------------------------------------------

def step_independent(map_kw: dict) -> bool:
    """True when run_map's schedule does not depend on ``steps`` (a constant learning rate)."""
    import inspect

    d = inspect.signature(run_map).parameters["lr_decay"].default
    return float(map_kw.get("lr_decay", d)) == 1.0


def run_ours(model, y, step_list, seed: int = 0, map_kw=None) -> dict:
    """{steps: w} of run_map with its defaults (plus ``map_kw``), one run per step count, or one run
    read at each step count when the schedule does not depend on the number of steps."""
    map_kw = dict(map_kw or {})
    step_list = sorted(step_list)
    if not step_independent(map_kw):
        return {s: run_map(model, y, steps=s, seed=seed, progress=False, **map_kw).w for s in step_list}
    from safetensors.torch import load_file

    snaps = {}
    every = int(np.gcd.reduce(step_list))
    with tempfile.TemporaryDirectory() as d:
        path = str(Path(d) / "w.safetensors")

        def grab(step, _terms):
            if step + 1 in step_list:
                snaps[step + 1] = load_file(path)["w"]

        r = run_map(model, y, steps=step_list[-1], seed=seed, progress=False, callback=grab,
                    checkpoint_path=path, checkpoint_every=every, **map_kw)
    snaps[step_list[-1]] = r.w
    return snaps


# --- the comparison --------------------------------------------------------------------------------

def make_task(name: str, ids, kernel: str):
    """(corruption factory (start, count) -> f, baseline (y, f) -> image): x8 super-resolution with
    bicubic upsampling, or eval_faces64's free-form masks with harmonic fill."""
    if name == "sr8":
        return (lambda s, b: SuperResolution(FACTOR, kernel)), (lambda y, f: bicubic_up(y, y.shape[-1] * FACTOR))
    masks = torch.from_numpy(np.stack([freeform_mask(i) for i in ids]))[:, None]
    return (lambda s, b: Inpainting(masks[s:s + b])), (lambda y, f: harmonic_fill(y, f.mask))


def compare_task(G, phi, truth, ids, task, a, percept: bool, log) -> dict:
    """Scores {method: {steps: summary}} for one task over the faces, in batches of ``a.batch``."""
    make_f, baseline = make_task(task, ids, a.kernel)
    w_avg, sigma_s = reference_stats(G)
    lambda_c = 1.0 if task == "sr8" and FACTOR > 16 else 0.1
    stats = latent_stats_for(G)
    steps = [int(s) for s in a.steps.split(",")]
    rows = {"baseline": {0: []}, "ours": {s: [] for s in steps}}
    if a.model_kw.get("discrepancy") is not None:
        rows["ours, G(w) alone"] = {s: [] for s in steps}
    if a.reference:
        rows["reference"] = {s: [] for s in sorted(set(steps) | {REF_STEPS})}
    for s in range(0, truth.shape[0], a.batch):
        xt = truth[s:s + a.batch]
        f = make_f(s, xt.shape[0])
        with torch.no_grad():
            y = f(xt)
        rows["baseline"][0] += score(baseline(y, f), xt, phi)
        model = build_model(G, f, phi=phi if percept else None, stats=stats, **a.model_kw)
        for k, w in run_ours(model, y, steps, a.seed, a.map_kw).items():
            # what run_map returns as its image (G(w*) + E[e | w*, y] with the discrepancy term), and G(w*) alone
            rows["ours"][k] += score(model.point_image({model.image_site: w}, y), xt, phi)
            if "ours, G(w) alone" in rows:
                rows["ours, G(w) alone"][k] += score(G(w).detach(), xt, phi)
        log(f"  {task} percept={percept} faces {ids[s]}..{ids[s] + xt.shape[0] - 1}: ours done")
        if not a.reference:
            continue
        loss = ReferenceLoss(G, f, y, phi, w_avg, sigma_s, lambda_c, percept=percept)
        snaps, _ = run_reference(loss, xt.shape[0], REF_STEPS, snapshots=set(rows["reference"]))
        for k, w in snaps.items():
            with torch.no_grad():
                rows["reference"][k] += score(G(w), xt, phi)
        log(f"  {task} percept={percept} faces {ids[s]}..{ids[s] + xt.shape[0] - 1} done")
    return {m: {k: summarize(v) for k, v in d.items()} for m, d in rows.items()}


def time_steps(G, phi, truth, ids, task, a, batch: int, percept: bool, n: int = 15, repeats: int = 5) -> dict:
    """Median ms per step of run_map and of the reference loop, interleaved."""
    make_f, _ = make_task(task, ids, a.kernel)
    xt = truth[:batch]
    f = make_f(0, batch)
    with torch.no_grad():
        y = f(xt)
    model = build_model(G, f, phi=phi if percept else None, stats=latent_stats_for(G), **a.model_kw)
    w_avg, sigma_s = reference_stats(G)
    loss = ReferenceLoss(G, f, y, phi, w_avg, sigma_s, 0.1, percept=percept)
    ours, ref = [], []
    for r in range(repeats + 1):  # the first round is a warm-up
        o = run_map(model, y, steps=n, progress=False, **a.map_kw).timing["per_step_s"]
        t = statistics.median(run_reference(loss, batch, n)[1])
        if r:
            ours.append(o)
            ref.append(t)
    o, t = statistics.median(ours) * 1e3, statistics.median(ref) * 1e3
    return {"task": task, "batch": batch, "percept": percept, "ours_ms": o, "reference_ms": t, "ratio": o / t}


# --- command line ----------------------------------------------------------------------------------

def to_markdown(res: dict) -> str:
    lines = []
    names = {"sr8": "x8 super-resolution", "inpaint": "in-painting (free-form masks)"}
    for key, r in res["quality"].items():
        task, percept = key.split("/")
        lines += [f"**{names[task]}, {'full BRGM model' if percept == 'percept' else 'without the perceptual term'}**"
                  f" (faces {res['faces']}; baseline: {'bicubic' if task == 'sr8' else 'harmonic fill'})", "",
                  "| method | steps | PSNR (dB) | SSIM | LPIPS-faces |", "|---|---:|---:|---:|---:|"]
        for m, d in r.items():
            for k, s in d.items():
                lines.append(f"| {m} | {k or '-'} | {s['psnr']:.2f} | {s['ssim']:.3f} | {s['lpips_faces']:.3f} |")
        lines.append("")
    if res.get("timing"):
        lines += ["| task | perceptual | batch | ours (ms/step) | reference (ms/step) | ratio |",
                  "|---|---|---:|---:|---:|---:|"]
        for t in res["timing"]:
            lines.append(f"| {t['task']} | {'yes' if t['percept'] else 'no'} | {t['batch']} | {t['ours_ms']:.1f} | "
                         f"{t['reference_ms']:.1f} | {t['ratio']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--first-face", type=int, default=0, help="first test-split face (validation: 64)")
    ap.add_argument("--steps", default="50,100,250,500", help="our step counts (the reference also runs 501)")
    ap.add_argument("--tasks", default="sr8,inpaint")
    ap.add_argument("--percept", default="on,off", help="full model (on) and/or without the perceptual term (off)")
    ap.add_argument("--kernel", default="bicubic", help="super-resolution kernel (box | bicubic | gauss)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing", default="1,16", help="batch sizes to time (empty: no timing)")
    ap.add_argument("--map", default="{}", help="JSON of extra run_map options for ours (default: none)")
    ap.add_argument("--model", default="{}", help="JSON of extra build_model options for ours (default: none)")
    ap.add_argument("--reference", default="on", choices=["on", "off"],
                    help="off: ours and the baseline only (for sweeps on validation faces)")
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--out", default="runs/vs_reference")
    a = ap.parse_args(argv)
    a.map_kw = json.loads(a.map)
    a.model_kw = json.loads(a.model)
    a.reference = a.reference == "on"
    return a


def main(argv=None) -> dict:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    from brgm_pyro.cli.reconstruct import default_phi

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    G = load_generator(a.generator).eval()
    phi = default_phi(G, a.generator)
    if "discrepancy" not in a.model_kw:  # brgm reconstruct's default: the generator's stored scale, if any
        from brgm_pyro.pipeline.core import default_discrepancy

        a.model_kw["discrepancy"] = "auto" if default_discrepancy("map", G, "gaussian") == "auto" else None
    ids = list(range(a.first_face, a.first_face + a.faces))
    _, truth = face_batch(ids, "test")
    res = {"settings": {k: v for k, v in vars(a).items()}, "faces": f"{ids[0]}-{ids[-1]} (test split)",
           "quality": {}, "timing": []}
    for task in a.tasks.split(","):
        for p in a.percept.split(","):
            key = f"{task}/{'percept' if p == 'on' else 'no-percept'}"
            res["quality"][key] = compare_task(G, phi, truth, ids, task, a, p == "on", log)
            log("\n" + to_markdown({**res, "timing": [], "quality": {key: res["quality"][key]}}))
            for B in [int(b) for b in a.timing.split(",") if b]:
                res["timing"].append(time_steps(G, phi, truth, ids, task, a, B, p == "on"))
                log(str(res["timing"][-1]))
    res["wall_time_s"] = round(time.time() - t_start, 1)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "results.md").write_text(to_markdown(res))
    print(to_markdown(res))
    log(f"done in {res['wall_time_s']} s; wrote {out / 'results.md'}")
    return res


if __name__ == "__main__":
    main()
