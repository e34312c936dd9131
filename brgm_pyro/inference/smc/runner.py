r"""``method="smc"``: adaptive tempered SMC over every latent site, R independent runs, the evidence.

    for r in runs (seed + 1000 r):
        z ~ q0 (N draws of the prior program)         beta = 0
        while beta < 1: smc_step (next beta by CESS, reweight, resample, N MALA/HMC moves)
        keep S draws: a systematic resample of the final weighted particles

The log evidence of run r is log Z_r = sum_t log sum_i W_i exp(delta_t rest_i); the runs' estimates
are pooled as log mean_r Z_r (the mean of unbiased estimates is unbiased for Z) with the standard
error from the spread between the R runs (delta method: sd_r(Z_r) / (sqrt(R) mean_r Z_r)); one run
gives no such standard error (None). Beside it, every run's own estimate from its genealogy (Lee &
Whiteley 2018, :func:`~brgm_pyro.inference.smc.tempering.genealogy_variance`), pooled over the runs:
``log_evidence_se_genealogy``. Runs are ArviZ's chains, so R-hat across runs compares independent
SMC answers.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Optional

import numpy as np
import pyro
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.engine import _duration
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.smc.kernels import KERNELS
from brgm_pyro.inference.smc.target import SMCTarget
from brgm_pyro.inference.smc.tempering import RESAMPLERS, SMCState, smc_init, smc_step, systematic_resample

DEFAULT_PARTICLES = 256
DEFAULT_RUNS = 4
DEFAULT_MOVES = 10


def _check(num_particles: int, num_chains: int, num_samples: int, kernel: str, cess: float, resample_ess: float,
           waste_free: Optional[int], moves: int, resampling: str = "systematic") -> None:
    if num_particles < 2:
        raise BRGMError(f"SMC needs at least 2 particles, got {num_particles}")
    if num_chains < 1 or num_samples < 1:
        raise BRGMError(f"num_chains and num_samples must be >= 1, got {num_chains} and {num_samples}")
    if kernel not in KERNELS:
        raise BRGMError(f"SMC kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    if not 0.0 < cess < 1.0 or not 0.0 <= resample_ess <= 1.0:
        raise BRGMError(f"cess must be in (0, 1) and resample_ess in [0, 1]; got {cess} and {resample_ess}")
    if waste_free is not None and (waste_free < 2 or num_particles % waste_free):
        raise BRGMError(f"waste_free is the chain length P >= 2 and must divide num_particles ({num_particles}); "
                        f"got {waste_free}")
    if moves < 1:
        raise BRGMError(f"SMC needs at least one MCMC move per stage, got {moves}")
    if resampling not in RESAMPLERS:
        raise BRGMError(f"SMC resampling must be one of {', '.join(RESAMPLERS)}; got {resampling!r}")


def _one_run(target: SMCTarget, *, num: int, seed: int, max_stages: int, progress: bool, desc: str,
             step_kw: dict) -> tuple[SMCState, list, Optional[str]]:
    """One SMC run from the reference to beta = 1: (final state, stage infos, why it stopped early)."""
    from tqdm.auto import tqdm

    pyro.set_rng_seed(seed)
    state = smc_init(target, num, step_kw["kernel"])
    infos, stopped = [], None
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    bar = tqdm(total=1000, desc=desc, disable=not progress, leave=False, dynamic_ncols=True,
               mininterval=0.1 if tty else 5.0, bar_format="{l_bar}{bar}|{postfix}")
    try:
        while state.beta < 1.0:
            if len(infos) >= max_stages:
                stopped = f"reached max_stages={max_stages} at beta={state.beta:.4g}"
                break
            state, info = smc_step(target, state, **step_kw)
            infos.append(info)
            if not math.isfinite(state.log_evidence):
                raise BRGMError(f"SMC: the log evidence became non-finite at stage {len(infos)} "
                                f"(beta={info.beta:.4g}); check the model's likelihood")
            bar.update(int(round(1000 * info.beta)) - bar.n)
            bar.set_postfix_str(f"beta {info.beta:.4f} ESS {info.ess:.0f} acc {info.acceptance:.2f} "
                                f"eps {info.step_size:.2g} stage {len(infos)}", refresh=False)
    except KeyboardInterrupt:
        stopped = f"interrupted (Ctrl-C) at beta={state.beta:.4g}"
    finally:
        bar.close()
    return state, infos, stopped


def estimate_line(target: SMCTarget, num: int, moves: int, kernel: str, num_leapfrog: int,
                  waste_free: Optional[int], runs: int) -> str:
    """Before the runs: one particle's gradient timed (a prior draw; the RNG is left alone) and what a
    stage costs, ``"SMC: ~9.6 s per particle gradient -> about 7.4 h per stage (256 particles x 10
    moves); the stages adapt (beta 0 -> 1): 4 runs x that per stage"``. The number of stages is the
    posterior's (the bar counts them), so the line states the rate, per stage."""
    g = num_leapfrog if kernel == "hmc" else 1
    per_particle = g * (1 if waste_free else moves) + 1  # the moves' gradients, and the reweighting pass
    with torch.random.fork_rng(devices=[]):
        z = target.reference_draws(1)
        t0 = time.perf_counter()
        target.terms_and_grads(z)
        per_grad = time.perf_counter() - t0
    stage = num * per_particle * per_grad
    what = f"{num} particles x {'waste-free chains' if waste_free else f'{moves} moves'}"
    what += f" x {num_leapfrog} leapfrog steps" if kernel == "hmc" else ""
    return (f"SMC: ~{per_grad:.2g} s per particle gradient -> about {_duration(stage)} per stage ({what}); "
            f"the stages adapt (beta 0 -> 1, the bar counts them): {runs} run{'s' if runs != 1 else ''} x that "
            "per stage")


def pool_log_evidence(log_z: list[float]) -> tuple[float, Optional[float]]:
    """(log mean_r Z_r, its standard error from the runs' spread; None for one run).

    The SE is the larger of two estimates that agree to first order when the runs agree: the delta
    method's sd_r(Z_r) / (sqrt(R) mean_r Z_r), and sd_r(log Z_r) / sqrt(R). When the runs disagree by
    many nats the first saturates near 1 (one run dominates the mean) and would understate the
    uncertainty; the second then says how far apart they are.
    """
    a = np.asarray(log_z, dtype=float)
    m = a.max()
    z = np.exp(a - m)
    est = float(m + np.log(z.mean()))
    if a.size < 2:
        return est, None
    delta = z.std(ddof=1) / (math.sqrt(a.size) * z.mean())
    return est, float(max(delta, a.std(ddof=1) / math.sqrt(a.size)))


def genealogy_se(log_z: list[float], rel_var: list[float]) -> tuple[Optional[float], list[Optional[float]]]:
    """(SE of log mean_r Z_r, each run's SE of log Z_r) from the runs' single-run relative variances
    V_r (Lee & Whiteley 2018): Var(mean Z) / mean(Z)^2 = sum_r Z_r^2 V_r / (sum_r Z_r)^2, and
    Var(log Z_hat) ~ log(1 + V) (V < 0, possible for an unbiased estimate, counts as 0). None where
    a run has no estimate (waste-free, or a run that stopped early)."""
    runs = [None if not math.isfinite(v) else math.sqrt(math.log1p(max(v, 0.0))) for v in rel_var]
    if any(r is None for r in runs) or not log_z:
        return None, runs
    a = np.asarray(log_z, dtype=float)
    z = np.exp(a - a.max())
    pooled = float((z * z * np.maximum(rel_var, 0.0)).sum() / z.sum() ** 2)
    return math.sqrt(math.log1p(pooled)), runs


def _stage_table(infos: list) -> dict[str, list]:
    keys = ("beta", "log_increment", "ess", "resampled", "acceptance", "step_size", "grad_evals",
            "log_evidence_var", "distinct_eves")
    return {k: [getattr(i, k) for i in infos] for k in keys}


def _warnings(log_z: list[float], stages: list[dict], num: int) -> list[str]:
    """Signs that the runs are not to be trusted: their evidence estimates disagree by more than
    1 nat (sd), or a run ended with (nearly) one distinct ancestor's worth of ESS."""
    out = []
    if len(log_z) > 1 and float(np.std(log_z, ddof=1)) > 1.0:
        out.append(f"smc: the runs' log evidence estimates disagree (sd {np.std(log_z, ddof=1):.3g} nats between "
                   f"{len(log_z)} runs): the standard error is not reliable; use more particles or moves")
    eves = [r for r, s in enumerate(stages) if s["distinct_eves"] and 0 < s["distinct_eves"][-1] < 10]
    if eves:
        out.append(f"smc: in runs {eves} the particles' ancestries have coalesced to fewer than 10 initial "
                   "particles, so the single-run (genealogy) standard error is not reliable; use more particles")
    low = [r for r, s in enumerate(stages) if s["ess"] and min(s["ess"]) < 0.05 * num]
    if low:
        out.append(f"smc: runs {low} had an ESS below 5 % of the particles at some stage (weight degeneracy); "
                   "use a higher cess (smaller temperature steps) or more particles")
    return out


def _draws_of(target: SMCTarget, state: SMCState, num: int) -> tuple[dict[str, Tensor], np.ndarray]:
    """``num`` equally weighted draws (systematic resample) and the log weights they carried."""
    idx = systematic_resample(state.log_w, num)
    x = target.constrain(state.particles.z[idx])
    return {k: v.detach() for k, v in x.items()}, state.log_w[idx].cpu().numpy()


def run_smc(model, y: Tensor, *, steps: Optional[int] = None, num_samples: int = 200, seed: int = 0,
            progress: bool = True, num_particles: int = DEFAULT_PARTICLES, num_chains: int = DEFAULT_RUNS,
            kernel: str = "mala", cess: float = 0.5, resample_ess: float = 0.5, waste_free: Optional[int] = None,
            num_leapfrog: int = 8, max_stages: int = 2000, chunk: Optional[int] = None,
            workers: int = 1, resampling: str = "systematic") -> InferenceResult:
    """Adaptive tempered SMC from the prior to the posterior, with the log evidence (module docstring).

    Args:
        model: a :class:`~brgm_pyro.models.brgm.BRGMModel` (every latent site is sampled).
        y: (B, C, h, w) observations (the B images are one joint target).
        steps: MCMC moves per stage (default 10); ignored with ``waste_free``.
        num_samples: draws kept per run (a systematic resample of the N final particles).
        num_particles: N, evaluated through the model as one batch (``chunk`` at a time if set).
        num_chains: R independent runs (seeds ``seed + 1000 r``): ArviZ's chains, the evidence's SE.
        kernel: ``"mala"`` or ``"hmc"`` (``num_leapfrog`` steps); diagonal metric from the particles.
        cess: the conditional-ESS fraction rho that sets each temperature step.
        resample_ess: resample when ESS < resample_ess N.
        waste_free: chain length P for waste-free SMC (N / P chains a stage, every state kept).
        max_stages: stop (and say so in ``stopped``) after this many temperatures.
        workers: accepted for the chains' common interface; only 1 (the particles are one batch already).
        resampling: ``systematic`` (default) or ``multinomial`` (what the genealogy SE assumes exactly;
            with systematic resampling it is conservative).
    Returns:
        :class:`InferenceResult` with ``draws`` site -> (R S, ...), ``samples`` their images, and in
        ``extra``: ``log_evidence``, ``log_evidence_se`` (between runs), ``log_evidence_se_genealogy`` and
        ``log_evidence_se_genealogy_runs`` (single-run estimates), ``log_evidence_runs``, ``stages`` (one
        table per run: beta, log_increment, ess, resampled, acceptance, step_size, grad_evals,
        log_evidence_var, distinct_eves),
        ``sample_stats`` (``log_weight`` (R, S)).
    """
    moves = DEFAULT_MOVES if steps is None else int(steps)
    if workers != 1:
        raise BRGMError("SMC evaluates its particles as one batch and its runs one after another: workers must be 1")
    _check(num_particles, num_chains, num_samples, kernel, cess, resample_ess, waste_free, moves, resampling)
    model.check_observation(y)
    t0 = time.perf_counter()
    target = SMCTarget(model, y, chunk)
    if progress:
        print(estimate_line(target, num_particles, moves, kernel, num_leapfrog, waste_free, num_chains),
              file=sys.stderr, flush=True)
    step_kw = dict(cess=cess, resample_ess=resample_ess, kernel=kernel, num_steps=moves, num_leapfrog=num_leapfrog,
                   waste_free=waste_free, resampling=resampling)
    runs, stopped = [], None
    for r in range(num_chains):
        t_run = time.perf_counter()
        state, infos, why = _one_run(target, num=num_particles, seed=seed + 1000 * r, max_stages=max_stages,
                                     progress=progress, desc=f"smc run {r + 1}/{num_chains}", step_kw=step_kw)
        draws, logw = _draws_of(target, state, num_samples)
        runs.append({"state": state, "infos": infos, "draws": draws, "log_w": logw,
                     "seconds": time.perf_counter() - t_run})
        if why is not None:
            stopped = f"run {r}: {why}"
            break
    settings = dict(num_particles=num_particles, moves=moves, kernel=kernel, cess=cess, resample_ess=resample_ess,
                    waste_free=waste_free, num_leapfrog=num_leapfrog if kernel == "hmc" else None, seed=seed,
                    resampling=resampling)
    return _collect(model, y, target, runs, settings, stopped, t0)


def _collect(model, y: Tensor, target: SMCTarget, runs: list, settings: dict, stopped: Optional[str],
             t0: float) -> InferenceResult:
    """Runs -> InferenceResult (draws run-major, evidence pooled, stage tables, timing)."""
    from brgm_pyro.inference.vi import render_samples

    draws = {k: torch.cat([r["draws"][k] for r in runs]) for k in target.shapes}
    samples = render_samples(model, draws, y, settings["seed"])
    log_z = [r["state"].log_evidence for r in runs]
    est, se = pool_log_evidence(log_z) if stopped is None else (float("nan"), None)
    stages = [_stage_table(r["infos"]) for r in runs]
    rel_var = [s["log_evidence_var"][-1] if s["beta"] else float("nan") for s in stages]
    se_gen, se_gen_runs = genealogy_se(log_z, rel_var) if stopped is None else (None, [None] * len(runs))
    grads = sum(sum(s["grad_evals"]) for s in stages) + len(runs) * settings["num_particles"]
    S = next(iter(draws.values())).shape[0] // len(runs)
    extra = {**settings, "num_chains": len(runs), "num_draws": S, "log_evidence": est, "log_evidence_se": se,
             "log_evidence_se_genealogy": se_gen, "log_evidence_se_genealogy_runs": se_gen_runs,
             "log_evidence_runs": log_z, "warnings": _warnings(log_z, stages, settings["num_particles"]), "stages": stages, "grad_evals": grads,
             "num_stages": [len(s["beta"]) for s in stages],
             "sample_stats": {"log_weight": np.stack([r["log_w"] for r in runs])},
             "kernel_settings": {k: v for k, v in settings.items() if v is not None}}
    total = time.perf_counter() - t0
    timing = {"total_s": total, "sampling_s": total, "run_s": [r["seconds"] for r in runs],
              "steps": sum(extra["num_stages"]), "per_step_s": total / max(grads, 1)}
    history = {"log_evidence": log_z}
    return InferenceResult(method="smc", latents={k: v.mean(0) for k, v in draws.items()}, image=samples.mean(0),
                           draws=draws, samples=samples, history=history, timing=timing, stopped=stopped,
                           extra=extra, image_site=model.image_site)


__all__ = ["run_smc", "estimate_line", "pool_log_evidence", "genealogy_se", "DEFAULT_PARTICLES", "DEFAULT_RUNS"]
