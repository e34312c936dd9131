"""What a run records about itself (run.json): versions, machine, loss histories, learned latents."""

from __future__ import annotations

import os
import platform

import numpy as np

_DISTS = [("brgm-pyro", "brgm_pyro"), ("torch", "torch"), ("pyro-ppl", "pyro"), ("numpy", "numpy"),
          ("scipy", "scipy"), ("pillow", "pillow"), ("arviz", "arviz"), ("typer", "typer"),
          ("matplotlib", "matplotlib"), ("safetensors", "safetensors"), ("xarray", "xarray")]


def package_versions() -> dict:
    """Versions of Python and of the packages a result depends on (None when not installed)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist, key in _DISTS:
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    if out.get("brgm_pyro") is None:
        import brgm_pyro

        out["brgm_pyro"] = brgm_pyro.__version__
    return out


def machine_info(device: str) -> dict:
    """Platform, cores, torch threads and (on CUDA) the GPU's name."""
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
    return info


def history_summary(history: dict) -> dict:
    """First, last and smallest value of every loss term's history."""
    return {k: {"first": v[0], "last": v[-1], "min": float(np.nanmin(v))} for k, v in history.items() if v}


def latent_lines(result) -> list[str]:
    """One console line per learned scalar latent: its estimate, or its posterior mean and 90 % interval."""
    out = []
    for name, row in result.scalar_summary().items():
        def fmt(v):
            return ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else f"{v:.4g}"
        if "mean" in row:
            out.append(f"{name}: posterior mean {fmt(row['mean'])} (90 % interval {fmt(row['q05'])} .. "
                       f"{fmt(row['q95'])})")
        else:
            out.append(f"{name}: estimate {fmt(row['estimate'])}")
    return out


def interrupted(result) -> bool:
    """Whether an inference result stopped because of Ctrl-C."""
    return bool(result.stopped) and "interrupt" in str(result.stopped).lower()


def inference_record(result) -> dict:
    """run.json's ``inference`` entry."""
    rec = {"method": result.method, "stopped": result.stopped, "steps_done": result.timing.get("steps"),
           "timing": result.timing, "loss_terms": history_summary(result.history),
           "num_samples": None if result.samples is None else int(result.samples.shape[0])}
    rec.update(evidence_record(result))
    if "psis" in result.extra:  # VI: PSIS k-hat of its draws, and whether the reported moments use the weights
        rec["psis"] = {**result.extra["psis"], "reweight": result.extra.get("reweight", "none")}
    return rec


def evidence_record(result) -> dict:
    """The log evidence of a method that estimates it (SMC): ``log_evidence``, its standard error
    (from independent runs; None with one run), the single-run (genealogy) standard errors beside it,
    each run's estimate and the temperature ladders; {} else."""
    ex = result.extra
    if "log_evidence" not in ex:
        return {}
    keys = ("log_evidence", "log_evidence_se", "log_evidence_se_genealogy", "log_evidence_se_genealogy_runs",
            "log_evidence_runs")
    out = {k: ex[k] for k in keys if k in ex}
    if "stages" in ex:
        out["smc_stages"] = [{k: s[k] for k in ("beta", "acceptance", "ess", "resampled")} for s in ex["stages"]]
    return out


__all__ = ["package_versions", "machine_info", "history_summary", "latent_lines", "interrupted",
           "inference_record", "evidence_record"]
