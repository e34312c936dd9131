"""Which posterior approximation holds the correlated ambiguity? (issue 28, item 2)

Colorization and in-painting under a box over eyes and nose, on truths drawn from the model with
its discrepancy term (``model+e``: G(mapping(z)) + e, e ~ N(0, tau^2 I), z seeded by the face index as
in benchmarks/calibration.py), so the model is exactly right and any miss is the approximation's.
Every run is built as ``brgm reconstruct --simulate`` builds it (:class:`brgm_pyro.pipeline.run.RunSpec`:
the truths are written as PNGs and read back by :func:`brgm_pyro.pipeline.core.observe`, the model is
``spec.build``, inference :func:`brgm_pyro.pipeline.core.reconstruct`), with observation noise
N(0, 0.05^2) added to y (seeded), and the whole batch of faces in one run. Methods (``--methods``):

* ``vi``: ``--method vi`` (mean-field normal guide); the same run's PSIS-reweighted intervals are
  the row ``vi+psis`` (weighted quantiles), with each face's k-hat;
* ``lowrank`` / ``lowrank40``: ``--guide lowrank`` (rank 10) / rank 40 (and their ``+psis`` rows);
* ``mala``: ``--method mala`` with 4 chains x ``--draws / 4`` draws (its own warm-up and thinning).

90 % coverage of the pixels (missing pixels of the box separately) against the exact-sampler
reference for the number of draws, the mean 90 % width, PSNR of the posterior mean, wall seconds.
Resumable: one JSON per (task, method) in ``--out``; a finished cell is skipped.

    PYTHONPATH=. python benchmarks/approximations.py --first-face 64 --faces 4 --out runs/approx_val
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
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's brgm_pyro, installed or not

from calibration import log, model_truths  # noqa: E402  (benchmarks/calibration.py: the same seeded truths)

from brgm_pyro import calibration, io  # noqa: E402
from brgm_pyro.metrics import psnr  # noqa: E402
from brgm_pyro.pipeline import core  # noqa: E402
from brgm_pyro.pipeline.run import MethodChoice, RunSpec  # noqa: E402

NOISE = 0.05
LEVELS = (0.5, 0.9)
#: the box over eyes and nose (rows, columns of the 64 x 64 image): missing pixels. Not calibration.py's
#: box (mask_for("box"): rows 18-39, columns 14-49); the figures in docs/calibration.md's PSIS section
#: were measured with this one, so it stays until they are re-measured with the shared mask
BOX = (slice(20, 44), slice(14, 50))
METHODS = {"vi": ("vi", None, None), "lowrank": ("vi", "lowrank", None), "lowrank40": ("vi", "lowrank", {"rank": 40}),
           "mala": ("mala", None, None)}


def write_inputs(G, ids: list[int], out: Path) -> tuple[list[Path], Path]:
    """The model+e truths as PNGs, and the box mask (white = observed)."""
    d = out / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    x, _ = model_truths(G, ids)  # faces64 has a discrepancy scale: model+e truths
    paths = []
    for i, img in zip(ids, x):
        p = d / f"truth_{i:03d}.png"
        io.save_png(p, io.from_model(img))
        paths.append(p)
    m = np.ones((64, 64), dtype=np.uint8) * 255
    m[BOX] = 0
    mask = d / "box_mask.png"
    io.save_png(mask, np.repeat(m[:, :, None], 3, axis=2).astype(np.float32) / 255.0)
    return paths, mask


def run_cell(G, task: str, name: str, paths: list[Path], mask: Path, draws: int, seed: int, steps=None):
    """One run as ``brgm reconstruct --simulate`` builds it: (obs, result, seconds)."""
    method, guide, guide_opts = METHODS[name]
    per_chain = max(1, draws // 4) if method == "mala" else draws
    opts = {"mask": [mask] * len(paths)} if task == "inpaint" else {}
    spec = RunSpec(task=task, task_options=opts, method=MethodChoice(method, num_samples=per_chain, guide=guide, steps=steps),
                   simulate=True)
    spec.check()
    obs = core.observe(paths, G, task, simulate=True, seed=seed, **spec.task_options)
    g = torch.Generator().manual_seed(seed)
    obs.y = obs.y + NOISE * torch.randn(obs.y.shape, generator=g)
    if obs.masks is not None:
        obs.y = obs.y * torch.from_numpy(obs.masks[:, None]).to(obs.y.dtype)
    model = spec.build(G, obs)
    extra = spec.method.runner_options()
    if guide_opts:
        extra["guide_options"] = guide_opts
    if method == "mala":
        extra["num_chains"] = 4
    t0 = time.perf_counter()
    result = core.reconstruct(model, obs, method, steps=steps, num_samples=per_chain, seed=seed, progress=False, **extra)
    return obs, result, time.perf_counter() - t0


def scores(obs, samples: torch.Tensor, weights=None) -> dict:
    """Coverage (all / observed / missing), widths and PSNR of the (weighted) mean, [0, 1] units."""
    d = ((samples.detach().double() + 1) / 2).clamp(0, 1)
    truth = torch.from_numpy(obs.truth).double().permute(0, 3, 1, 2)
    missing = None if obs.masks is None else ~torch.from_numpy(obs.masks)[:, None]
    wb = None if weights is None else weights.double().reshape(*weights.shape, 1, 1, 1)
    rep = calibration.coverage_report(d, truth, missing, LEVELS, weights=wb)
    mean = d.mean(0) if wb is None else (wb * d).sum(0)
    rep["psnr"] = float(np.mean([psnr(mean[b].permute(1, 2, 0).numpy(), obs.truth[b]) for b in range(len(truth))]))
    rep["reference90"] = calibration.exact_sampler_coverage(0.9, int(d.shape[0]))
    return rep


def evaluate(G, task: str, name: str, paths, mask, args, logf: Path) -> dict:
    obs, result, secs = run_cell(G, task, name, paths, mask, args.draws, args.seed, args.steps)
    out = {name: {**scores(obs, result.samples), "seconds": secs, "draws": int(result.samples.shape[0])}}
    lw = result.extra.get("psis_log_weights")
    if lw is not None:
        out[name]["psis"] = result.extra["psis"]
        out[f"{name}+psis"] = {**scores(obs, result.samples, lw.exp()), "seconds": secs,
                               "draws": int(result.samples.shape[0]), "psis": result.extra["psis"]}
    for k, r in out.items():
        msg = " ".join(f"{reg} {r[reg]['0.9']['coverage']:.3f}" for reg in ("all", "observed", "missing") if reg in r)
        kh = f" k-hat max {r['psis']['khat_max']}" if "psis" in r else ""
        log(f"{task} {k}: 90% {msg} (ref {r['reference90']:.3f}) PSNR {r['psnr']:.2f} {secs:.0f}s{kh}", logf)
    return out


def markdown(results: dict) -> str:
    lines = ["| task | method | all | observed | missing | 50 % missing | 90 % width (missing) | PSNR dB | k-hat max | s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for task, rows in results.items():
        for name, r in rows.items():
            reg = "missing" if "missing" in r else "all"
            f = lambda k: f"{r[k]['0.9']['coverage']:.3f}" if k in r else "-"  # noqa: E731
            kh = f"{r['psis']['khat_max']}" if "psis" in r else "-"
            lines.append(f"| {task} | {name} | {f('all')} | {f('observed')} | {f('missing')} | "
                         f"{r[reg]['0.5']['coverage']:.3f} | {r[reg]['0.9']['width']:.3f} | {r['psnr']:.2f} | {kh} | "
                         f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--first-face", type=int, default=64)
    ap.add_argument("--faces", type=int, default=4)
    ap.add_argument("--tasks", default="colorize,inpaint")
    ap.add_argument("--methods", default="vi,lowrank,mala,lowrank40")
    ap.add_argument("--draws", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="the method's default if not given (smoke tests)")
    ap.add_argument("--out", default="runs/approximations")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logf = out / "log.txt"
    G = core.load_generator("builtin:faces64")
    ids = list(range(args.first_face, args.first_face + args.faces))
    paths, mask = write_inputs(G, ids, out)
    log(f"faces {ids}, draws {args.draws}, command: {' '.join(sys.argv)}", logf)
    results: dict = {}
    for name in args.methods.split(","):  # every task of a method before the next (costlier) method
        for task in args.tasks.split(","):
            cell = out / f"{task}_{name}.json"
            if cell.exists():
                rows = json.loads(cell.read_text())
            else:
                rows = evaluate(G, task, name, paths, mask, args, logf)
                cell.write_text(json.dumps(rows, indent=1))
            results.setdefault(task, {}).update(rows)
            (out / "table.md").write_text(markdown(results) + "\n")
    log("done", logf)


if __name__ == "__main__":
    main()
