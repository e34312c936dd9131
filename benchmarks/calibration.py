"""Are the credible intervals calibrated? Coverage of every registered task, as ``brgm reconstruct`` runs it.

Part ``coverage`` runs the model and the inference method EXACTLY as ``brgm reconstruct --simulate
--method M [--guide G] --num-samples S`` builds and runs them: a :class:`~brgm_pyro.pipeline.run.RunSpec`
(the task's resolved options, the default :class:`~brgm_pyro.pipeline.run.ModelChoice`, a
:class:`~brgm_pyro.pipeline.run.MethodChoice`) checked and built with ``RunSpec.build`` (that is
:func:`brgm_pyro.pipeline.core.build_model` with the method's defaults: discrepancy term, perceptual
term, pixel noise of the task), the command's MCMC defaults (``cli.reconstruct.mcmc_cli_defaults``)
and :func:`brgm_pyro.pipeline.core.reconstruct` with the registered runner; coverage is scored by
the functions that write ``metrics.json`` (:func:`brgm_pyro.pipeline.coverage.image_coverage`,
``pooled_coverage``: draws and truths clipped to [0, 1] as the PNGs). The corruption is the task's
own ``Task.build`` (in-painting masks written as PNG files and passed as ``--mask``). Only the
observation differs from ``--simulate``: noise N(0, 0.05^2) is added to every observation whose
corruption states no noise of its own (``--simulate`` adds none; denoising adds its own 0.2),
and truths are float images (not 8-bit PNGs).

Cells: generator x task variant x truth set x method. Variants (``VARIANTS``; each a non-default
setting of a task is its own name): ``superres_x4/x8/x16`` (the CLI's box kernel), ``inpaint_freeform``
(the masks of benchmarks/eval_faces64.py), ``inpaint_box`` (a box over the eyes and nose: rows
0.28-0.62, columns 0.22-0.78 of the image), ``inpaint_half`` (the lower half missing), ``colorize``
(three-channel generators only), ``denoise`` (sigma 0.2), ``deblur`` (Gaussian, 2 px), ``cs``
(Gaussian matrix, m = C H W / 8), ``deblur_blind``, ``superres_blind`` (x8); ``none`` (inversion,
no missing information) and ``compose`` (a user's composition) are not cells. Truth sets:

* ``model+e``: drawn from the model as ``brgm reconstruct`` builds it: G(mapping(z)) (z seeded by
  10,000 + image index) plus e ~ N(0, tau^2 I) of the generator's stored discrepancy term. A
  generator without a stored scale (``builtin:fashion32``) has no term in its default model, so
  its model truths are G(mapping(z)) alone and the set is called ``model`` (tests the approximation);
* ``heldout``: held-out images (faces64: procedural faces, validation 64-79, test 0-63;
  fashion32: real Fashion-MNIST photographs, validation = training 55,000.., test 0-999; tests the model).

Methods: ``--methods vi,vi:lowrank,mala,smc`` (``NAME[:GUIDE]``, any registered method and guide at
the command's defaults). Methods with chains or particles run one image at a time (as one
``brgm reconstruct IMAGE`` each), VI on the cell's images as one batch (``--per-image``: one at a
time as well; the structured guides are priced per batch, issue 28).

Resumable: each cell's JSON is written to ``OUT/cells/`` as it finishes and an existing cell is
skipped. ``--table FILE`` writes every cell of the run as a row of the generator's calibration table
(:mod:`brgm_pyro.calibration_table`; ``<weights>.calibration.json``), with the exact command, for
both truth sets, validation or test images (the row says which). Run with ``PYTHONPATH=.`` from the
repository root. An exact sampler's 90 % interval from S draws covers about 0.9 (S - 1) / (S + 1)
(:func:`brgm_pyro.calibration.exact_sampler_coverage`; ``reference`` in each cell).

Part ``sbc``: simulation-based calibration (Talts et al. 2018) of NUTS and MALA on a small linear
generator (exact Gaussian posterior), ``benchmarks/calibration_sbc.py``.

Usage (choices on validation images, the report on test images)::

    PYTHONPATH=. python benchmarks/calibration.py --split val --images 4 --out runs/calib_val
    PYTHONPATH=. python benchmarks/calibration.py --split test --images 8 --out runs/calib_test \\
        --table auto
    PYTHONPATH=. python benchmarks/calibration.py --part sbc --out runs/calibration_sbc
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's brgm_pyro

from brgm_pyro.calibration import exact_sampler_coverage  # noqa: E402
from brgm_pyro.calibration_table import LEVEL, load_table, run_combination  # noqa: E402
from brgm_pyro.pipeline import core  # noqa: E402
from brgm_pyro.pipeline.run import MethodChoice, ModelChoice, RunSpec  # noqa: E402
from brgm_pyro.pipeline.tasks import TaskInputs, get_task  # noqa: E402

NOISE = 0.05
#: variant -> (registered task, the task's options; "mask" names a mask kind of :func:`mask_for`)
VARIANTS: dict[str, tuple[str, dict]] = {
    "superres_x4": ("superres", {"factor": 4}), "superres_x8": ("superres", {"factor": 8}),
    "superres_x16": ("superres", {"factor": 16}),
    "inpaint_freeform": ("inpaint", {"mask": "freeform"}), "inpaint_box": ("inpaint", {"mask": "box"}),
    "inpaint_half": ("inpaint", {"mask": "half"}), "colorize": ("colorize", {}), "denoise": ("denoise", {}),
    "deblur": ("deblur", {}), "cs": ("cs", {"measurements": "1/8"}), "deblur_blind": ("deblur_blind", {}),
    "superres_blind": ("superres_blind", {"factor": 8}),
}
ABOUT = ("Pooled 90 % interval coverage (all / observed / missing pixels) per combination of what a brgm reconstruct "
         "run chose (task and its factor/kernel, method, guide, noise, perceptual term, discrepancy term, prior), per "
         "task variant (mask kind, factor) and truth set (model+e / model: drawn from the model; heldout: held-out "
         "images), observation noise N(0, 0.05^2) (denoising: its own 0.2). Written by benchmarks/calibration.py "
         "--table; each row has its command.")
SHORT = {"builtin:faces64": "faces64", "builtin:fashion32": "fashion32"}


def log(msg: str, path: Path) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    with open(path, "a") as f:
        f.write(line + "\n")


def image_ids(generator: str, split: str, first: int, n: int) -> list[int]:
    """Indices of the cell's images: faces64 validation faces are 64-79 of the face set, test 0-63;
    fashion32's are split-relative (validation: training 55,000 + i; test: official test i)."""
    base = 64 if (split == "val" and SHORT.get(generator) == "faces64") else 0
    return list(range(base + first, base + first + n))


def heldout_truths(generator: str, split: str, ids: list[int]) -> torch.Tensor:
    """(N, C, H, W) held-out images in [-1, 1]."""
    if SHORT.get(generator) == "fashion32":
        from brgm_pyro.data import fashion_mnist as fm

        imgs, _ = fm.load_images("val" if split == "val" else "test", ids)
        return fm.to_tensor(imgs)
    from brgm_pyro.data.faces import face_batch

    return face_batch(ids, "test")[1]


def model_truths(G, ids: list[int]) -> tuple[torch.Tensor, str]:
    """(truths, name): G(mapping(z)) plus the stored discrepancy's e (``model+e``), or G(mapping(z))
    alone (``model``) for a generator whose default model has no discrepancy term."""
    from brgm_pyro.models.discrepancy import discrepancy_path, load_discrepancy

    p = discrepancy_path(G)
    disc = load_discrepancy(G) if p is not None and p.exists() else None
    out = []
    with torch.no_grad():
        for i in ids:
            g = torch.Generator().manual_seed(10_000 + i)
            z = torch.randn(1, G.z_dim, generator=g)
            x = G(G.mapping(z)[:, None].expand(-1, G.num_ws, -1))
            if disc is not None:
                e = torch.randn(x.shape, generator=g)
                x = x + disc.tau * (e if disc.smoother is None else disc.smoother.apply(e))
            out.append(x)
    return torch.cat(out), ("model+e" if disc is not None else "model")


def mask_for(kind: str, i: int, size: int) -> np.ndarray:
    """(size, size) bool, True = observed: ``freeform`` (eval_faces64's seeded strokes for image i),
    ``box`` (rows 0.28-0.62, columns 0.22-0.78: the eyes and nose of a face), ``half`` (lower half missing)."""
    if kind == "freeform":
        from eval_faces64 import freeform_mask

        return freeform_mask(i, size)
    m = np.ones((size, size), bool)
    if kind == "box":
        m[round(0.28 * size):round(0.62 * size), round(0.22 * size):round(0.78 * size)] = False
    elif kind == "half":
        m[size // 2:] = False
    else:
        raise ValueError(f"unknown mask kind {kind!r}")
    return m


def task_options(variant: str, ids: list[int], image_shape: tuple, mask_dir: Path) -> tuple[str, dict]:
    """(task, its options as ``brgm reconstruct`` flags give them) of ``variant`` for images ``ids``;
    in-painting masks are written as PNG files and passed as ``--mask`` paths, one per image."""
    from PIL import Image

    task, opts = VARIANTS[variant]
    opts = dict(opts)
    C, H, W = image_shape
    if opts.get("mask"):
        mask_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in ids:
            p = mask_dir / f"{opts['mask']}_{H}_{i}.png"
            Image.fromarray(mask_for(opts["mask"], i, H).astype(np.uint8) * 255).save(p)
            paths.append(p)
        opts["mask"] = paths
    if opts.get("measurements") == "1/8":
        opts["measurements"] = C * H * W // 8
    return task, opts


def observation(task: str, opts: dict, x: torch.Tensor, image_shape: tuple, seed: int):
    """The :class:`~brgm_pyro.pipeline.core.Observation` of clean images ``x`` (N, C, H, W) in [-1, 1]
    through the task's own ``build`` (as ``brgm reconstruct --simulate``), observation noise as the
    module docstring says; ``truth`` (N, H, W, C) in [0, 1] (clipped as a PNG)."""
    t = get_task(task)
    opts = t.resolve(opts)
    t.check(opts, True)
    t.check_shape(opts, image_shape)
    stubs = [None] * x.shape[0]  # the images are only counted (masks are given at the image's size)
    build = t.build(TaskInputs(stubs, opts, True, image_shape))
    f = build.corruption
    f.check_input(image_shape)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if getattr(f, "noise_sigma", None):
            y = f.simulate(x, generator=gen, params=build.sim_params)
        else:
            y0 = f(x, build.sim_params)
            y = y0 + NOISE * torch.randn(y0.shape, generator=gen)
    if build.masks is not None:
        y = y * torch.from_numpy(build.masks[:, None]).to(y.dtype)
    truth = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy().astype(np.float64)
    return core.Observation(y=y, corruption=f, task=t, options=opts, simulate=True, masks=build.masks,
                            truth=truth, names=[f"img{i}" for i in range(x.shape[0])]), opts


def parse_method(text: str) -> tuple[str, Optional[str]]:
    """``vi:lowrank`` -> (``vi``, ``lowrank``); ``mala`` -> (``mala``, None)."""
    name, _, guide = text.partition(":")
    return name, (guide or None)


def method_label(method: str, guide: Optional[str]) -> str:
    return method + (f":{guide}" if guide else "")


def run_chunk(G, spec: RunSpec, obs, seed: int):
    """One ``brgm reconstruct`` inference on ``obs``: the model of ``spec.build`` and the registered
    runner with the command's defaults. Returns the InferenceResult."""
    from brgm_pyro.cli.reconstruct import mcmc_cli_defaults

    m = spec.method
    model = spec.build(G, obs, phi="default")
    if spec.model.discrepancy is None:  # what run.json records: the default, resolved
        spec.model.discrepancy = spec.default_discrepancy(G, obs.corruption)[0]
    steps, kernel = mcmc_cli_defaults(m.method, m.steps, m.max_tree_depth, m.mass)
    extra = {**m.runner_options(), **kernel}
    return core.reconstruct(model, obs, m.method, steps=steps, num_samples=m.num_samples, seed=seed,
                            progress=False, runner=core.methods_registry().get(m.method), **extra)


def cell_spec(variant: str, method: str, guide: Optional[str], num_samples: int, opts: dict) -> RunSpec:
    task = VARIANTS[variant][0]
    spec = RunSpec(task=task, task_options=dict(opts), model=ModelChoice(),
                   method=MethodChoice(method, guide=guide, num_samples=num_samples), simulate=True)
    spec.check("cpu", core.methods_registry())
    return spec


def settings_of(spec: RunSpec, obs) -> dict:
    """The parts of run.json's ``settings`` that :func:`brgm_pyro.calibration_table.run_combination` reads."""
    from dataclasses import asdict

    s = {"task": spec.task, "method": spec.method.method, "model_choice": asdict(spec.model),
         "percept": bool(spec.use_percept() and obs.image_observation), "num_samples": spec.method.num_samples,
         **{k: v for k, v in obs.task.settings(obs.options).items() if k in ("factor", "kernel")}}
    if spec.method.guide is not None:
        s["guide"] = spec.method.guide
    return s


def evaluate(G, generator: str, variant: str, truth: str, method: str, guide: Optional[str], ids: list[int],
             args, mask_dir: Path) -> dict:
    """One cell: coverage (pooled over the images, as metrics.json) and PSNR of the posterior mean."""
    from brgm_pyro.metrics import psnr
    from brgm_pyro.pipeline.coverage import image_coverage, pooled_coverage

    x, truth_name = (model_truths(G, ids) if truth == "model" else
                     (heldout_truths(generator, args.split, ids), "heldout"))
    traits = core.method_traits(method)
    per_image = args.per_image or traits.chains or traits.particles  # as one `brgm reconstruct IMAGE` each
    chunks = [[k] for k in range(len(ids))] if per_image else [list(range(len(ids)))]
    num_samples = args.mcmc_samples if traits.chains else args.draws
    reports, psnrs, t0, spec = [], [], time.perf_counter(), None
    for ch in chunks:
        task, opts = task_options(variant, [ids[k] for k in ch], tuple(G.image_shape), mask_dir)
        obs, opts = observation(task, opts, x[ch], tuple(G.image_shape), args.seed + ids[ch[0]])
        spec = cell_spec(variant, method, guide, num_samples, opts)
        r = run_chunk(G, spec, obs, args.seed)
        S = r.samples.shape[0]
        reports += [image_coverage(r.samples, obs.truth, obs.corruption, b) for b in range(len(ch))]
        mean = ((r.samples.mean(0).detach().cpu().double() + 1) / 2).clamp(0, 1)
        psnrs += [psnr(mean[b], torch.from_numpy(obs.truth[b]).permute(2, 0, 1), channels_first=True)
                  for b in range(len(ch))]
    pooled = pooled_coverage(reports, S)
    key = f"{LEVEL:g}"
    return {"generator": generator, "variant": variant, "task": spec.task, "truth": truth_name,
            "split": args.split, "ids": ids, "method": method, "guide": spec.method.guide,
            "settings": settings_of(spec, obs), "combination": run_combination(settings_of(spec, obs)),
            "draws": S, "reference": exact_sampler_coverage(LEVEL, S),
            "coverage": {reg: v[key]["coverage"] for reg, v in pooled["all_images"].items()},
            "width": {reg: v[key]["width"] for reg, v in pooled["all_images"].items()},
            "levels": pooled["all_images"], "psnr_mean_db": float(np.mean(psnrs)),
            "seconds": time.perf_counter() - t0, "per_image_runs": bool(per_image),
            "per_image": {str(i): {reg: r[reg][key] for reg in r["counted"]} for i, r in zip(ids, reports)}}


def cell_name(generator: str, variant: str, truth: str, method: str, guide: Optional[str], split: str,
              ids: list[int]) -> str:
    return (f"{SHORT.get(generator, Path(generator).stem)}__{variant}__{truth}__{method_label(method, guide)}"
            f"__{split}{ids[0]}-{ids[-1]}").replace(":", "+")


def part_coverage(args, out: Path, logf: Path) -> None:
    """Every cell of generators x variants x truths x methods; each cell's JSON written as it finishes."""
    from brgm_pyro.models.generators.loading import load_generator

    cells_dir = out / "cells"
    cells_dir.mkdir(parents=True, exist_ok=True)
    command = " ".join(["PYTHONPATH=. python"] + [str(a) for a in sys.argv])
    for generator in args.generators.split(","):
        G = core.load_generator(generator)
        ids = image_ids(generator, args.split, args.first, args.images)
        variants = [v for v in (VARIANTS if args.variants == "all" else args.variants.split(","))
                    if not (VARIANTS[v][0] == "colorize" and G.image_shape[0] != 3)]  # gray images: no colour
        for variant in variants:
            for truth in args.truths.split(","):
                for mtext in args.methods.split(","):
                    method, guide = parse_method(mtext)
                    name = cell_name(generator, variant, truth, method, guide, args.split, ids)
                    path = cells_dir / f"{name}.json"
                    if path.exists():  # resumable: finished cells are kept
                        continue
                    try:
                        cell = evaluate(G, generator, variant, truth, method, guide, ids, args, out / "masks")
                    except Exception as e:  # one failing cell must not end the sweep; it is retried on resume
                        log(f"{name}: FAILED {type(e).__name__}: {' '.join(str(e).split())[:300]}", logf)
                        continue
                    cell["command"] = command
                    path.write_text(json.dumps(cell, indent=1, default=float))
                    c = cell["coverage"]
                    log(f"{name}: 90% " + ", ".join(f"{k} {v:.3f}" for k, v in c.items())
                        + f" (ref {cell['reference']:.3f}), PSNR {cell['psnr_mean_db']:.2f}, {cell['seconds']:.0f} s",
                        logf)
        if args.table:
            cells = [json.loads(p.read_text()) for p in sorted(cells_dir.glob("*.json"))]
            cells = [c for c in cells if c["generator"] == generator and c["split"] == args.split]
            from brgm_pyro.calibration_table import table_path

            tab = table_path(G) if args.table == "auto" else Path(args.table)
            n = write_table_rows(Path(tab), cells, generator)
            log(f"{n} rows written to the calibration table {tab}", logf)
    (out / "coverage.md").write_text(coverage_markdown([json.loads(p.read_text())
                                                         for p in sorted(cells_dir.glob("*.json"))]))
    log(f"wrote {out / 'coverage.md'}", logf)


def table_row(cell: dict) -> dict:
    """One row of the package's calibration table (:mod:`brgm_pyro.calibration_table`) from a cell."""
    ids = cell["ids"]
    what = {"val": "validation", "test": "test"}[cell["split"]]
    return {"match": cell["combination"], "truth": cell["truth"], "variant": cell["variant"],
            "images": f"{what} images {ids[0]}-{ids[-1]}", "options": cell["settings"],
            "observation_noise": NOISE, "draws": cell["draws"], "reference": cell["reference"],
            "coverage": cell["coverage"], "psnr_mean_db": cell["psnr_mean_db"], "commands": [cell["command"]]}


def write_table_rows(path: Path, cells: list[dict], generator: str) -> int:
    """Add (or replace: same match, truth, variant and images) the rows of ``cells`` in the table at ``path``."""
    tab = load_table(path) if path.exists() else {"generator": generator, "level": LEVEL, "rows": []}
    tab.setdefault("generator", generator)
    tab.setdefault("level", LEVEL)
    tab.setdefault("band", "exact-sampler reference +- 0.05 (brgm_pyro.calibration_table.TOLERANCE)")
    tab.setdefault("about", ABOUT)
    new = [table_row(c) for c in cells]
    same = lambda a, b: all(a.get(k) == b.get(k) for k in ("match", "truth", "images", "variant"))
    tab["rows"] = [r for r in tab["rows"] if not any(same(r, n) for n in new)] + new
    path.write_text(json.dumps(tab, indent=1) + "\n")
    return len(new)


def _figures(c: Optional[dict]) -> str:
    """``all / observed / missing`` 90 % coverage of a cell (bold: outside its reference +- 0.05)."""
    if c is None:
        return "-"

    def fig(reg: str) -> str:
        v = c["coverage"].get(reg)
        if v is None:
            return ""
        return f"**{v:.2f}**" if abs(v - c["reference"]) > 0.05 else f"{v:.2f}"

    return " / ".join(f for f in (fig("all"), fig("observed"), fig("missing")) if f)


def coverage_markdown(cells: list[dict]) -> str:
    """One row per generator, variant and method: 90 % coverage (all / observed / missing pixels) of
    the model-drawn and the held-out truths, the exact-sampler reference, PSNR of the posterior mean."""
    rows: dict[tuple, dict] = {}
    for c in cells:
        key = (SHORT.get(c["generator"], c["generator"]), c["variant"], method_label(c["method"], c["guide"]),
               len(c["ids"]), c["split"])
        rows.setdefault(key, {})["model" if c["truth"].startswith("model") else "heldout"] = c
    lines = ["90 % interval coverage, all / observed / missing pixels (**bold**: outside the exact-sampler "
             "reference +- 0.05), PSNR of the posterior mean (model-drawn / held-out truths), seconds per cell", "",
             "| generator | variant | method | images | model-drawn truths | held-out truths | ref. | PSNR dB | s |",
             "|---|---|---|---:|---|---|---:|---|---:|"]
    order = list(VARIANTS)
    for (gen, variant, method, n, split), pair in sorted(rows.items(), key=lambda kv: (
            kv[0][0], order.index(kv[0][1]) if kv[0][1] in order else 99, kv[0][2], kv[0][3])):
        m, h = pair.get("model"), pair.get("heldout")
        any_c = m or h
        psnr = " / ".join(f"{c['psnr_mean_db']:.1f}" if c else "-" for c in (m, h))
        secs = sum(c["seconds"] for c in (m, h) if c)
        lines.append(f"| {gen} | {variant} | {method} | {split} {any_c['ids'][0]}-{any_c['ids'][-1]} | "
                     f"{_figures(m)} | {_figures(h)} | {any_c['reference']:.3f} | {psnr} | {secs:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["coverage", "sbc"], default="coverage")
    ap.add_argument("--generators", default="builtin:faces64,builtin:fashion32")
    ap.add_argument("--split", choices=["val", "test"], default="val", help="validation images (choices) or test "
                    "images (the report)")
    ap.add_argument("--images", type=int, default=4, help="images per cell")
    ap.add_argument("--first", type=int, default=0, help="first image of the split (split-relative)")
    ap.add_argument("--variants", default="all", help=f"comma list of {', '.join(VARIANTS)}, or all")
    ap.add_argument("--truths", default="model,heldout", help="model (model+e where the generator stores a "
                    "discrepancy scale), heldout")
    ap.add_argument("--methods", default="vi", help="NAME[:GUIDE], comma-separated (vi, vi:lowrank, mala, smc, ...)")
    ap.add_argument("--per-image", action="store_true", help="every method one image at a time (as one "
                    "`brgm reconstruct IMAGE` each; methods with chains or particles always are)")
    ap.add_argument("--draws", type=int, default=128, help="--num-samples of methods without chains")
    ap.add_argument("--mcmc-samples", type=int, default=32, help="--num-samples (per chain) of MCMC methods")
    ap.add_argument("--table", default=None, help="write the cells as rows of this calibration table; 'auto': "
                    "each generator's own (<weights>.calibration.json)")
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
