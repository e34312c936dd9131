"""Are the credible intervals calibrated? Coverage on ``builtin:faces64``, and SBC ranks.

Part ``coverage``: for x8 super-resolution (bicubic, 8x8 observed) and in-painting (the free-form
masks of benchmarks/eval_faces64.py, 35-50 % missing), observation noise N(0, 0.05^2) and the
model's sigma_pixel 0.05, the fraction of true pixel values inside each pixel's central 50 / 90 /
95 % posterior interval (observed and missing pixels separately), the mean interval width, and
the PSNR of the posterior mean, on

* ``model``: truths drawn from the generator itself, G(mapping(z)) (z seeded per face index);
* ``model+e``: the same plus e ~ N(0, tau^2 I), a draw from the model *with* its discrepancy term;
* ``faces``: held-out procedural test faces (what G cannot draw exactly);

for the model without and with the discrepancy term (``--discrepancy``: the scale stored beside
the weights by ``brgm fit-discrepancy``, fitted on validation faces 64-79), and for

* ``vi``: ``brgm reconstruct --method vi``'s defaults (run_vi: mean-field normal guide, 300 steps,
  4 particles, the paper's hyperprior) with ``--draws`` draws (cheap: G forwards);
* ``vi_lowrank``: the same with a low-rank-plus-diagonal guide warm-started at the MAP;
* ``nuts`` / ``mala`` (``--mcmc-faces`` faces, one at a time): from a MAP with the Laplace metric,
  2 chains x (50 warm-up + 100 draws), NUTS at ``brgm reconstruct``'s max tree depth 5.

The perceptual likelihood is off by default here, as it is for ``brgm reconstruct``'s methods with
draws (``--percept on`` or ``off,on`` adds the arm with the generator's own network: on validation
faces it narrows the intervals to 0.79 coverage on x8 SR; docs/calibration.md). ``--table FILE``
also writes every cell as a row of a calibration table (brgm_pyro/calibration_table.py), with the
command. Run with ``PYTHONPATH=.`` from the repository root so that the checkout's brgm_pyro is used. An exact sampler's 90 % interval from S draws covers about
0.9 (S - 1) / (S + 1) (``reference`` in the JSON): 0.79 for 16 draws, 0.89 for 256.

Part ``sbc``: simulation-based calibration (Talts et al. 2018) of NUTS and MALA on a small linear
generator (exact Gaussian posterior): ``--sbc-runs`` datasets from the prior predictive, the rank
of each true latent coordinate among L thinned draws, chi-square uniformity per coordinate and
pooled, rank histograms in ``sbc_ranks.png``.

Usage (settings chosen on validation faces 64-79; report on 0-63)::

    python benchmarks/calibration.py --part coverage --first-face 64 --faces 16 --out runs/calib_val
    python benchmarks/calibration.py --part coverage --faces 64 --out runs/calibration
    python benchmarks/calibration.py --part sbc --out runs/calibration_sbc
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brgm_pyro import calibration  # noqa: E402
from brgm_pyro.data.faces import face_batch  # noqa: E402
from brgm_pyro.inference import run_map, run_vi  # noqa: E402
from brgm_pyro.metrics import psnr  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.models.discrepancy import Discrepancy, load_discrepancy  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402
from brgm_pyro.pipeline.core import default_phi  # noqa: E402

NOISE = 0.05
LEVELS = (0.5, 0.9, 0.95)


def log(msg: str, path: Path) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def truths(G, kind: str, ids: list[int], disc) -> torch.Tensor:
    """(N, 3, 64, 64) clean truths in [-1, 1] for face indices ``ids`` (``disc``: the Discrepancy whose
    e the ``model+e`` truths carry, white or coloured)."""
    if kind == "faces":
        return face_batch(ids, "test")[1]
    out = []
    with torch.no_grad():
        for i in ids:
            g = torch.Generator().manual_seed(10_000 + i)
            z = torch.randn(1, G.z_dim, generator=g)
            x = G(G.mapping(z)[:, None].expand(-1, G.num_ws, -1))
            if kind == "model+e":
                e = torch.randn(x.shape, generator=g)
                x = x + disc.tau * (e if disc.smoother is None else disc.smoother.apply(e))
            out.append(x)
    return torch.cat(out)


def corruption(task: str, ids: list[int]):
    from eval_faces64 import freeform_mask

    if task == "superres":
        return SuperResolution(8, "bicubic"), None
    masks = torch.from_numpy(np.stack([freeform_mask(i) for i in ids]))[:, None]
    return Inpainting(masks), masks


def run_method(method: str, model, y: torch.Tensor, draws: int, seed: int):
    """Posterior image draws (S, B, C, H, W) of ``method``."""
    if method == "vi":
        return run_vi(model, y, num_samples=draws, seed=seed, progress=False).samples
    if method == "vi_lowrank":
        m = run_map(model, y, seed=seed, progress=False)
        return run_vi(model, y, guide="lowrank", init=m.latents, num_samples=draws, seed=seed,
                      progress=False).samples
    from brgm_pyro.inference.mcmc import run_mcmc

    outs = []
    for b in range(y.shape[0]):  # one face at a time: the step size adapts to each posterior
        sub = model_for_face(model, b)
        kw = {"max_tree_depth": 5} if method == "nuts" else {}  # brgm reconstruct's NUTS default
        r = run_mcmc(sub, y[b:b + 1], method=method, num_chains=2, steps=50, num_samples=100, seed=seed,
                     progress=False, **kw)
        outs.append(r.samples)
    return torch.cat(outs, dim=1)


def model_for_face(model, b: int):
    """The model of image b alone (its own mask row for a batch of masks)."""
    f = model.corruption
    if isinstance(f, Inpainting) and f.mask.shape[0] > 1:
        f = Inpainting(f.mask[b:b + 1])
    return build_model(model.generator, f, prior=model.prior, sigma_pixel=model.likelihoods[0].sigma,
                       discrepancy=model.discrepancy)


def evaluate(args, G, term, task, kind, disc, method, ids, logf, phi=None) -> dict:
    f, masks = corruption(task, ids)
    x = truths(G, kind, ids, term)
    gen = torch.Generator().manual_seed(args.seed)
    y = f(x) + NOISE * torch.randn(f(x).shape, generator=gen)
    samples = []
    t0 = time.perf_counter()
    for s in range(0, len(ids), args.batch):
        fb = f if masks is None else Inpainting(masks[s:s + args.batch])
        model = build_model(G, fb, sigma_pixel=NOISE, discrepancy=term if disc else None, phi=phi)
        samples.append(run_method(method, model, y[s:s + args.batch], args.draws, args.seed).cpu())
    S = min(s.shape[0] for s in samples)
    draws = torch.cat([s[:S] for s in samples], dim=1)
    missing = None if masks is None else ~masks
    rep = calibration.coverage_report(draws, x, missing=missing, levels=LEVELS)
    mean = draws.mean(0)
    rep["psnr_mean_db"] = float(np.mean([psnr((mean[i] + 1) / 2, (x[i] + 1) / 2, channels_first=True)
                                         for i in range(len(ids))]))
    rep["draws"] = S
    rep["faces"] = len(ids)
    rep["reference"] = {f"{lev:g}": lev * (S - 1) / (S + 1) for lev in LEVELS}
    rep["seconds"] = time.perf_counter() - t0
    c90 = {k: rep[k]["0.9"]["coverage"] for k in ("all", "observed", "missing") if k in rep}
    rep["percept"] = phi is not None
    log(f"{task:9s} {kind:8s} disc={'on ' if disc else 'off'} percept={'on ' if phi is not None else 'off'} "
        f"{method:10s} 90% coverage "
        + ", ".join(f"{k} {v:.3f}" for k, v in c90.items())
        + f"  PSNR {rep['psnr_mean_db']:.2f}  ({S} draws, {rep['seconds']:.0f} s)", logf)
    return rep


def discrepancy_term(G, path: Optional[str]):
    """The "on" arm's term: the generator's stored one, or a discrepancy record (``brgm
    fit-discrepancy --out``; with a spectrum: coloured e) to compare with it."""
    if path is None:
        return load_discrepancy(G)
    rec = json.loads(Path(path).read_text())
    return Discrepancy(float(rec["tau"]), spectrum=rec.get("spectrum"))


def part_coverage(args, out: Path, logf: Path) -> None:
    G = load_generator(args.generator)
    term = discrepancy_term(G, args.discrepancy_file)
    tau = term.tau
    ids = list(range(args.first_face, args.first_face + args.faces))
    res_path = out / "coverage.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    log(f"coverage: faces {ids[0]}..{ids[-1]}, tau {tau:.4f}, draws {args.draws}", logf)
    results.setdefault("_commands", [])
    if " ".join(sys.argv) not in results["_commands"]:
        results["_commands"].append(" ".join(["python"] + sys.argv))
    for method in args.methods.split(","):
        face_ids = ids if method.startswith("vi") else ids[:args.mcmc_faces]
        for task, kind, disc, pc in itertools.product(args.tasks.split(","), args.truths.split(","),
                                                      [d == "on" for d in args.discrepancy.split(",")],
                                                      [p == "on" for p in args.percept.split(",")]):
            key = f"{task}/{kind}/{'disc' if disc else 'nodisc'}/{method}" + ("/percept" if pc else "")
            if key in results:  # resumable: finished cells are kept
                continue
            phi = default_phi(G, args.generator) if pc else None
            results[key] = evaluate(args, G, term, task, kind, disc, method, face_ids, logf, phi=phi)
            res_path.write_text(json.dumps(results, indent=1))
    (out / "coverage.md").write_text(coverage_markdown(results, tau))
    log(f"wrote {out / 'coverage.md'}", logf)
    if args.table:
        n = write_table_rows(Path(args.table), results, ids, args.generator)
        log(f"{n} rows written to the calibration table {args.table}", logf)


def table_row(key: str, rep: dict, ids: list[int], commands: list[str]) -> dict:
    """One row of the package's calibration table (:mod:`brgm_pyro.calibration_table`) from a result cell."""
    task, kind, disc, method = key.split("/")[:4]
    match = {"task": task, "method": "vi" if method.startswith("vi") else method,
             "guide": {"vi": "normal", "vi_lowrank": "lowrank"}.get(method), "noise": "gaussian",
             "percept": bool(rep.get("percept")), "discrepancy": disc == "disc", "prior": "brgm"}
    if task == "superres":
        match.update(factor=8, kernel="bicubic")
    n = rep.get("faces", len(ids))
    return {"match": match, "truth": kind, "images": f"test faces {ids[0]}-{ids[0] + n - 1}",
            "corruption": "bicubic x8" if task == "superres" else "free-form masks (35-50 % missing)",
            "observation_noise": NOISE, "draws": rep["draws"], "reference": rep["reference"]["0.9"],
            "coverage": {reg: rep[reg]["0.9"]["coverage"] for reg in ("all", "observed", "missing") if reg in rep},
            "psnr_mean_db": rep["psnr_mean_db"], "commands": commands}


def write_table_rows(path: Path, results: dict, ids: list[int], generator: str) -> int:
    """Add (or replace: same match, truth and images) the rows of ``results`` in the table at ``path``."""
    tab = json.loads(path.read_text()) if path.exists() else {"generator": generator, "level": 0.9, "rows": []}
    new = [table_row(k, r, ids, results.get("_commands", [])) for k, r in results.items() if not k.startswith("_")]
    same = lambda a, b: all(a[k] == b[k] for k in ("match", "truth", "images"))
    tab["rows"] = [r for r in tab["rows"] if not any(same(r, n) for n in new)] + new
    path.write_text(json.dumps(tab, indent=1) + "\n")
    return len(new)


def coverage_markdown(results: dict, tau: float) -> str:
    lines = [f"tau = {tau:.4f}; 90 % interval coverage (width), PSNR of the posterior mean", "",
             "| task | truth | discrepancy | method | all | observed | missing | PSNR dB | draws (exact-sampler ref.) |",
             "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for key, r in results.items():
        if key.startswith("_"):
            continue
        task, kind, disc, method = key.split("/")[:4]
        method += " +percept" if r.get("percept") else ""
        cell = lambda reg: (f"{r[reg]['0.9']['coverage']:.3f} ({r[reg]['0.9']['width']:.3f})" if reg in r else "-")
        lines.append(f"| {task} | {kind} | {'on' if disc == 'disc' else 'off'} | {method} | {cell('all')} | "
                     f"{cell('observed')} | {cell('missing')} | {r['psnr_mean_db']:.2f} | "
                     f"{r['draws']} ({r['reference']['0.9']:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["coverage", "sbc"], default="coverage")
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--faces", type=int, default=64)
    ap.add_argument("--first-face", type=int, default=0, help="64.. for the validation faces")
    ap.add_argument("--tasks", default="superres,inpaint")
    ap.add_argument("--truths", default="model,model+e,faces")
    ap.add_argument("--methods", default="vi")
    ap.add_argument("--discrepancy", default="off,on", help="the arms to run: off, on or both")
    ap.add_argument("--percept", default="off", help="perceptual-term arms: off (this benchmark's historical "
                    "setting), on (brgm reconstruct's default: the generator's own network) or off,on")
    ap.add_argument("--discrepancy-file", default=None, help="the 'on' arm's discrepancy record instead of the "
                    "generator's stored one (e.g. a coloured fit from brgm fit-discrepancy --out)")
    ap.add_argument("--table", default=None, help="also write the rows into this calibration table (the package's: "
                    "brgm_pyro/assets/faces64/generator.safetensors.calibration.json); test faces only")
    ap.add_argument("--mcmc-faces", type=int, default=4)
    ap.add_argument("--draws", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sbc-runs", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="runs/calibration")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = out / "log.txt"
    if a.part == "coverage":
        part_coverage(a, out, logf)
    else:
        from calibration_sbc import part_sbc

        part_sbc(a, out, logf)


if __name__ == "__main__":
    main()
