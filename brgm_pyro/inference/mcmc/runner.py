r"""Run MCMC chains on a BRGM model and return an :class:`InferenceResult`.

    w_0^(c) = a draw of N(MAP, P^-1) (``init="laplace"``, default), the MAP (``init="map"``),
              a prior draw (``init="prior"``) or ``init_w``
    for c in chains:  pyro.infer.MCMC(kernel, warmup, num_samples).run(y)   (one after another)

Chains run sequentially in this process by default (deterministic per-chain seeds, the same code
on CPU and GPU: tensors follow ``y``'s device), or ``workers`` at a time in spawned CPU processes
(same draws as the sequential run; see :func:`run_mcmc`). The
result holds ``draws`` of every latent site (C S, *value shape), flattened chain-major, and, in
``extra``: ``num_chains``, ``num_draws``, ``sample_stats`` (name -> numpy (C, S)), ``grad_evals``,
``init`` (site -> (C, *value shape)), ``map`` (site -> value) and the kernel settings. Chains move in
the unconstrained coordinates of every site (e.g. log sigma for a learned noise level), as Pyro's.

Options of run_mcmc
-------------------

    model: a :class:`~brgm_pyro.models.brgm.BRGMModel`.
    y: (B, C, h, w) observations.
    method: ``sgld``, ``psgld``, ``mala``, ``hmc`` or ``nuts``.
    steps: warm-up draws per chain (adaptation: step size, mass matrix, pSGLD preconditioner;
        discarded). Default 200.
    num_samples: kept draws per chain (after thinning).
    num_chains: chains, run one after another (or ``workers`` at a time).
    init: ``"laplace"`` (default: MAP by ``map_steps`` Adam steps, then each chain starts at an
        independent draw of the Laplace approximation N(MAP, P^-1), which is already in the
        typical set; in 10^3 dimensions that is far from the mode), ``"map"`` (every chain
        at the MAP), ``"prior"`` (each component's own draw of starting points per chain), a
        (B, L, d) / (C, B, L, d) tensor of w, or a dict site -> value (sites not given start at
        their components' initial values). ``init_w`` is the tensor form.
    map_w: a MAP computed beforehand (the latents dict, or w (B, L, d) for a model without
        scalar latents), used by ``init="map"|"laplace"`` instead of optimising again.
    init_jitter: add ``init_jitter * reference scale`` Gaussian noise to w (and init_jitter in
        unconstrained units to the scalars) of chains 1.. (chain 0 is left at the initial
        point) so that R-hat sees dispersed starts.
    thin: Langevin steps per kept draw (default 10 SGLD/pSGLD, 5 MALA), or keep every
        ``thin``-th NUTS/HMC draw (default 1).
    step_size: initial step size (default: ``"auto"`` for Langevin, Pyro's heuristic for HMC/NUTS).
    seed: chain c uses seed ``seed + 1000 c``.
    mass: HMC/NUTS metric: ``"laplace"`` (default with a MAP start: the fixed inverse mass
        matrix is the Laplace covariance at the MAP, see :mod:`~brgm_pyro.inference.mcmc.laplace`),
        ``"laplace_warmup"`` (starts so, then each chain's own fixed metric from the mean Laplace
        precision at ``metric_points`` (8) of its warm-up draws: :mod:`~brgm_pyro.inference.mcmc.remetric`),
        ``"diag"`` (Pyro's diagonal adaptation; default otherwise) or ``"dense"`` (Pyro's dense
        adaptation). Langevin methods take ``preconditioner="laplace"`` for the same matrix.
    laplace_rows: passes allowed for an exact Gauss-Newton curvature, min(M, D) (M observed
        values, D latent coordinates); sketched with this many above it (default
        :data:`~brgm_pyro.inference.mcmc.laplace.DEFAULT_LAPLACE_PASSES`, 1,536).
    curvature: ``"gauss_newton"`` (default; min(M, D) or ``laplace_rows`` passes) or
        ``"hessian"`` (exact Hessian at the MAP, D Hessian-vector products).
    workers: run the chains in this many processes at once (CPU only; default 1 = one after
        another in this process). Chain c draws the same numbers either way (its seed is
        ``seed + 1000 c``), so the result equals the sequential run's when the per-process
        thread count is the same. Each worker is a fresh ``spawn``-ed Python process that
        receives the model by pickle (no fork: forking after torch has started threads can
        hang, see docs/mcmc.md); starting one costs a few seconds.
    threads_per_worker: torch threads in each worker (default: this process's threads divided
        by ``workers``, at least 1).
    kernel_options: extra kernel options (see :func:`make_kernel`); other top-level options
        are merged in too, and a kernel that does not take one refuses it (one line); MAP/VI
        options (``lr``, ``guide``, ...) are refused by name.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import MCMC
from torch.distributions import biject_to
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.mcmc.estimate import time_left_line
from brgm_pyro.inference.mcmc.hmc import StatsHMC, StatsNUTS
from brgm_pyro.inference.mcmc.langevin import DensePreconditioner, Langevin
from brgm_pyro.inference.mcmc.laplace import DEFAULT_LAPLACE_PASSES
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.sites import initial_values
from brgm_pyro.inference.traits import MethodTraits

_LANGEVIN = MethodTraits(draws=True, chains=True, mcmc=True, langevin=True)
#: the samplers and what each can do (registered with these traits: brgm_pyro/inference/mcmc/__init__.py)
SAMPLER_TRAITS = {"sgld": _LANGEVIN, "psgld": _LANGEVIN, "mala": _LANGEVIN,
                  "hmc": MethodTraits(draws=True, chains=True, mcmc=True, mass_matrix=True),
                  "nuts": MethodTraits(draws=True, chains=True, mcmc=True, mass_matrix=True, tree_depth=True)}
SAMPLERS = tuple(SAMPLER_TRAITS)
DEFAULT_WARMUP = {"sgld": 200, "psgld": 200, "mala": 200, "hmc": 200, "nuts": 200}
DEFAULT_THIN = {"sgld": 10, "psgld": 10, "mala": 5, "hmc": 1, "nuts": 1}
LAPLACE_MASSES = ("laplace", "laplace_warmup")  # metrics that start from the Laplace covariance at the MAP
MASS_CHOICES = (*LAPLACE_MASSES, "diag", "dense")  # every metric (option mass) of HMC/NUTS
DEFAULT_MAX_TREE_DEPTH = 8  # the library's NUTS default (the CLI's first-try default is 5: brgm_pyro/cli/reconstruct.py)


def _traits(method: str) -> MethodTraits:
    """The sampler's traits (an unknown name: none, so :func:`make_kernel` refuses it)."""
    return SAMPLER_TRAITS.get(method, MethodTraits())


def make_kernel(method: str, model, *, step_size=None, thin: int = 1, seed: int = 0, **options):
    """The Pyro kernel for ``method`` (one of :data:`SAMPLERS`) on ``model``.

    Langevin methods take :class:`Langevin`'s options (``schedule``, ``auto_scale``, ...);
    ``hmc``/``nuts`` take Pyro's (``adapt_mass_matrix`` (default True), ``full_mass`` (False),
    ``target_accept_prob`` (0.8), ``max_tree_depth`` (NUTS, 8), ``num_steps`` (HMC, 10),
    ``inverse_mass`` (a fixed (D, D) or (D,) inverse mass matrix)).
    """
    if _traits(method).langevin:
        kw = dict(step_size="auto" if step_size is None else step_size, thin=thin, seed=seed,
                  metropolis=(method == "mala"),
                  preconditioner="rmsprop" if method == "psgld" else "identity")
        kw.update(options)
        try:
            return Langevin(model, **kw)
        except TypeError as e:
            raise BRGMError(f"bad option for {method}: {e}") from None
    if _traits(method).mass_matrix:  # Hamiltonian: HMC, or NUTS when it builds trees
        nuts = _traits(method).tree_depth
        kw = dict(adapt_step_size=True, adapt_mass_matrix=True, full_mass=False, target_accept_prob=0.8)
        if nuts:
            kw["max_tree_depth"] = DEFAULT_MAX_TREE_DEPTH  # at most 255 gradients per draw (Pyro's 10: 1023)
        if step_size is not None:
            kw["step_size"] = float(step_size)
        if not nuts:
            kw.setdefault("num_steps", 10)
        kw.update(options)
        try:
            return (StatsNUTS if nuts else StatsHMC)(model, **kw)
        except TypeError as e:
            raise BRGMError(f"bad option for {method}: {e}") from None
    raise BRGMError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")


def _run_chain(model, y: Tensor, *, method: str, c: int, z0: dict, seed: int, warmup: int, num_samples: int,
               thin: int, step_size, kopts: dict, progress: bool, remetric: Optional[dict] = None) -> dict:
    """One chain from unconstrained ``z0``: ``{"draws": site -> (S, ...) cpu, "infos", "grad_evals", "seconds",
    "metric"}``. ``remetric``: the warm-up metric's settings (``mass="laplace_warmup"``, :mod:`.remetric`)."""
    langevin = _traits(method).langevin
    pyro.set_rng_seed(seed)
    t_pre, pre = time.perf_counter(), None
    if remetric is not None:  # parts 1-2 of the warm-up in the MAP's metric, then the chain's own
        from brgm_pyro.inference.mcmc.remetric import run_warmup_metric

        z0, inv, warmup, pre = run_warmup_metric(
            lambda inv: make_kernel(method, model, step_size=step_size, seed=seed,
                                    **(kopts if inv is None else {**kopts, "inverse_mass": inv})),
            model, y, z0=z0, warmup=warmup, seed=seed, progress=progress, **remetric)
        kopts = {**kopts, "inverse_mass": inv}
    t_pre = time.perf_counter() - t_pre
    kernel = make_kernel(method, model, step_size=step_size, thin=thin if langevin else 1, seed=seed, **kopts)
    infos: list[dict] = []

    def hook(k, params, stage, i):
        if stage.startswith("Sample"):
            infos.append(dict(k.last_info))

    n_run = num_samples if langevin else num_samples * thin
    mcmc = MCMC(kernel, num_samples=n_run, warmup_steps=warmup, initial_params=dict(z0),
                hook_fn=hook, disable_progbar=not progress)
    t0 = time.perf_counter()
    try:
        mcmc.run(y)
    except KeyboardInterrupt:
        # Pyro's MCMC keeps no usable partial chain: the caller records an interruption (exit 130,
        # nothing written for a single run; the batch not finished for a dataset run), not an error
        print(f"{method} interrupted in chain {c}", file=sys.stderr)
        raise
    seconds = time.perf_counter() - t0
    draws = {k: v.detach() for k, v in mcmc.get_samples().items()}
    if not langevin and thin > 1:
        draws, infos = {k: v[thin - 1::thin] for k, v in draws.items()}, infos[thin - 1::thin]
    if not all(torch.isfinite(v).all() for v in draws.values()):
        raise BRGMError(f"{method} produced non-finite draws in chain {c}; lower --step-size")
    return {"draws": {k: v.cpu() for k, v in draws.items()}, "infos": infos, "metric": pre,
            "grad_evals": int(kernel.num_grad_evals) + (pre["grad_evals"] if pre else 0), "seconds": seconds + t_pre}


def _run_chains_sequential(model, y: Tensor, jobs: list[dict], progress: bool) -> list[dict]:
    """Run ``jobs`` (one per chain) one after another here; with ``progress``, the time left after each."""
    outs: list[dict] = []
    for job in jobs:
        outs.append(_run_chain(model, y, **job))
        if progress and len(jobs) > 1:
            print(time_left_line([o["seconds"] for o in outs], len(jobs)), file=sys.stderr, flush=True)
    return outs


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
                print(f"chain {c}: {outs[-1]['grad_evals']} gradients in {outs[-1]['seconds']:.1f} s; "
                      + time_left_line([o["seconds"] for o in outs], len(jobs), workers), file=sys.stderr, flush=True)
        return outs
    except KeyboardInterrupt:  # an interruption, not an error (see _run_chain)
        print(f"{jobs[0]['method']} interrupted", file=sys.stderr)
        raise
    except BrokenProcessPool:
        raise BRGMError("an MCMC worker process died (out of memory?); use fewer --workers or workers=1") from None
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


def _supports(model, y: Tensor) -> dict:
    """site -> its support (from one trace of the model), for the unconstrained coordinates."""
    with poutine.block(), torch.no_grad(), torch.random.fork_rng(devices=[]):
        tr = poutine.trace(model).get_trace(y)
    return {k: tr.nodes[k]["fn"].support for k in model.latent_sites()}


def _unconstrain(values: dict, supports: dict) -> dict:
    return {k: biject_to(supports[k]).inv(v) for k, v in values.items()}


def _constrain(values: dict, supports: dict) -> dict:
    return {k: biject_to(supports[k])(v) for k, v in values.items()}


def _map_start(model, y, init, num_chains, seed, map_steps, progress, map_latents):
    """(MAP latents, seconds, gradients) for init='map'|'laplace'."""
    if map_latents is not None:
        given = map_latents if isinstance(map_latents, dict) else {model.image_site: map_latents}
        return {k: v.detach().to(y) for k, v in initial_values(model, y, given).items()}, 0.0, 0
    from brgm_pyro.inference.map import run_map

    t0 = time.perf_counter()
    res = run_map(model, y, steps=map_steps, seed=seed, progress=progress)
    if res.stopped is not None:
        raise BRGMError(f"the MAP warm start stopped early ({res.stopped}); use --init prior")
    return {k: v.detach() for k, v in res.latents.items()}, time.perf_counter() - t0, int(res.timing.get("steps", 0))


def _initial_points(model, y: Tensor, init, num_chains: int, seed: int, map_steps, progress: bool,
                    map_latents) -> tuple[dict, Optional[dict], float, int]:
    """Starting points site -> (C, *value shape) (constrained), the MAP (or None), seconds, gradients."""
    B, C = y.shape[0], num_chains
    if isinstance(init, (Tensor, dict)):
        given = init if isinstance(init, dict) else {model.image_site: init}
        unknown = sorted(set(given) - set(model.latent_sites()))
        if unknown:
            raise BRGMError(f"init names unknown latent site(s) {unknown}")
        base = model.init_values(B, device=y.device, skip=list(given))
        out = {}
        for k, site in model.latent_sites().items():
            shape = site.value_shape(B)
            v0 = torch.as_tensor(given[k]).detach().to(y) if k in given else base[k]
            if tuple(v0.shape) == tuple(shape):
                v0 = v0.expand(C, *shape).clone()
            if tuple(v0.shape) != (C, *shape):
                raise BRGMError(f"the starting value of {k!r} must have shape {tuple(shape)} or "
                                f"{(C, *shape)}; got {tuple(v0.shape)}")
            out[k] = v0
        return out, None, 0.0, 0
    if init in ("map", "laplace"):
        lat, t, grads = _map_start(model, y, init, C, seed, map_steps, progress, map_latents)
        return {k: v.expand(C, *v.shape).clone() for k, v in lat.items()}, lat, t, grads
    if init == "prior":
        return {k: v.to(y) for k, v in model.draw_inits(C, B, seed).items()}, None, 0.0, 0
    raise BRGMError(f"init must be 'map', 'laplace', 'prior' or a tensor/dict of latents; got {init!r}")


def _jitter(model, z0: dict, init_jitter: float, seed: int) -> dict:
    """Unconstrained starting points + noise for chains 1.. : w by init_jitter * the prior's reference
    scale, scalar latents by init_jitter in their unconstrained units (log sigma)."""
    if init_jitter <= 0:
        return z0
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    out = {}
    for k in z0:  # insertion order = program order: reproducible
        scale = 1.0
        if k == model.image_site:
            ref = model.prior.reference_scale()
            if ref is None:
                raise BRGMError(f"init_jitter needs a reference scale, and the prior {type(model.prior).__name__} "
                                "states none; use init_jitter=0")
            scale = ref.detach().cpu()
        noise = init_jitter * scale * torch.randn(z0[k].shape, generator=g)
        noise[0] = 0.0  # chain 0 starts exactly at the initial point
        out[k] = z0[k] + noise.to(z0[k])
    return out


def _flat_order(z0: dict) -> list[str]:
    return sorted(z0)  # the order of Pyro's (and our Langevin kernel's) flat vectors


def _laplace_draws(z_map: dict, cov: Tensor, C: int, seed: int) -> dict:
    """C draws of N(z_MAP, cov) in the unconstrained coordinates, chain 0 included."""
    g = torch.Generator(device="cpu").manual_seed(seed + 7)
    Lc = torch.linalg.cholesky(cov.double()).float().cpu()
    xi = (torch.randn(C, Lc.shape[0], generator=g) @ Lc.T)
    out, pos = {}, 0
    for k in _flat_order(z_map):
        v = z_map[k]
        out[k] = v + xi[:, pos:pos + v.numel()].reshape(C, *v.shape).to(v)
        pos += v.numel()
    return out


def _remetric_settings(method, mass, lat_map, warmup, kopts, laplace_rows, curvature) -> Optional[dict]:
    """Checks ``mass`` and, for ``"laplace_warmup"``, the settings of :mod:`.remetric` (else None);
    takes ``metric_points`` out of the kernel options."""
    from brgm_pyro.inference.mcmc.remetric import DEFAULT_METRIC_POINTS, warmup_split

    if mass not in MASS_CHOICES:
        raise BRGMError(f"mass must be 'diag', 'dense', 'laplace' or 'laplace_warmup'; got {mass!r}")
    points = kopts.pop("metric_points", None)
    if mass != "laplace_warmup":
        if points is not None:
            raise BRGMError("metric_points is an option of mass='laplace_warmup'")
        return None
    if not _traits(method).mass_matrix or lat_map is None:
        raise BRGMError("mass='laplace_warmup' is for HMC/NUTS started from a MAP (init='laplace' or 'map')")
    points = DEFAULT_METRIC_POINTS if points is None else int(points)
    if points < 1:
        raise BRGMError(f"metric_points must be >= 1, got {points}")
    warmup_split(warmup, points)  # refuses a warm-up too short for it, before any work
    return {"points": points, "laplace_rows": laplace_rows, "curvature": curvature or "gauss_newton"}


def _metric(model, y, method, mass, init, init_given, lat_map, z0, supports, kopts, laplace_rows,
            curvature, seed, progress: bool = False, per_pass_s: Optional[float] = None
            ) -> tuple[dict, Optional[str], float, int]:
    """Laplace covariance where asked: sets the inverse mass / preconditioner, may redraw the starts.
    With ``progress``, first its time estimate when over a minute (:func:`_laplace_estimate`)."""
    langevin = _traits(method).langevin
    want = ((mass in LAPLACE_MASSES and not langevin) or (langevin and kopts.get("preconditioner") == "laplace")
            or (init == "laplace" and not init_given))
    if not want:
        if not langevin and mass == "dense":
            kopts.setdefault("full_mass", True)
        return z0, None, 0.0, 0
    from brgm_pyro.inference.mcmc.laplace import laplace_covariance

    t0 = time.perf_counter()
    info: dict = {}
    curvature = curvature or "gauss_newton"
    point = lat_map if lat_map is not None else {k: v[0] for k, v in _constrain(z0, supports).items()}
    if progress:
        _laplace_estimate(model, y, z0, laplace_rows, curvature, per_pass_s)
    cov = laplace_covariance(model, y, point, max_rows=laplace_rows, seed=seed, info=info, curvature=curvature)
    if init == "laplace" and not init_given:  # each chain starts at a draw of N(MAP, cov)
        z0 = _laplace_draws(_unconstrain(point, supports), cov, next(iter(z0.values())).shape[0], seed)
    if langevin and kopts.get("preconditioner") == "laplace":
        kopts["preconditioner"] = DensePreconditioner(cov)
    elif not langevin and mass in LAPLACE_MASSES:
        kopts["inverse_mass"] = cov
    return z0, curvature, time.perf_counter() - t0, int(info.get("backward_passes", 0))


def _laplace_estimate(model, y: Tensor, z0: dict, max_rows: int, curvature: str, per_pass_s: Optional[float]) -> None:
    """``"Laplace metric: about 4.1 h (1536 passes x 9.6 s)"`` on stderr when the curvature's passes
    (:func:`~brgm_pyro.inference.mcmc.laplace.curvature_passes`) will take over a minute; a pass is
    timed as one gradient of the potential (the MAP's steps when one ran), which errs long."""
    from brgm_pyro.inference.engine import estimate_line
    from brgm_pyro.inference.mcmc.estimate import time_gradient
    from brgm_pyro.inference.mcmc.laplace import curvature_passes

    passes = curvature_passes(model, y, max_rows, curvature)
    try:
        per_pass_s = per_pass_s or time_gradient(model, y, {k: v[0] for k, v in z0.items()}, repeats=1)
    except Exception:  # an estimate must never stop a run
        return
    line = estimate_line("Laplace metric", passes, per_pass_s)
    if line is not None:
        print(line.replace(" steps x ", " passes x "), file=sys.stderr, flush=True)


def _announce(model, y: Tensor, method: str, z_start: dict, kopts: dict, thin: int, num_chains: int, warmup: int,
              num_samples: int, workers: int, threads_per_worker: Optional[int], progress: bool) -> Optional[dict]:
    """Time a few gradients of the potential at chain 0's unconstrained start ``z_start`` (at the
    per-worker thread count when ``workers`` > 1) and print the run's upper bound (when ``progress``);
    the :func:`~brgm_pyro.inference.mcmc.estimate.mcmc_budget` dict, or None if timing failed."""
    from brgm_pyro.inference.mcmc.estimate import (SAMPLER_OVERHEAD, budget_line, gradients_per_draw, mcmc_budget,
                                                   time_gradient)

    depth = kopts.get("max_tree_depth", DEFAULT_MAX_TREE_DEPTH) if _traits(method).tree_depth else None
    threads = torch.get_num_threads()
    try:
        if workers > 1:
            torch.set_num_threads(int(threads_per_worker or max(1, threads // workers)))
        per_grad = time_gradient(model, y, z_start)
    except Exception:  # an estimate must never stop a run
        return None
    finally:
        torch.set_num_threads(threads)
    per_draw = gradients_per_draw(method, max_tree_depth=depth, num_steps=kopts.get("num_steps"), thin=thin)
    budget = mcmc_budget(per_grad, per_draw, num_chains, warmup, num_samples, workers,  # warm-up draws cost the same
                         SAMPLER_OVERHEAD.get(method, 1.0))
    if progress:
        print(budget_line(method, budget, num_chains, warmup, num_samples, workers, depth), file=sys.stderr, flush=True)
    return budget


def _workers_in_budget(model, workers: int, batch: int, progress: bool) -> int:
    """At most as many worker processes as the model's memory budget holds: each has its own copy of
    G's weights and one chain's forward + backward at ``batch`` images (:mod:`brgm_pyro.memory`).
    One chain alone always runs (its G passes are at batch ``batch`` already)."""
    if workers <= 1:
        return workers
    from brgm_pyro.memory import GRAD_SAFETY, budget_of, footprint, in_use

    weights = sum(t.numel() * t.element_size() for t in model.generator.state_dict().values())
    per_worker = footprint(model.generator)[0] * GRAD_SAFETY * batch + weights
    free = budget_of(model) - in_use(model.generator.device())
    fit = int(max(1, min(workers, free // per_worker)))
    if fit < workers and progress:
        print(f"memory budget: {fit} MCMC worker(s) at a time instead of {workers}", file=sys.stderr, flush=True)
    return fit


def _check_args(method, num_samples, num_chains, workers, y, thin_arg, options) -> int:
    if method not in SAMPLERS:
        raise BRGMError(f"unknown sampler {method!r}; choose one of: {', '.join(SAMPLERS)}")
    if num_samples < 1 or num_chains < 1:
        raise BRGMError("num_samples and num_chains must be >= 1")
    if int(workers) < 1:
        raise BRGMError(f"workers must be >= 1, got {workers}")
    if int(workers) > 1 and y.device.type != "cpu":
        raise BRGMError("parallel chains (workers > 1) run on the CPU only; on a GPU use workers=1 "
                        "(the chains then share the device one after another)")
    wrong = sorted(set(options) & MAP_VI_OPTIONS)
    if wrong:
        raise BRGMError(f"{', '.join(wrong)}: option(s) of MAP/VI, not of {method}")
    thin = DEFAULT_THIN[method] if thin_arg is None else int(thin_arg)
    if thin < 1:
        raise BRGMError(f"thin must be >= 1, got {thin}")
    return thin


MAP_VI_OPTIONS = {"lr", "lr_decay", "lr_rampdown", "guide", "num_particles", "hyperprior", "hyperprior_units",
                  "guide_options", "init_scale", "callback", "checkpoint_path", "checkpoint_every"}


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
    map_w=None,
    thin: Optional[int] = None,
    step_size=None,
    seed: int = 0,
    progress: bool = True,
    kernel_options: Optional[dict] = None,
    mass: Optional[str] = None,
    laplace_rows: Optional[int] = None,
    curvature: Optional[str] = None,
    workers: int = 1,
    threads_per_worker: Optional[int] = None,
    **options,
) -> InferenceResult:
    """Sample the posterior of every latent site with ``method`` in ``num_chains`` chains.

    Args: see the module docstring, "Options of run_mcmc" (model, y (B, C, h, w), method, steps,
    num_samples, num_chains, init, map_w, init_jitter, thin, step_size, seed, mass, laplace_rows,
    curvature, workers, threads_per_worker, kernel_options).
    Returns:
        :class:`InferenceResult` with ``latents`` = posterior means, ``image`` = posterior mean of
        G(w), ``draws`` site -> (C S, ...), ``samples`` (C S, B, C, H, W), ``history["loss"]`` =
        the potential U of every kept draw, and chain structure in ``extra``.
    """
    thin = _check_args(method, num_samples, num_chains, workers, y, thin, options)
    model.check_observation(y)
    warmup = DEFAULT_WARMUP[method] if steps is None else int(steps)
    kopts = {**options, **(kernel_options or {})}
    pyro.set_rng_seed(seed)
    t_start = time.perf_counter()
    given = init_w if init_w is not None else (init if isinstance(init, (Tensor, dict)) else None)
    start, lat_map, t_map, map_grads = _initial_points(model, y, given if given is not None else init, num_chains,
                                                       seed, map_steps, progress, map_w)
    langevin = _traits(method).langevin
    mass = mass or ("laplace" if (lat_map is not None and not langevin) else "diag")
    laplace_rows = laplace_rows or DEFAULT_LAPLACE_PASSES
    remetric = _remetric_settings(method, mass, lat_map, warmup, kopts, laplace_rows, curvature)
    supports = _supports(model, y)
    if remetric is not None:
        remetric["supports"] = supports
    z0 = _jitter(model, _unconstrain(start, supports), init_jitter, seed)
    z0, curvature, t_lap, lap_grads = _metric(model, y, method, mass, init, given is not None, lat_map, z0, supports,
                                              kopts, laplace_rows, curvature, seed, progress,
                                              t_map / map_grads if map_grads else None)
    jobs = [dict(method=method, c=c, z0={k: v[c] for k, v in z0.items()}, seed=seed + 1000 * c, warmup=warmup,
                 num_samples=num_samples, thin=thin, step_size=step_size, kopts=kopts, progress=progress,
                 remetric=remetric) for c in range(num_chains)]
    workers = _workers_in_budget(model, max(1, min(int(workers), num_chains)), y.shape[0], progress)
    t_est = time.perf_counter()
    budget = _announce(model, y, method, {k: v[0] for k, v in z0.items()}, kopts, thin, num_chains, warmup,
                       num_samples, workers, threads_per_worker, progress)
    t_est = time.perf_counter() - t_est
    if workers == 1:
        outs = _run_chains_sequential(model, y, jobs, progress)
    else:
        outs = _run_chains_parallel(model, y, jobs, workers, threads_per_worker, progress)
    t_sample = time.perf_counter() - t_start - t_map - t_lap - t_est
    timing = {"map_s": t_map, "laplace_s": t_lap, "sampling_s": t_sample, "steps": warmup + num_samples * thin}
    if budget is not None:
        timing["estimate_s"] = t_est
        timing.update(seconds_per_gradient_at_start=budget["seconds_per_gradient"],
                      estimated_max_sampling_s=budget["max_seconds"])
    settings = dict(num_chains=num_chains, num_draws=num_samples, warmup=warmup, thin=thin, workers=workers,
                    laplace_grad_evals=lap_grads, map_grad_evals=map_grads, mass=None if langevin else mass,
                    curvature=curvature, init=init if given is None and isinstance(init, str) else "value",
                    init_points={k: v.detach().cpu() for k, v in _constrain(z0, supports).items()},
                    map=None if lat_map is None else {k: v.detach().cpu() for k, v in lat_map.items()}, seed=seed,
                    kernel=_kernel_record(method, step_size, None if langevin else mass, kopts))
    return _collect(model, y, method, outs, settings, timing, t_start)


def _kernel_record(method: str, step_size, mass: Optional[str], kopts: dict) -> dict:
    """The kernel's settings as run.json / the posterior's attrs record them (scalars only)."""
    return {"method": method, "step_size": step_size, "mass": mass,
            **({"max_tree_depth": DEFAULT_MAX_TREE_DEPTH} if _traits(method).tree_depth else {}),
            **{k: v for k, v in kopts.items() if isinstance(v, (int, float, str, bool))}}


def _collect(model, y, method, outs, settings, timing, t_start) -> InferenceResult:
    """Chain outputs -> InferenceResult (draws chain-major, sample stats (C, S), timing)."""
    from brgm_pyro.inference.vi import render_samples

    draws = {k: torch.cat([o["draws"][k] for o in outs]).to(y.device) for k in outs[0]["draws"]}
    stats = [o["infos"] for o in outs]
    grad_evals = sum(o["grad_evals"] for o in outs)
    samples = render_samples(model, draws, y, settings.get("seed", 0))
    keys = sorted(set().union(*[set(i) for s in stats for i in s]))
    sample_stats = {k: np.array([[float(i.get(k, np.nan)) for i in s] for s in stats]) for k in keys}
    history = {"loss": [float(v) for v in sample_stats.get("potential_energy", np.zeros((0,))).reshape(-1)]}
    map_grads = settings["map_grad_evals"] if settings["map"] is not None else 0
    extra = {**settings, "sample_stats": sample_stats, "sampler_grad_evals": grad_evals,
             "grad_evals": grad_evals + map_grads + settings["laplace_grad_evals"],
             "divergences": sum(bool(i.get("diverging", False)) for s in stats for i in s),
             **({"warmup_metric": [o["metric"] for o in outs]} if outs[0].get("metric") else {}),
             "init_w": settings["init_points"][model.image_site],
             "map_w": None if settings["map"] is None else settings["map"][model.image_site]}
    timing = {"total_s": time.perf_counter() - t_start, **timing, "chain_s": [o["seconds"] for o in outs],
              "per_step_s": timing["sampling_s"] / max(grad_evals, 1)}
    latents = {k: v.mean(0) for k, v in draws.items()}
    return InferenceResult(method=method, latents=latents, image=samples.mean(0), draws=draws, samples=samples,
                           history=history, timing=timing, extra=extra, image_site=model.image_site)
