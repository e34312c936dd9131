r"""Run MCMC chains on a BRGM model and return an :class:`InferenceResult`.

    w_0^(c) = a draw of N(MAP, P^-1) (``init="laplace"``, default), the MAP (``init="map"``),
              a prior draw (``init="prior"``) or ``init_w``
    for c in chains:  pyro.infer.MCMC(kernel, warmup, num_samples).run(y)   (one after another)

Chains run sequentially in this process by default (deterministic per-chain seeds, the same code
on CPU and GPU: tensors follow ``y``'s device), or ``workers`` at a time in spawned CPU processes
(same draws as the sequential run; see :func:`run_mcmc`). The
result holds ``samples_w`` (C S, B, L, d) flattened chain-major and, in ``extra``:
``num_chains``, ``num_draws``, ``sample_stats`` (name -> numpy (C, S)), ``grad_evals``,
``init_w`` (C, B, L, d), ``map_w`` and the kernel settings.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np
import pyro
import torch
from pyro.infer import MCMC
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.mcmc.hmc import StatsHMC, StatsNUTS
from brgm_pyro.inference.mcmc.langevin import DensePreconditioner, Langevin
from brgm_pyro.inference.result import InferenceResult

SAMPLERS = ("sgld", "psgld", "mala", "hmc", "nuts")
DEFAULT_WARMUP = {"sgld": 200, "psgld": 200, "mala": 200, "hmc": 200, "nuts": 200}
DEFAULT_THIN = {"sgld": 10, "psgld": 10, "mala": 5, "hmc": 1, "nuts": 1}


def make_kernel(method: str, model, *, step_size=None, thin: int = 1, seed: int = 0, **options):
    """The Pyro kernel for ``method`` (one of :data:`SAMPLERS`) on ``model``.

    Langevin methods take :class:`Langevin`'s options (``schedule``, ``auto_scale``, ...);
    ``hmc``/``nuts`` take Pyro's (``adapt_mass_matrix`` (default True), ``full_mass`` (False),
    ``target_accept_prob`` (0.8), ``max_tree_depth`` (NUTS, 8), ``num_steps`` (HMC, 10),
    ``inverse_mass`` (a fixed (D, D) or (D,) inverse mass matrix)).
    """
    if method in ("sgld", "psgld", "mala"):
        kw = dict(step_size="auto" if step_size is None else step_size, thin=thin, seed=seed,
                  metropolis=(method == "mala"),
                  preconditioner="rmsprop" if method == "psgld" else "identity")
        kw.update(options)
        try:
            return Langevin(model, **kw)
        except TypeError as e:
            raise BRGMError(f"bad option for {method}: {e}") from None
    if method in ("hmc", "nuts"):
        kw = dict(adapt_step_size=True, adapt_mass_matrix=True, full_mass=False, target_accept_prob=0.8)
        if method == "nuts":
            kw["max_tree_depth"] = 8  # at most 255 gradients per draw (Pyro's default 10: 1023)
        if step_size is not None:
            kw["step_size"] = float(step_size)
        if method == "hmc":
            kw.setdefault("num_steps", 10)
        kw.update(options)
        try:
            return (StatsHMC if method == "hmc" else StatsNUTS)(model, **kw)
        except TypeError as e:
            raise BRGMError(f"bad option for {method}: {e}") from None
    raise BRGMError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")


def _run_chain(model, y: Tensor, *, method: str, c: int, w0: Tensor, seed: int, warmup: int, num_samples: int,
               thin: int, step_size, kopts: dict, progress: bool) -> dict:
    """One chain: ``{"w": (S, B, L, d) cpu, "infos": [per-draw dict], "grad_evals", "seconds"}``."""
    langevin = method in ("sgld", "psgld", "mala")
    pyro.set_rng_seed(seed)
    kernel = make_kernel(method, model, step_size=step_size, thin=thin if langevin else 1, seed=seed, **kopts)
    infos: list[dict] = []

    def hook(k, params, stage, i):
        if stage.startswith("Sample"):
            infos.append(dict(k.last_info))

    n_run = num_samples if langevin else num_samples * thin
    mcmc = MCMC(kernel, num_samples=n_run, warmup_steps=warmup, initial_params={"w": w0},
                hook_fn=hook, disable_progbar=not progress)
    t0 = time.perf_counter()
    try:
        mcmc.run(y)
    except KeyboardInterrupt:
        raise BRGMError(f"{method} interrupted in chain {c}") from None
    seconds = time.perf_counter() - t0
    w = mcmc.get_samples()["w"].detach()
    if not langevin and thin > 1:
        w, infos = w[thin - 1::thin], infos[thin - 1::thin]
    if not torch.isfinite(w).all():
        raise BRGMError(f"{method} produced non-finite draws in chain {c}; lower --step-size")
    return {"w": w.reshape(num_samples, *w0.shape).cpu(), "infos": infos,
            "grad_evals": int(kernel.num_grad_evals), "seconds": seconds}


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_chains_parallel(model, y: Tensor, jobs: list[dict], workers: int, threads: Optional[int],
                         progress: bool) -> list[dict]:
    """Run ``jobs`` (one per chain) in ``workers`` spawned processes; results in chain order."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if threads is None:
        threads = max(1, torch.get_num_threads() // workers)
    jobs = [{**j, "progress": False} for j in jobs]  # several bars from several processes garble
    ex = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_worker_init, initargs=(int(threads),))
    try:
        futs = [ex.submit(_run_chain, model, y, **j) for j in jobs]
        outs = []
        for f in futs:
            outs.append(f.result())
            if progress:
                c = len(outs) - 1
                print(f"chain {c}: {outs[-1]['grad_evals']} gradients in {outs[-1]['seconds']:.1f} s",
                      file=sys.stderr, flush=True)
        return outs
    except KeyboardInterrupt:
        raise BRGMError(f"{jobs[0]['method']} interrupted") from None
    except BrokenProcessPool:
        raise BRGMError("an MCMC worker process died (out of memory?); use fewer --workers or workers=1") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _initial_latents(model, y: Tensor, init, num_chains: int, seed: int, map_steps: Optional[int],
                     progress: bool, init_jitter: float,
                     map_w: Optional[Tensor] = None) -> tuple[Tensor, Optional[Tensor], float, int]:
    """(C, B, L, d) starting latents, the MAP (or None), seconds and gradient evaluations spent."""
    B = y.shape[0]
    lat = (B, *model.generator.latent_shape)
    w_map, t, grads = None, 0.0, 0
    if isinstance(init, Tensor):
        w0 = init.detach().to(y)
        if w0.shape == lat:
            w0 = w0.expand(num_chains, *lat).clone()
        if tuple(w0.shape) != (num_chains, *lat):
            raise BRGMError(f"init_w must have shape {lat} or {(num_chains, *lat)}; got {tuple(w0.shape)}")
    elif init in ("map", "laplace") and map_w is not None:
        w_map = map_w.detach().to(y)
        if tuple(w_map.shape) != lat:
            raise BRGMError(f"map_w must have shape {lat}; got {tuple(w_map.shape)}")
        w0 = w_map.expand(num_chains, *lat).clone()
    elif init in ("map", "laplace"):
        from brgm_pyro.inference.map import run_map

        t0 = time.perf_counter()
        res = run_map(model, y, steps=map_steps, seed=seed, progress=progress)
        t = time.perf_counter() - t0
        grads = int(res.timing.get("steps", map_steps or 0))
        if res.stopped is not None:
            raise BRGMError(f"the MAP warm start stopped early ({res.stopped}); use --init prior")
        w_map = res.w.detach().to(y)
        w0 = w_map.expand(num_chains, *lat).clone()
    elif init == "prior":
        g = torch.Generator(device="cpu").manual_seed(seed)
        d = model.prior.distribution()
        loc = d.mean.detach().cpu()
        scale = d.stddev.detach().cpu()
        w0 = (loc + scale * torch.randn(num_chains, B, *loc.shape, generator=g)).to(y)
    else:
        raise BRGMError(f"init must be 'map', 'laplace', 'prior' or a tensor of latents; got {init!r}")
    if init_jitter > 0:
        g = torch.Generator(device="cpu").manual_seed(seed + 1)
        scale = model.prior.distribution().stddev.detach().cpu()
        noise = init_jitter * scale * torch.randn(num_chains, B, *scale.shape, generator=g)
        noise[0] = 0.0  # chain 0 starts exactly at the initial point
        w0 = w0 + noise.to(y)
    return w0, w_map, t, grads


def run_mcmc(
    model,
    y: Tensor,
    *,
    method: str = "nuts",
    steps: Optional[int] = None,
    num_samples: int = 200,
    num_chains: int = 4,
    init="laplace",
    init_w: Optional[Tensor] = None,
    init_jitter: float = 0.0,
    map_steps: Optional[int] = None,
    map_w: Optional[Tensor] = None,
    thin: Optional[int] = None,
    step_size=None,
    seed: int = 0,
    progress: bool = True,
    kernel_options: Optional[dict] = None,
    mass: Optional[str] = None,
    laplace_rows: int = 512,
    curvature: Optional[str] = None,
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    **options,
) -> InferenceResult:
    """Sample p(w | y) with ``method`` in ``num_chains`` chains.

    Args:
        model: a :class:`~brgm_pyro.models.brgm.BRGMModel` (any Pyro model with a site ``w`` and
            ``render``/``prior``/``generator`` attributes works).
        y: (B, C, h, w) observations.
        method: ``sgld``, ``psgld``, ``mala``, ``hmc`` or ``nuts``.
        steps: warm-up draws per chain (adaptation: step size, mass matrix, pSGLD preconditioner;
            discarded). Default 200.
        num_samples: kept draws per chain (after thinning).
        num_chains: chains, run one after another (or ``workers`` at a time).
        init: ``"laplace"`` (default: MAP by ``map_steps`` Adam steps, then each chain starts at an
            independent draw of the Laplace approximation N(MAP, P^-1), which is already in the
            typical set; in 10^3 dimensions that is far from the mode), ``"map"`` (every chain
            at the MAP), ``"prior"`` (a draw from the Gaussian part of the prior per chain) or a
            (B, L, d) / (C, B, L, d) tensor (``init_w`` is the same).
        map_w: a MAP computed beforehand (B, L, d), used by ``init="map"|"laplace"`` instead of
            running the optimisation again.
        init_jitter: add ``init_jitter * sigma_prior`` Gaussian noise to chains 1.. (chain 0 is
            left at the initial point) so that R-hat sees dispersed starts.
        thin: Langevin steps per kept draw (default 10 SGLD/pSGLD, 5 MALA), or keep every
            ``thin``-th NUTS/HMC draw (default 1).
        step_size: initial step size (default: ``"auto"`` for Langevin, Pyro's heuristic for HMC/NUTS).
        seed: chain c uses seed ``seed + 1000 c``.
        mass: HMC/NUTS metric: ``"laplace"`` (default with a MAP start: the fixed inverse mass
            matrix is the Laplace covariance at the MAP, see :mod:`~brgm_pyro.inference.mcmc.laplace`),
            ``"diag"`` (Pyro's diagonal adaptation; default otherwise) or ``"dense"`` (Pyro's dense
            adaptation). Langevin methods take ``preconditioner="laplace"`` for the same matrix.
        laplace_rows: backward passes allowed for the Gauss-Newton curvature (sketched above that).
        curvature: ``"gauss_newton"`` (default; M or ``laplace_rows`` backward passes) or
            ``"hessian"`` (exact Hessian at the MAP, D Hessian-vector products).
        workers: run the chains in this many processes at once (CPU only; default 1 = one after
            another in this process). Chain c draws the same numbers either way (its seed is
            ``seed + 1000 c``), so the result equals the sequential run's when the per-process
            thread count is the same. Each worker is a fresh ``spawn``-ed Python process that
            receives the model by pickle (no fork: forking after torch has started threads can
            hang, see docs/mcmc.md); starting one costs a few seconds.
        threads_per_worker: torch threads in each worker (default: this process's threads divided
            by ``workers``, at least 1).
        kernel_options: extra kernel options (see :func:`make_kernel`); unknown top-level options
            are merged in too.
    Returns:
        :class:`InferenceResult` with ``w`` = posterior mean of w, ``image`` = posterior mean of
        G(w), ``samples_w`` (C S, B, L, d), ``samples`` (C S, B, C, H, W), ``history["loss"]`` =
        the potential U = -log p(w, y) of every kept draw, and chain structure in ``extra``.
    """
    from brgm_pyro.inference.vi import render_samples

    if method not in SAMPLERS:
        raise BRGMError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    if num_samples < 1 or num_chains < 1:
        raise BRGMError("num_samples and num_chains must be >= 1")
    if int(workers) < 1:
        raise BRGMError(f"workers must be >= 1, got {workers}")
    if int(workers) > 1 and y.device.type != "cpu":
        raise BRGMError("parallel chains (workers > 1) run on the CPU only; on a GPU use workers=1 "
                        "(the chains then share the device one after another)")
    model.check_observation(y)
    warmup = DEFAULT_WARMUP[method] if steps is None else int(steps)
    thin = DEFAULT_THIN[method] if thin is None else int(thin)
    if thin < 1:
        raise BRGMError(f"thin must be >= 1, got {thin}")
    kopts = {**options, **(kernel_options or {})}
    for k in ("lr", "guide", "num_particles", "hyperprior", "callback", "checkpoint_path", "checkpoint_every"):
        kopts.pop(k, None)  # options meant for MAP/VI runners
    pyro.set_rng_seed(seed)
    t_start = time.perf_counter()
    w0, w_map, t_map, map_grads = _initial_latents(model, y, init_w if init_w is not None else init,
                                                   num_chains, seed, map_steps, progress, init_jitter, map_w)
    if map_w is not None:
        map_grads = 0  # computed by the caller
    langevin = method in ("sgld", "psgld", "mala")
    if mass is None:
        mass = "laplace" if (w_map is not None and not langevin) else "diag"
    if mass not in ("diag", "dense", "laplace"):
        raise BRGMError(f"mass must be 'diag', 'dense' or 'laplace'; got {mass!r}")
    want_laplace = ((mass == "laplace" and not langevin) or (langevin and kopts.get("preconditioner") == "laplace")
                    or (init == "laplace" and init_w is None))
    t_lap, lap_grads = 0.0, 0
    if want_laplace:
        from brgm_pyro.inference.mcmc.laplace import laplace_covariance

        t0 = time.perf_counter()
        info: dict = {}
        if curvature is None:
            curvature = "gauss_newton"
        cov = laplace_covariance(model, y, w_map if w_map is not None else w0[0], max_rows=laplace_rows,
                                 seed=seed, info=info, curvature=curvature)
        t_lap, lap_grads = time.perf_counter() - t0, int(info.get("backward_passes", 0))
        if init == "laplace" and init_w is None:  # each chain starts at a draw of N(MAP, cov)
            g = torch.Generator(device="cpu").manual_seed(seed + 7)
            Lc = torch.linalg.cholesky(cov.double()).float().cpu()
            xi = torch.randn(num_chains, Lc.shape[0], generator=g)
            w0 = w_map.expand_as(w0) + (xi @ Lc.T).reshape(w0.shape).to(w0)
        if langevin and kopts.get("preconditioner") == "laplace":
            kopts["preconditioner"] = DensePreconditioner(cov)
        elif not langevin and mass == "laplace":
            kopts["inverse_mass"] = cov
    elif not langevin and mass == "dense":
        kopts.setdefault("full_mass", True)
    draws, stats, grad_evals, chain_times = [], [], 0, []
    divergences = 0
    jobs = [dict(method=method, c=c, w0=w0[c], seed=seed + 1000 * c, warmup=warmup, num_samples=num_samples,
                 thin=thin, step_size=step_size, kopts=kopts, progress=progress) for c in range(num_chains)]
    workers = max(1, min(int(workers), num_chains))
    if workers == 1:
        outs = [_run_chain(model, y, **job) for job in jobs]
    else:
        outs = _run_chains_parallel(model, y, jobs, workers, threads_per_worker, progress)
    for c, out in enumerate(outs):
        draws.append(out["w"].to(y.device))
        stats.append(out["infos"])
        chain_times.append(out["seconds"])
        grad_evals += out["grad_evals"]
        divergences += sum(bool(i.get("diverging", False)) for i in out["infos"])
    samples_w = torch.cat(draws)  # (C S, B, L, d)
    t_sample = time.perf_counter() - t_start - t_map - t_lap
    samples = render_samples(model, samples_w)
    keys = sorted(set().union(*[set(i) for s in stats for i in s]))
    sample_stats = {k: np.array([[float(i.get(k, np.nan)) for i in s] for s in stats]) for k in keys}
    total = time.perf_counter() - t_start
    history = {"loss": [float(v) for v in sample_stats.get("potential_energy", np.zeros((0,))).reshape(-1)]}
    extra = {
        "num_chains": num_chains, "num_draws": num_samples, "warmup": warmup, "thin": thin, "workers": workers,
        "sample_stats": sample_stats, "grad_evals": grad_evals + map_grads * (1 if w_map is not None else 0) + lap_grads,
        "laplace_grad_evals": lap_grads, "mass": mass if not langevin else None,
        "curvature": curvature if want_laplace else None,
        "sampler_grad_evals": grad_evals, "map_grad_evals": map_grads, "divergences": divergences,
        "init": init if isinstance(init, str) and init_w is None else "value", "init_w": w0.detach().cpu(),
        "map_w": None if w_map is None else w_map.detach().cpu(), "seed": seed,
        "kernel": {"method": method, "step_size": step_size, "mass": mass if not langevin else None,
                   **{k: v for k, v in kopts.items()
                                                               if isinstance(v, (int, float, str, bool))}},
    }
    timing = {"total_s": total, "map_s": t_map, "laplace_s": t_lap, "sampling_s": t_sample, "chain_s": chain_times,
              "steps": warmup + num_samples * thin, "per_step_s": t_sample / max(grad_evals, 1)}
    return InferenceResult(method=method, w=samples_w.mean(0), image=samples.mean(0), samples_w=samples_w,
                           samples=samples, history=history, timing=timing, extra=extra)
