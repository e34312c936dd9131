"""``brgm demo``: the main job on the bundled generator, end to end, in a few minutes on a laptop CPU.

A few test faces (from the *test* split of the procedural faces dataset, never used in training)
are corrupted four ways, x8 super-resolution, in-painting of a rectangle over the eyes and nose,
colorization (the Rec. 601 gray image) and deblurring (Gaussian blur of std 2 pixels, reflected
borders), all noise-free, and reconstructed with MAP and with variational inference (VI
warm-started at the MAP). The faces of one task are one batch. Written to DIR:

* ``summary.png``: one column per (task, face); rows truth, observation, MAP, posterior mean,
  three posterior samples, the per-pixel posterior standard deviation (VI) and the prior-reliance
  map Var[x|y] / Var[x] of the VI draws (:mod:`brgm_pyro.reliance`; dark = decided by the data), on
  a colour scale from 0 to the task's largest value, written in the panel (a mean-field VI
  posterior is narrow, so r stays far below 1);
* ``metrics.json``: PSNR, SSIM, MAE, RMSE per face, task and method, and their means; the
  baselines (bicubic up-sampling, the gray image replicated), the mean prior reliance (VI) and the
  interval coverage of the clean faces by the VI draws (50/90/95 %; in-painting: observed and missing
  pixels separately), also printed;
* ``run.json``: settings, seed, package versions, timings.
"""

from __future__ import annotations

import datetime as _dt
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer

from brgm_pyro import io
from brgm_pyro.cli.app import app, user_errors
from brgm_pyro.cli.reconstruct import EXIT_INTERRUPTED, guarded
from brgm_pyro.errors import BRGMError
from brgm_pyro.pipeline import core as pipeline
from brgm_pyro.pipeline.baselines import bicubic_upsample
from brgm_pyro.pipeline.coverage import coverage_line
from brgm_pyro.pipeline.outputs import METRICS_RANGE
from brgm_pyro.pipeline.records import history_summary, interrupted, machine_info, package_versions
from brgm_pyro.pipeline.run import set_threads
from brgm_pyro.pipeline.tasks import superres_factor_check

DEFAULT_GENERATOR = pipeline.DEFAULT_GENERATOR
methods_registry = pipeline.methods_registry  # a module attribute: tests replace it

DEMO_FACES = (1, 4, 6, 2, 5, 7, 0, 3)
"""Indices into the faces *test* split (seed ``brgm_pyro.data.faces.TEST_SEED``), in the order used."""
DEMO_FACTOR = 8
# four tasks in under 3 minutes on 2 cores: run_map's default MAP budget (250 steps, chosen on validation
# faces 64-79 in benchmarks/vs_reference.py) and 100 VI steps (a VI step costs ~4.4 MAP steps: 4 particles)
DEMO_MAP_STEPS = 250
DEMO_VI_STEPS = 100
DEMO_NUM_SAMPLES = 16
DEMO_BLUR_SIGMA = 2.0  # deblurring column: Gaussian blur std in pixels of the 64x64 image
DEMO_RELIANCE_PRIOR_DRAWS = 512
QUICK = dict(faces=2, map_steps=5, vi_steps=5, num_samples=4)


def demo_mask(resolution: int) -> np.ndarray:
    """In-painting mask of the demo (True = observed): a rectangle over the eyes and the nose is missing,
    rows 5/16 to 10/16 and columns 1/4 to 3/4 of the image."""
    R = resolution
    m = np.ones((R, R), dtype=bool)
    m[(5 * R) // 16:(10 * R) // 16, R // 4:(3 * R) // 4] = False
    return m


def _key(fid) -> str:
    """metrics.json's name of a demo image: ``test_face_K`` for a face index, the name itself otherwise."""
    return f"test_face_{fid}" if isinstance(fid, (int, np.integer)) else str(fid)


def demo_fashion(n: int) -> tuple[list[str], np.ndarray]:
    """Names and (B, 32, 32, 1) in [0, 1] of Fashion-MNIST test images 0..n-1 (the shipped subset)."""
    from brgm_pyro.data.fashion_mnist import shipped_subset

    x, _, idx = shipped_subset("test")
    return [f"fashion_test_{int(i)}" for i in idx[:n]], x[:n, :, :, None].astype(np.float32) / 255.0


def demo_faces(indices, resolution: int, channels: int) -> np.ndarray:
    """The demo's test faces as (B, R, R, C) in [0, 1]."""
    from brgm_pyro.data.faces import face_image_uint8

    out = []
    for i in indices:
        a = face_image_uint8(int(i), "test").astype(np.float32) / 255.0
        a, _ = io.center_crop_resize(a, resolution)
        a, _ = io.match_channels(a, channels)
        out.append(a)
    return np.stack(out)


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("brgm-demo"), "--out", help="Output directory (created; must be new or empty)."),
    faces: Optional[int] = typer.Option(None, help=f"Number of test faces (default 3, at most {len(DEMO_FACES)})."),
    steps: Optional[int] = typer.Option(None, help="Steps for both MAP and VI (--map-steps/--vi-steps win)."),
    map_steps: Optional[int] = typer.Option(None, help=f"MAP optimisation steps (default {DEMO_MAP_STEPS})."),
    vi_steps: Optional[int] = typer.Option(None, help=f"VI optimisation steps, warm-started at the MAP "
                                                      f"(default {DEMO_VI_STEPS})."),
    num_samples: Optional[int] = typer.Option(None, help=f"Posterior samples drawn from the VI posterior "
                                                         f"(default {DEMO_NUM_SAMPLES})."),
    quick: bool = typer.Option(False, "--quick", help="A tiny smoke run: 2 faces, 5 steps, 4 samples "
                                                      "(explicit options still win)."),
    generator: str = typer.Option(DEFAULT_GENERATOR, help="Generator (the bundled one by default)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier brgm result in --out."),
    threads: int = typer.Option(1, help="CPU threads for torch. One is fastest for the small bundled networks "
                                        "and immune to oversubscription."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    real_data: bool = typer.Option(True, "--real-data/--no-real-data",
                                   help="With the default generator, also run builtin:fashion32 on Fashion-MNIST "
                                        "test photographs (summary_fashion32.png; docs/real_data.md)."),
) -> None:
    """Run x8 super-resolution, in-painting, colorization and deblurring with MAP and VI on bundled test
    faces; write summary.png (with the prior-reliance row) and metrics.json."""
    code = guarded(run_demo, out=out, faces=faces, steps=steps, map_steps=map_steps, vi_steps=vi_steps,
                   num_samples=num_samples, quick=quick, generator=generator, seed=seed, device=device,
                   overwrite=overwrite, quiet=quiet, threads=threads, real_data=real_data)
    if code:
        raise typer.Exit(code)


def _coverage(r, truth: np.ndarray, corruption, face_ids: list) -> Optional[dict]:
    """Interval coverage of the clean faces by the draws of ``r`` (None without draws): over all faces,
    and per face under ``faces`` (:mod:`brgm_pyro.pipeline.coverage`; in-painting: observed/missing too)."""
    from brgm_pyro.pipeline.coverage import image_coverage, pooled_coverage

    per = [image_coverage(r.samples, truth, corruption, b) for b in range(len(face_ids))]
    if not per or per[0] is None:
        return None
    return {**pooled_coverage(per, r.samples.shape[0]), "faces": dict(zip((_key(f) for f in face_ids), per))}


def _score_task(key: str, res: dict, face_ids: list, truth, mask, R: int, C: int) -> dict:
    """metrics.json entries of one task: MAP and VI per face and mean, the task's baseline."""
    from brgm_pyro import figures, metrics

    y = res["y"]
    task_scores: dict[str, dict] = {}
    for mname in ("map", "vi"):
        r = res[mname]
        if r is None:
            continue
        per_face = {}
        for b, fid in enumerate(face_ids):
            rec = io.from_model(r.mean_image()[b])
            entry = metrics.image_metrics(rec, truth[b])
            if key == "inpaint":
                comp = figures.composite(io.from_model(y[b]), rec, mask)
                entry = {"reconstruction": entry, "composite": metrics.image_metrics(comp, truth[b])}
            per_face[_key(fid)] = entry
        if key == "inpaint":
            mean = {k: metrics.summarize([v[k] for v in per_face.values()]) for k in ("reconstruction",
                                                                                    "composite")}
        else:
            mean = metrics.summarize(list(per_face.values()))
        task_scores[mname] = {"faces": per_face, "mean": mean, "steps_done": r.timing.get("steps"),
                              "stopped": r.stopped}
        cov = _coverage(r, truth, res["corruption"], face_ids)
        if cov is not None:
            task_scores[mname]["coverage"] = cov
        if mname == "vi" and res["reliance"] is not None:
            s = res["reliance"].summary()
            task_scores[mname]["mean_prior_reliance"] = dict(zip((_key(f) for f in face_ids),
                                                                 s["mean_prior_reliance"]))
            task_scores[mname]["reliance"] = {k: s[k] for k in ("num_posterior_draws", "num_prior_draws",
                                                                "prior_ess")}
    if key == "superres":
        up = bicubic_upsample(y, R)
        base = {_key(fid): metrics.image_metrics(io.from_model(up[b]), truth[b])
                for b, fid in enumerate(face_ids)}
        task_scores["baseline_bicubic"] = {"faces": base, "mean": metrics.summarize(list(base.values()))}
    if key == "colorize":  # the baseline anyone could do: the gray image as RGB
        base = {_key(fid): metrics.image_metrics(np.repeat(io.from_model(y[b].cpu()), C, -1), truth[b])
                for b, fid in enumerate(face_ids)}
        task_scores["baseline_gray"] = {"faces": base, "mean": metrics.summarize(list(base.values()))}
    return task_scores


def _task_columns(key: str, res: dict, task_scores: dict, face_ids: list, truth, mask, R: int) -> list[dict]:
    """The figure's columns of one task (one per face), std and reliance on one colour scale per task."""
    from brgm_pyro import figures

    y = res["y"]
    columns: list[dict] = []
    r_map, r_vi = res["map"], res["vi"]
    for b, fid in enumerate(face_ids):
        col = {"title": f"{res['label']}\n{_key(fid).replace('_', ' ')}", "truth": truth[b],
               "observation": figures.observation_display(io.from_model(y[b].cpu()), R,
                                                          mask if key == "inpaint" else None),
               "MAP": io.from_model(r_map.mean_image()[b])}
        if r_vi is not None and r_vi.samples is not None:
            samples = np.stack([io.from_model(r_vi.samples[s, b]) for s in range(r_vi.samples.shape[0])])
            col["posterior mean"] = io.from_model(r_vi.mean_image()[b])
            col["samples"] = list(samples[:3])
            col["std"] = figures.std_map(samples)
        if res["reliance"] is not None:  # coloured below, on one scale per task
            col["_reliance"] = res["reliance"].channel_mean()[b].detach().cpu().numpy()
        col.setdefault("notes", {})
        for row, mname in (("MAP", "map"), ("posterior mean", "vi")):
            entry = task_scores.get(mname, {}).get("faces", {}).get(_key(fid))
            if entry is not None:
                psnr = entry["reconstruction"]["psnr"] if key == "inpaint" else entry["psnr"]
                col["notes"][row] = f"{psnr:.1f} dB"
        columns.append(col)
    task_cols = [c for c in columns if c.get("std") is not None]
    if task_cols:  # one colour scale per task: in-painting and super-resolution differ in kind
        top = max(float(c["std"].max()) for c in task_cols)
        for c in task_cols:
            c["std_vmax"] = max(top, 1e-6)
    rel_cols = [c for c in columns if c.get("_reliance") is not None]
    if rel_cols:  # r is in [0, 1]; a mean-field VI posterior keeps it small: show 0..the task's max
        from matplotlib import colormaps

        top = max(max(float(c["_reliance"].max()) for c in rel_cols), 1e-6)
        for c in rel_cols:
            r = c.pop("_reliance")
            c["prior reliance"] = colormaps["magma"](np.clip(r / top, 0.0, 1.0))[..., :3]
            c["notes"]["prior reliance"] = f"0-{top:.2g}, mean {float(r.mean()):.3f}"
    return columns


def _demo_settings(faces, steps, map_steps, vi_steps, num_samples, quick) -> tuple[int, int, int, int]:
    """(faces, map_steps, vi_steps, num_samples) from the options and the preset; bad values refused."""
    base = QUICK if quick else dict(faces=3, map_steps=DEMO_MAP_STEPS, vi_steps=DEMO_VI_STEPS,
                                    num_samples=DEMO_NUM_SAMPLES)
    if steps is not None:
        map_steps = steps if map_steps is None else map_steps
        vi_steps = steps if vi_steps is None else vi_steps
    faces = base["faces"] if faces is None else faces
    map_steps = base["map_steps"] if map_steps is None else map_steps
    vi_steps = base["vi_steps"] if vi_steps is None else vi_steps
    num_samples = base["num_samples"] if num_samples is None else num_samples
    if not 1 <= faces <= len(DEMO_FACES):
        raise BRGMError(f"--faces must be between 1 and {len(DEMO_FACES)}, got {faces}")
    for name, v in (("--map-steps", map_steps), ("--vi-steps", vi_steps)):
        if v < 1:
            raise BRGMError(f"{name} must be at least 1, got {v}")
    if num_samples < 3:
        raise BRGMError(f"--num-samples must be at least 3 (the figure shows three samples), got {num_samples}")
    return faces, map_steps, vi_steps, num_samples


def _demo_tasks(R: int, C: int, mask, factor: Optional[int] = None) -> tuple[list, int, float]:
    """[(label, key, corruption)], the super-resolution factor and the blur width (px) for a G of size R."""
    import torch

    from brgm_pyro.models.corruptions import make_corruption

    factor = factor or (DEMO_FACTOR if R % DEMO_FACTOR == 0 and R // DEMO_FACTOR >= 2 else 2)
    superres_factor_check(R, factor)
    tasks = [(f"x{factor} super-resolution", "superres", make_corruption("superres", factor=factor, kernel="box")),
             ("in-painting", "inpaint", make_corruption("inpaint", mask=torch.from_numpy(mask)))]
    if C == 3:  # colorization needs colour images
        tasks.append(("colorization", "colorize", make_corruption("colorize")))
    blur = DEMO_BLUR_SIGMA * R / 64  # the same blur relative to the face on any generator size
    tasks.append((f"deblurring ({blur:g} px)", "deblur", make_corruption("deblur", kernel="gauss", sigma=blur)))
    return tasks, factor, blur


def _demo_task(label, key, model, y, ctx: dict, timings: dict, vi_model=None) -> dict:
    """MAP, VI warm-started at it, and the prior-reliance map of one task, as brgm reconstruct runs them
    (``vi_model``: VI's model, default ``model``; without the perceptual term by default).

    ``ctx``: methods, steps, seed, quiet, faces; ``ctx["prior_var"]`` caches the prior's pixel
    variances (one prior, shared by every task's reliance map)."""
    t0 = time.perf_counter()
    if not ctx["quiet"]:
        print(f"{label}: MAP ({ctx['map_steps']} steps) on {ctx['faces']} faces", file=sys.stderr)
    r_map = pipeline.reconstruct(model, y, "map", steps=ctx["map_steps"], seed=ctx["seed"], progress=not ctx["quiet"],
                                 runner=ctx["methods"].get("map"))
    timings[f"{key}_map_s"] = time.perf_counter() - t0
    r_vi = None
    if not interrupted(r_map):
        t0 = time.perf_counter()
        if not ctx["quiet"]:
            print(f"{label}: VI ({ctx['vi_steps']} steps, {ctx['num_samples']} samples)", file=sys.stderr)
        r_vi = pipeline.reconstruct(vi_model or model, y, "vi", steps=ctx["vi_steps"], num_samples=ctx["num_samples"],
                                    seed=ctx["seed"], init_w=r_map.w, progress=not ctx["quiet"],
                                    runner=ctx["methods"].get("vi"))
        timings[f"{key}_vi_s"] = time.perf_counter() - t0
    rel = None
    if r_vi is not None and r_vi.samples is not None and r_vi.samples.shape[0] >= 2:
        from brgm_pyro.reliance import prior_image_moments, reliance_from_draws

        t0 = time.perf_counter()
        if ctx.get("prior_var") is None:
            _, var, ess = prior_image_moments(model, DEMO_RELIANCE_PRIOR_DRAWS, seed=ctx["seed"])
            ctx["prior_var"] = (var, ess)
        rel = reliance_from_draws(r_vi.samples, ctx["prior_var"][0], DEMO_RELIANCE_PRIOR_DRAWS, ctx["prior_var"][1])
        timings[f"{key}_reliance_s"] = time.perf_counter() - t0
    return {"label": label, "y": y, "map": r_map, "vi": r_vi, "model": model, "reliance": rel}


DEMO_METRICS_NOTES = {
    "reference": "the clean test faces",
    "range": METRICS_RANGE,
    "vi": "posterior mean of the VI samples; VI is warm-started at the MAP",
    "coverage": "VI: per task, the 50/90/95 % central intervals of the VI draws: coverage of the clean "
                "faces' pixel values and mean width ([0, 1] units), over all faces and per face; "
                "in-painting also over observed and missing pixels",
    "prior_reliance": "per face, the mean over pixels and channels of Var[x|y] / Var[x] (clipped to "
                      "[0, 1]) from the VI draws and seeded prior draws; 0 = decided by the data, 1 = "
                      "by the prior (docs/reliance.md)",
}


def _scores_and_columns(results: dict, face_ids, truth, mask, R: int, C: int) -> tuple[dict, list]:
    """Per task, the scores (metrics.json) and the summary figure's columns."""
    columns, scores = [], {}
    for key, res in results.items():
        scores[key] = _score_task(key, res, face_ids, truth, mask, R, C)
        columns += _task_columns(key, res, scores[key], face_ids, truth, mask, R)
    return scores, columns


def _print_scores(scores: dict, results: dict) -> None:
    for key, ts in scores.items():
        for mname, s in ts.items():
            m = s["mean"].get("reconstruction", s["mean"])
            cov = coverage_line(s.get("coverage"))
            print(f"{results[key]['label']:>24s}  {mname:<16s} PSNR {m['psnr']:6.2f} dB  SSIM {m['ssim']:.3f}  "
                  f"MAE {m['mae']:.4f}" + (f"  {cov}" if cov else ""))


def _run_tasks(G, tasks: list, x, phi, stats, ctx: dict, timings: dict) -> tuple[dict, bool]:
    """MAP and VI of every demo task on the clean faces ``x`` (B, C, R, R); (results by task, whether
    Ctrl-C stopped them)."""
    import torch

    results: dict[str, dict] = {}
    for label, key, corruption in tasks:
        corruption = corruption.to(x.device)
        with torch.no_grad():
            y = corruption(x)
        # MAP and VI on the model brgm reconstruct builds (the library's defaults: the generator's
        # discrepancy term when it has one, the task's pixel noise)
        model = pipeline.build_model(G, corruption, phi=phi, stats=stats, method="map")
        # VI's model as brgm reconstruct --method vi builds it: no perceptual term for methods with draws
        vi_phi = phi if pipeline.default_percept("vi") else None
        vi_model = pipeline.build_model(G, corruption, phi=vi_phi, stats=stats, method="vi")
        results[key] = {**_demo_task(label, key, model, y, ctx, timings, vi_model), "corruption": corruption}
        r_map, r_vi = results[key]["map"], results[key]["vi"]
        if interrupted(r_map) or (r_vi is not None and interrupted(r_vi)):
            return results, True
    return results, False


REAL_GENERATOR = "builtin:fashion32"  # the real-photograph generator shown beside faces64
REAL_FACTOR = 4


def _demo_part(generator: str, device: str, n: int, ctx: dict, timings: dict) -> dict:
    """One generator's part of the demo: its test images, the tasks (MAP and VI as brgm reconstruct
    runs them), scores and the summary figure's columns."""
    import torch

    t0 = time.perf_counter()
    G = pipeline.load_generator(generator, device)
    phi = pipeline.default_phi(G)  # the CLI's and the library's default perceptual network
    R, C = G.img_resolution, G.img_channels
    if generator == REAL_GENERATOR:
        ids, truth = demo_fashion(n)
    else:
        ids = list(DEMO_FACES[:n])
        truth = demo_faces(ids, R, C)  # (B, R, R, C) in [0, 1]
    x = torch.stack([io.to_model(a) for a in truth]).to(device)
    mask = demo_mask(R)
    # fashion32: x4 (an 8x8 observation, docs/real_data.md); otherwise x8 where the size allows
    tasks, factor, blur = _demo_tasks(R, C, mask, REAL_FACTOR if generator == REAL_GENERATOR else None)
    stats = pipeline.latent_stats(G)  # cached beside the bundled weights
    timings["setup_s"] = time.perf_counter() - t0
    results, stopped = _run_tasks(G, tasks, x, phi, stats, ctx, timings)
    t0 = time.perf_counter()
    scores, columns = _scores_and_columns(results, ids, truth, mask, R, C)
    timings["scores_s"] = time.perf_counter() - t0
    return dict(G=G, phi=phi, R=R, C=C, ids=ids, tasks=tasks, factor=factor, blur=blur, results=results,
                stopped=stopped, scores=scores, columns=columns, generator=generator,
                disc=pipeline.default_discrepancy("map", G, "gaussian"))


def _part_record(part: dict) -> dict:
    """run.json's record of one part: settings, models, inference records."""
    res = part["results"]
    return {"generator": {"spec": part["generator"], "class": type(part["G"]).__name__, "resolution": part["R"],
                          "channels": part["C"]},
            "images": [_key(i) for i in part["ids"]], "factor": part["factor"], "deblur_sigma_px": part["blur"],
            "tasks": [k for _, k, _ in part["tasks"]], "percept": part["phi"] is not None,
            "percept_vi": part["phi"] is not None and pipeline.default_percept("vi"),
            "models": {k: r["model"].config() for k, r in res.items()},
            "discrepancy": part["disc"],  # MAP's and VI's model add the discrepancy term (docs/discrepancy.md)
            "inference": {k: {m: ({"stopped": r[m].stopped, "timing": r[m].timing,
                                   "loss_terms": history_summary(r[m].history)} if r[m] is not None else None)
                              for m in ("map", "vi")} for k, r in res.items()}}


def _write_demo(od, parts: list[dict], settings: dict, started: str, timings: dict, device: str) -> None:
    from brgm_pyro import figures

    main = parts[0]
    title = (f"BRGM demo: {{}}, MAP {settings['map_steps']} steps, VI {settings['vi_steps']} steps "
             f"({settings['num_samples']} samples), seed {settings['seed']}")
    metrics = {**DEMO_METRICS_NOTES, "faces": [_key(i) for i in main["ids"]], "tasks": main["scores"]}
    for k, part in enumerate(parts):
        name = "summary.png" if k == 0 else f"summary_{part['generator'].split(':')[-1]}.png"
        figures.summary_figure(od.path(name), part["columns"], title=title.format(part["generator"]),
                               rows=(*figures.SUMMARY_ROWS, "prior reliance"))
        if k:
            metrics[part["generator"].split(":")[-1]] = {"images": [_key(i) for i in part["ids"]],
                                                        "tasks": part["scores"]}
    io.save_json(od.path("metrics.json"), metrics)
    io.save_json(od.path("run.json"), {
        "command": "demo", "argv": sys.argv, "started_utc": started, "settings": settings, "seed": settings["seed"],
        **_part_record(main), "parts": [_part_record(p) for p in parts[1:]],
        "timings_s": timings, "versions": package_versions(), "machine": machine_info(device)})


def run_demo(*, out, faces, steps, map_steps, vi_steps, num_samples, quick, generator, seed, device, overwrite,
             quiet, threads=1, real_data: bool = True) -> int:
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    faces, map_steps, vi_steps, num_samples = _demo_settings(faces, steps, map_steps, vi_steps, num_samples, quick)
    device = pipeline.resolve_device(device)
    set_threads(threads)
    outdir = io.OutputDir(out, overwrite=overwrite)
    timings: dict = {}
    ctx = dict(methods=methods_registry(), map_steps=map_steps, vi_steps=vi_steps, num_samples=num_samples,
               seed=seed, quiet=quiet, faces=faces)
    parts = [_demo_part(generator, device, faces, ctx, timings)]
    if real_data and generator == DEFAULT_GENERATOR and not parts[0]["stopped"]:
        timings["fashion32"] = {}  # real photographs beside the cartoon faces (docs/real_data.md)
        parts.append(_demo_part(REAL_GENERATOR, device, faces, dict(ctx, prior_var=None), timings["fashion32"]))
    settings = {"out": str(out), "faces": faces, "face_ids_test_split": list(DEMO_FACES[:faces]),
                "map_steps": map_steps, "vi_steps": vi_steps, "num_samples": num_samples, "quick": quick,
                "generator": generator, "seed": seed, "device": device, "kernel": "box",
                "mask": "rows 5/16-10/16, columns 1/4-3/4 missing (eyes and nose)", "deblur_padding": "reflect",
                "reliance_prior_draws": DEMO_RELIANCE_PRIOR_DRAWS, "real_data": len(parts) > 1,
                "factor": parts[0]["factor"], "tasks": [k for _, k, _ in parts[0]["tasks"]],
                "deblur_sigma_px": parts[0]["blur"]}
    with io.sigint_deferred():
        with outdir as od:
            timings["total_s"] = time.perf_counter() - t_start
            _write_demo(od, parts, settings, started, timings, device)
    where = outdir.target
    for part in parts:
        if len(parts) > 1:
            print(part["generator"])
        _print_scores(part["scores"], part["results"])
    if any(p["stopped"] for p in parts):
        print(f"interrupted; partial results written to {where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    files = "summary.png" + "".join(f", summary_{p['generator'].split(':')[-1]}.png" for p in parts[1:])
    print(f"demo finished in {timings['total_s']:.0f} s; results in {where}: {files}, metrics.json, run.json")
    return 0
