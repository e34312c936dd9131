"""Scores and files of a reconstruction: per-image PNGs, metrics, posterior.nc, run.json."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

from brgm_pyro import io

METRICS_RANGE = "images in [0, 1]; PSNR in dB (capped at 100); SSIM: Gaussian window 11, sigma 1.5"


def reliance_for(model, result, prior_draws: Optional[int] = None):
    """The prior-reliance map (:mod:`brgm_pyro.reliance`) of a result with >= 2 posterior draws,
    else None; (map or None, warning line or None): a prior that cannot be sampled only warns.

    ``prior_draws``: generator renders behind the prior variances (default 512; 0: no map). They
    cost 512 forward passes of G (seconds for the bundled 64x64 generator, an hour or more for a
    1024x1024 StyleGAN2 on a CPU) the first time only: the variances are cached per generator and
    prior setting (:func:`brgm_pyro.reliance.prior_image_moments`, ``--reliance-draws``)."""
    from brgm_pyro.reliance import DEFAULT_PRIOR_DRAWS, prior_reliance

    prior_draws = DEFAULT_PRIOR_DRAWS if prior_draws is None else int(prior_draws)
    if result.samples is None or result.samples.shape[0] < 2 or prior_draws == 0:
        return None, None
    from brgm_pyro.errors import BRGMError

    try:
        # the prior's pixel variance is per generator: cached beside its weights (a bar the first time)
        return prior_reliance(model, result, num_prior=prior_draws, cache=True, progress=sys.stderr.isatty()), None
    except BRGMError as e:
        return None, f"reliance.png not written: {e}"


def reliance_of_image(rel, b: int):
    """The map of image ``b`` alone (a RelianceMap with B = 1)."""
    from dataclasses import replace

    return replace(rel, prior_reliance=rel.prior_reliance[b:b + 1], posterior_var=rel.posterior_var[b:b + 1])


def write_image_outputs(out: io.OutputDir, prefix: tuple, obs, b: int, result, reliance=None) -> dict:
    """Write the PNGs of image ``b`` (reconstruction, observed, truth, the task's extra images,
    samples, std, interval90 (the per-pixel width of the 90 % central interval of the draws, in [0, 1]
    units averaged over channels, scaled as std.png) and, given the batch's ``reliance`` map,
    reliance.png); return run.json's entry for it (files written, std and width scales, mean prior
    reliance)."""
    from brgm_pyro import figures

    written = []
    recon = io.from_model(result.mean_image()[b])
    io.save_png(out.path(*prefix, "reconstruction.png"), recon)
    written.append("reconstruction.png")
    observed = io.from_model(obs.y[b]) if obs.image_observation else None
    if observed is not None:
        io.save_png(out.path(*prefix, "observed.png"), observed)
        written.append("observed.png")
    info: dict = {}
    if obs.truth is not None:
        io.save_png(out.path(*prefix, "truth.png"), obs.truth[b])
        written.append("truth.png")
    mask = obs.masks[b] if obs.masks is not None else None
    for name, img in obs.task.extra_outputs(observed, recon, mask).items():
        io.save_png(out.path(*prefix, f"{name}.png"), img)
        written.append(f"{name}.png")
    if result.samples is not None:
        S = result.samples.shape[0]
        imgs = [io.from_model(result.samples[s, b]) for s in range(S)]
        digits = max(3, len(str(S - 1)))
        for s, im in enumerate(imgs):
            io.save_png(out.path(*prefix, "samples", f"sample_{s:0{digits}d}.png"), im)
        written.append(f"samples/ ({S} PNGs)")
        wb = None if result.weights is None else result.weights[:, b].detach().cpu().double().numpy()
        std = figures.std_map(np.stack(imgs), wb)
        img, top = figures.std_png(std)
        io.save_png(out.path(*prefix, "std.png"), img)
        written.append("std.png")
        info["std_png_white_is"] = top
        info["std_mean"] = float(std.mean())
        width = figures.interval_width_map(np.stack(imgs), 0.9, wb)  # same scaling as std.png: max = white
        img, top = figures.std_png(width)
        io.save_png(out.path(*prefix, "interval90.png"), img)
        written.append("interval90.png")
        info["interval90_png_white_is"] = top
        info["interval90_mean"] = float(width.mean())
    if reliance is not None:  # dark: decided by the data, bright: by the prior (docs/reliance.md)
        from brgm_pyro.reliance import save_reliance_png

        one = reliance_of_image(reliance, b)
        save_reliance_png(one, out.path(*prefix, "reliance.png"))
        written.append("reliance.png")
        info["prior_reliance"] = {k: (v[0] if isinstance(v, list) else v) for k, v in one.summary().items()}
    info["files"] = written
    return info


def score_image(obs, b: int, result, vgg16: Optional[str] = None) -> dict:
    """metrics.json's entry for image ``b`` of a simulated observation: the reconstruction, the
    task's extra images (e.g. the in-painting composite), the task's classical baseline and the
    mean over posterior samples, each as PSNR/SSIM/MAE/RMSE (+ LPIPS with a VGG16 file); with >= 2
    posterior draws, ``coverage``: the interval coverage of the clean image (:mod:`brgm_pyro.pipeline.coverage`)."""
    from brgm_pyro import metrics

    truth = obs.truth[b]
    recon = io.from_model(result.mean_image()[b])

    def m(img):
        out = metrics.image_metrics(img, truth)
        if vgg16:
            out["lpips"] = metrics.lpips(img, truth, vgg16)
        return out

    out = {"reconstruction": m(recon)}
    observed = io.from_model(obs.y[b]) if obs.image_observation else None
    mask = obs.masks[b] if obs.masks is not None else None
    for name, img in obs.task.extra_outputs(observed, recon, mask).items():
        out[name] = m(img)
    base = obs.task.baseline(obs.y[b].cpu(), tuple(result.image.shape[1:]))
    if base is not None:  # the baseline anyone could do, e.g. bicubic up-sampling of the observation
        out[base[0]] = metrics.image_metrics(base[1], truth)
    if result.samples is not None:
        per = [metrics.image_metrics(io.from_model(result.samples[s, b]), truth)
               for s in range(result.samples.shape[0])]
        out["samples_mean"] = metrics.summarize(per)
    from brgm_pyro.pipeline.coverage import image_coverage

    cov = image_coverage(result.samples, obs.truth, obs.corruption, b, weights=result.weights)  # None for a MAP (no draws)
    if cov is not None:
        out["coverage"] = cov
    return out


def score(obs, result, vgg16: Optional[str] = None) -> dict:
    """Scores of every image of a simulated observation: ``{"images": {name: ...}, "mean": ...}``, and
    ``coverage`` (over all images; :func:`~brgm_pyro.pipeline.coverage.pooled_coverage`) for a result with draws."""
    from brgm_pyro import metrics

    if obs.truth is None:
        from brgm_pyro.errors import BRGMError

        raise BRGMError("scores need a clean reference: build the observation with simulate=True")
    images = {obs.names[b]: score_image(obs, b, result, vgg16) for b in range(obs.y.shape[0])}
    first = next(iter(images.values()))
    mean = {k: metrics.summarize([s[k] for s in images.values()]) for k in first if k != "coverage"}
    out = {"images": images, "mean": mean}
    if "coverage" in first:  # over every image's pixels together
        from brgm_pyro.pipeline.coverage import pooled_coverage

        out["coverage"] = pooled_coverage([s["coverage"] for s in images.values()], result.samples.shape[0])
    return out


def write_posterior_nc(path: Path, result, model, y, reliance=None, report: Optional[dict] = None) -> Optional[str]:
    """posterior.nc (ArviZ, written atomically) when the method drew samples, with the group
    ``reliance`` when a map is given and ``intervals`` (the 90 % interval width per pixel,
    :func:`~brgm_pyro.pipeline.coverage.interval_dataset`) with >= 2 draws; returns a warning line
    if the export failed (the images are never lost for it), else None. ``report``: a dict that
    receives ``brgm diagnose``'s numbers and warnings for a run of several MCMC chains
    (:func:`convergence_report`)."""
    if result.samples_w is None:
        return None
    from brgm_pyro.inference.arviz_io import to_inference_data, write_inference_data

    try:
        idata = to_inference_data(result, model, y)
        if reliance is not None:
            from brgm_pyro.reliance import add_to_inference_data

            add_to_inference_data(idata, reliance)
        if result.samples is not None and result.samples.shape[0] >= 2:
            from brgm_pyro import azcompat
            from brgm_pyro.pipeline.coverage import interval_dataset

            azcompat.add_group(idata, "intervals", interval_dataset(result.samples, 0.9, result.weights))
        if "psis_log_weights" in result.extra:
            from brgm_pyro import azcompat
            from brgm_pyro.pipeline.coverage import psis_dataset

            azcompat.add_group(idata, "psis", psis_dataset(result))
        write_inference_data(idata, path)
    except Exception as e:  # never lose the images because of the NetCDF export
        return f"posterior.nc not written ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    if report is not None:
        report.update(convergence_report(idata, result))
    return None


def convergence_report(idata, result) -> dict:
    """``brgm diagnose``'s headline numbers and warnings for a run of >= 2 MCMC chains, else {}:
    so that ``brgm reconstruct`` says at once whether its chains agree (run.json ``diagnostics``,
    and a warning line per failed check)."""
    from brgm_pyro.pipeline.core import method_traits

    if not method_traits(result.method).chains or int(result.extra.get("num_chains", 1)) < 2:
        return {}
    from brgm_pyro.diagnostics import diagnose

    try:
        rep = diagnose(idata)
    except Exception as e:  # a diagnostic must never cost the user the run
        return {"warnings": [f"convergence not checked ({type(e).__name__}: {' '.join(str(e).split())[:200]})"]}
    keep = ("max_r_hat", "min_ess_bulk", "min_ess_tail", "divergences", "tree_depth_saturated", "max_tree_depth")
    lines = [f"convergence: {w}" for w in rep["warnings"]]
    if lines:
        lines.append("convergence: `brgm diagnose posterior.nc` draws the trace and rank plots")
    return {"diagnostics": {k: rep[k] for k in keep if k in rep}, "warnings": lines}


def write_results(out, obs, result, model, *, overwrite: bool = False, vgg16: Optional[str] = None,
                  record: Optional[dict] = None, per_image_dirs: Optional[bool] = None,
                  timings: Optional[dict] = None, t_start: Optional[float] = None,
                  reliance_draws: Optional[int] = None) -> dict:
    """Write a whole result folder atomically (it appears only when complete) and return what was
    written: ``{"dir", "images", "scores", "warnings"}``.

    One image: files straight in ``out``; several: ``out/<name>/`` each (``per_image_dirs``
    forces either). ``record``: extra run.json entries (the CLI's settings); run.json always gets
    the task, model, latents and inference records, versions and machine. ``timings`` (seconds),
    if given, gets ``write_s`` and, with ``t_start`` (a ``time.perf_counter()``), ``total_s``.
    ``reliance_draws``: prior draws of the reliance map (:func:`reliance_for`; 0: none).
    """
    import time

    t0 = time.perf_counter()
    from brgm_pyro.pipeline.records import evidence_record, inference_record, machine_info, package_versions

    outdir = out if isinstance(out, io.OutputDir) else io.OutputDir(out, overwrite=overwrite)
    B = obs.y.shape[0]
    split = (B > 1) if per_image_dirs is None else per_image_dirs
    written: dict = {"images": {}, "scores": None, "warnings": list(result.extra.get("warnings", []))}
    rel, w = reliance_for(model, result, reliance_draws)
    if w:
        written["warnings"].append(w)
    with io.sigint_deferred():
        with outdir as od:
            for b in range(B):
                prefix = (obs.names[b],) if split else ()
                written["images"][obs.names[b]] = write_image_outputs(od, prefix, obs, b, result, rel)
            conv: dict = {}
            w = write_posterior_nc(od.path("posterior.nc"), result, model, obs.y.to(model.generator.device()), rel,
                                   report=conv)
            if w:
                written["warnings"].append(w)
            written["warnings"] += conv.get("warnings", [])
            if obs.truth is not None:
                written["scores"] = score(obs, result, vgg16)
                io.save_json(od.path("metrics.json"), {
                    "reference": "the clean input, centre-cropped and resized to the generator",
                    "range": METRICS_RANGE, "task": obs.task.name, "method": result.method, **written["scores"],
                    **({"psis": result.extra["psis"]} if "psis" in result.extra else {}),
                    **{k: v for k, v in evidence_record(result).items() if k != "smc_stages"}})
            run = {"command": "reconstruct", "argv": sys.argv, **(record or {}),
                   "inputs": obs.inputs, "masks": obs.mask_infos,
                   "layout": "one sub-directory per input (file stem)" if split else "files in DIR",
                   "images": written["images"], "model": model.config(), "latents": result.scalar_summary(),
                   "inference": inference_record(result)}
            if conv.get("diagnostics"):
                run["diagnostics"] = conv["diagnostics"]
            run.setdefault("versions", package_versions())
            run.setdefault("machine", machine_info(str(model.generator.device())))
            run["warnings"] = list(run.get("warnings", [])) + written["warnings"]
            if timings is not None:
                timings["write_s"] = time.perf_counter() - t0
                if t_start is not None:
                    timings["total_s"] = time.perf_counter() - t_start
                run["timings_s"] = timings
            io.save_json(od.path("run.json"), run)
    written["dir"] = outdir.target
    return written


__all__ = ["reliance_for", "reliance_of_image", "write_image_outputs", "score_image", "score", "write_posterior_nc", "convergence_report", "write_results", "METRICS_RANGE"]
