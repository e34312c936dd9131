"""``brgm reconstruct``: reconstruct a user's own corrupted image(s), or simulate the corruption.

A thin adapter over :mod:`brgm_pyro.pipeline`: options are checked here, files become an
observation (:func:`~brgm_pyro.pipeline.observe`), the model and inference are the library's, and
:func:`~brgm_pyro.pipeline.write_results` writes the folder.

Default mode: each INPUT is the real observation (for x8 super-resolution with a 64x64 generator
an 8x8 image; for in-painting a 64x64 image plus ``--mask``, white = observed, black = missing,
or a PNG whose transparent pixels mark the missing region). With ``--simulate`` each INPUT is a
clean image: it is centre-cropped and resized to the generator, the corruption is applied, and
metrics against it are written.

``--task`` is any registered corruption (:mod:`brgm_pyro.pipeline.tasks`); its options
(``--factor``, ``--kernel``, ``--mask``, ...) are read off the registry when this module is
imported, so a newly registered corruption is a new task without an edit here.

Several INPUTs are reconstructed as one batch. With one INPUT the files go straight into DIR;
with several, each image gets DIR/<file stem>/ and run.json (and metrics.json) stay in DIR. A
directory or a ``.csv`` manifest as the one INPUT is a dataset run (:mod:`brgm_pyro.pipeline.dataset`):
batches of ``--batch-size``, one folder per image, resumable, sharded across torchrun ranks.

Everything is validated before any work, errors are one line with exit status 2, and DIR appears
only when it is complete (it is built in a hidden temporary directory beside it). Ctrl-C during
inference stops the optimiser; what exists is written and the exit status is 130.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, List, Optional, Sequence

import typer

from brgm_pyro import io
from brgm_pyro.cli.app import app, user_errors
from brgm_pyro.errors import BRGMError
from brgm_pyro.memory import parse_size
from brgm_pyro.pipeline import core as _core
from brgm_pyro.pipeline.core import method_traits
from brgm_pyro.pipeline.records import interrupted, latent_lines, machine_info, package_versions
from brgm_pyro.pipeline.run import (MethodChoice, ModelChoice, RunSpec, check_choice, infer_task,  # noqa: F401
                                    model_kwargs_for, set_threads)
from brgm_pyro.pipeline.tasks import get_task, merged_options
from brgm_pyro.pipeline.tasks import tasks as _tasks

DEFAULT_GENERATOR = _core.DEFAULT_GENERATOR
DEVICES = _core.DEVICES
EXIT_INTERRUPTED = 130
# NUTS defaults of the command, for a first try that takes minutes on 2 CPU cores with the bundled
# generator (the library's run_mcmc keeps depth 8 and 200 warm-up draws): at most 2^5 - 1 = 31 gradients
# per draw, on the faces generator every tree reaches depth 5 anyway (docs/mcmc.md), and 50 warm-up
# draws to adapt the step size in the fixed Laplace metric. A publication-grade run: docs/mcmc.md.
CLI_NUTS_MAX_TREE_DEPTH = 5
CLI_NUTS_WARMUP = 50
load_generator_checked = _core.load_generator_checked  # module attributes: tests replace them
methods_registry = _core.methods_registry
default_phi = _core.default_phi


def resolve_device(device: str) -> str:
    return _core.resolve_device(device)


def guarded(fn, *args, **kwargs) -> int:
    """Run ``fn``; Ctrl-C outside inference ends with one line and status 130 (outputs are all or nothing)."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- option checks ---------------------------------------------------------------------------------

def mcmc_cli_defaults(method: str, steps: Optional[int], max_tree_depth: Optional[int],
                      mass: Optional[str] = None) -> tuple[Optional[int], dict]:
    """(warm-up steps, kernel options) the command passes: for a method that builds NUTS trees
    ``--steps`` defaults to :data:`CLI_NUTS_WARMUP` and ``--max-tree-depth`` to
    :data:`CLI_NUTS_MAX_TREE_DEPTH`; other methods keep their own defaults. One-line errors for a
    ``--max-tree-depth`` or ``--mass`` the method has no use for (:class:`MethodChoice`)."""
    traits = _core.method_traits(method, methods_registry())
    MethodChoice(method, mass=mass, max_tree_depth=max_tree_depth)._check_kernel(traits)
    extra = {} if mass is None else {"mass": mass}
    if not traits.tree_depth:
        return steps, extra
    depth = CLI_NUTS_MAX_TREE_DEPTH if max_tree_depth is None else int(max_tree_depth)
    return (CLI_NUTS_WARMUP if steps is None else steps), {"max_tree_depth": depth, **extra}


def check_method_options(*, method: str, steps, num_samples: int, chains, workers: int, device: str, lr,
                         guide: Optional[str] = None) -> None:
    """One-line errors for inference options that make no sense together (:meth:`MethodChoice.check`)."""
    MethodChoice(method, steps=steps, num_samples=num_samples, chains=chains, workers=workers, lr=lr,
                 guide=guide).check(device, methods_registry())


def split_task_options(task: str, given: dict) -> dict:
    """The chosen task's options from the CLI's merged ones; an option of another task is an error."""
    mine = {}
    for key, (opt, users) in TASK_OPTIONS.items():
        v = given.get(key)
        names = [n for t, n in users if t == task]
        if names:
            mine[names[0]] = v
        elif v not in (None, [], ()):
            owners = ", ".join(t for t, _ in users)
            raise BRGMError(f"{opt.flag} is for --task {owners} but --task is {task}; add --task {users[0][0]} "
                            f"or drop {opt.flag}")
    return mine


def _task_options(task_options: Optional[dict], legacy: dict) -> dict:
    """The task's options by name, with the old keyword arguments ``factor``, ``kernel``, ``masks``."""
    given = dict(task_options or {})
    for old, new in (("factor", "factor"), ("kernel", "kernel"), ("masks", "mask")):
        if old in legacy:
            given.setdefault(new, legacy.pop(old))
    given.pop("sigma_pixel", None)
    legacy.pop("sigma_pixel", None)
    if legacy:
        raise TypeError(f"unexpected arguments {sorted(legacy)}")
    return given


def _check_outputs_options(reliance_draws: Optional[int], vgg16, simulate: bool) -> None:
    if reliance_draws is not None and (reliance_draws < 0 or reliance_draws == 1):
        raise BRGMError(f"--reliance-draws must be 0 (no reliance map) or at least 2, got {reliance_draws}")
    if vgg16 is not None:
        if not simulate:
            raise BRGMError("--vgg16 adds LPIPS to metrics.json, which needs --simulate (a clean reference)")
        if not Path(vgg16).is_file():
            raise BRGMError(f"VGG16 weights file {str(vgg16)!r} does not exist; give the path of the VGG16 file")


def _load_model(generator, device, class_index, spec: RunSpec, inputs, seed, timings: dict):
    """Step 2 of :func:`run_reconstruct`: (G, observation, model, phi), timed into ``timings``."""
    t0 = time.perf_counter()
    G = load_generator_checked(generator, device)
    from brgm_pyro.models.generators.loading import choose_class

    choose_class(G, class_index, required=True)  # conditional generators: --class K
    _core._LOADED[G] = {"spec": str(generator)}
    timings["load_generator_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    obs = _core.observe(inputs, G, spec.task, simulate=spec.simulate, seed=seed, **spec.task_options)
    timings["load_inputs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    phi = default_phi(G, generator) if spec.use_percept() and obs.image_observation else None
    model = spec.build(G, obs, phi=phi, note=lambda text: print(text, file=sys.stderr))
    if spec.model.discrepancy is None:  # run.json records what the default resolved to
        spec.model.discrepancy = spec.default_discrepancy(G, obs.corruption)[0]
    timings["build_model_s"] = time.perf_counter() - t0
    return G, obs, model, phi


def _single_spec(task, inputs, given: dict, simulate: bool, percept: bool, choice: ModelChoice,
                 methods: MethodChoice, device: str) -> RunSpec:
    """Step 1 of :func:`run_reconstruct`: the run's specification, checked (nothing loaded yet)."""
    task = infer_task(task, inputs, given, simulate)
    t = get_task(task)
    opts = t.resolve(split_task_options(task, given))
    choice.kernel_width = opts.get("kernel_width", choice.kernel_width)
    choice.simulate_kernel_width = opts.get("simulate_kernel_width", choice.simulate_kernel_width)
    spec = RunSpec(task=task, task_options=opts, model=choice, method=methods, percept=percept, simulate=simulate)
    spec.check(device, methods_registry())
    return spec


def _dataset(inputs, task, given, spec_parts: dict, reliance_draws, methods: MethodChoice, **kw) -> int:
    """A directory or manifest as the one INPUT: the dataset runner with this run's specification."""
    from brgm_pyro.pipeline.dataset import run_dataset_cli

    if reliance_draws is not None:
        raise BRGMError("--reliance-draws is for single runs; dataset runs use the default 512 prior draws")
    if methods.max_tree_depth is not None or methods.mass is not None:
        raise BRGMError("--max-tree-depth and --mass are for single runs; dataset runs use the library's NUTS "
                        "defaults")
    task = task or "superres"
    opts = get_task(task).resolve(split_task_options(task, given))
    spec = RunSpec(task=task, task_options=opts, method=methods, **spec_parts)
    return run_dataset_cli(source=inputs[0], spec=spec, **kw)


def run_reconstruct(*, inputs, task, generator, method, steps, num_samples, seed, device, out, simulate, percept,
                    lr, vgg16, overwrite, quiet, chains=None, threads=None, workers=1, class_index=None,
                    choice: Optional[ModelChoice] = None, task_options: Optional[dict] = None,
                    batch_size: int = 8, reliance_draws: Optional[int] = None, max_tree_depth: Optional[int] = None,
                    mass: Optional[str] = None, guide: Optional[str] = None, max_memory: Optional[str] = None,
                    particles: Optional[int] = None, reweight: Optional[str] = None, **legacy) -> int:
    """The command's body (also called with keyword arguments by tests and scripts).

    ``task_options``: the task's options by name (``factor``, ``kernel``, ``mask``, ...); the old
    keyword arguments ``factor``, ``kernel``, ``masks`` are still accepted in ``legacy``.
    """
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    given = _task_options(task_options, legacy)
    inputs = list(inputs)
    choice = choice or ModelChoice()
    methods = MethodChoice(method, steps=steps, num_samples=num_samples, chains=chains, workers=workers, lr=lr,
                           guide=guide, mass=mass, max_tree_depth=max_tree_depth, particles=particles,
                           reweight=reweight)
    if len(inputs) == 1 and (Path(inputs[0]).is_dir() or Path(inputs[0]).suffix.lower() == ".csv"):
        if max_memory is not None:
            raise BRGMError("--max-memory is for single runs; dataset runs use the device's default budget")
        return _dataset(inputs, task, given, dict(model=choice, percept=percept, simulate=simulate), reliance_draws,
                        methods, generator=generator, seed=seed, device=device, out=out, quiet=quiet,
                        threads=threads, class_index=class_index, batch_size=batch_size, vgg16=vgg16)
    # 1. cheap checks first: nothing is loaded or created before the arguments make sense
    device = resolve_device(device)
    set_threads(threads)
    spec = _single_spec(task, inputs, given, simulate, percept, choice, methods, device)
    runner = methods_registry().get(method)
    steps, kernel_defaults = mcmc_cli_defaults(method, steps, max_tree_depth, mass)
    _check_outputs_options(reliance_draws, vgg16, simulate)
    budget = None if max_memory is None else parse_size(max_memory)  # a bad size: one line, before any work
    outdir = io.OutputDir(out, overwrite=overwrite)  # refuses a bad --out now, before any work
    for p in inputs:  # file problems before the (slower) generator
        io.read_image(p, what="input image")

    # 2. generator, observation, model
    timings: dict[str, float] = {}
    G, obs, model, phi = _load_model(generator, device, class_index, spec, inputs, seed, timings)
    model.max_memory = budget  # batches through G follow it (brgm_pyro.memory; None: the device's default)

    # 3. inference (Ctrl-C inside stops the optimiser and returns what exists)
    extra: dict[str, Any] = {**methods.runner_options(), **kernel_defaults}  # incl. --particles (MethodChoice)
    if not quiet and method_traits(method, methods_registry()).draws:
        _announce_writing(model, obs, methods, reliance_draws)
    t0 = time.perf_counter()
    result = _core.reconstruct(model, obs, method, steps=steps, num_samples=num_samples, seed=seed,
                               progress=not quiet, lr=lr, runner=runner, **extra)
    timings["inference_s"] = time.perf_counter() - t0

    # 4. write everything, atomically, with Ctrl-C held back
    settings = _settings(spec, inputs, generator, methods, steps_given=methods.steps, result=result,
                         kernel_defaults=kernel_defaults, seed=seed, device=device, threads=threads, out=out,
                         phi=phi, vgg16=vgg16, reliance_draws=reliance_draws)
    settings["max_memory"] = max_memory
    settings["particles"] = particles
    return _write_and_report(outdir, obs, result, model, G, generator, settings, started, seed, device, vgg16,
                             timings, t_start, reliance_draws, simulate)


def _announce_writing(model, obs, methods: MethodChoice, reliance_draws: Optional[int]) -> None:
    """Before sampling, the cost of the writing phase that follows it (which the sampler's own
    estimate cannot see): the reliance map's prior renders of G and the renders of every draw, each
    timed here as one forward pass of G (a lower bound: posterior.nc and the diagnostics add to it)."""
    import torch

    from brgm_pyro.reliance import DEFAULT_PRIOR_DRAWS

    prior = DEFAULT_PRIOR_DRAWS if reliance_draws is None else int(reliance_draws)
    traits = method_traits(methods.method, methods_registry())
    chains = (methods.chains or 4) if traits.chains else 1  # run_mcmc's default: 4 chains
    B = int(obs.y.shape[0])
    try:
        with torch.no_grad():
            w = model.init_latents(B).to(model.generator.device())
            model.render(w)  # warm-up call
            t0 = time.perf_counter()
            model.render(w)
            per_image = (time.perf_counter() - t0) / B
    except Exception:  # an estimate must never stop a run
        return
    renders = prior + chains * methods.num_samples * B
    print(f"then writing the outputs: ~{_seconds(renders * per_image)} at least ({prior} prior renders of G for "
          f"reliance.png, {chains * methods.num_samples * B} renders of the draws; posterior.nc adds to it)",
          file=sys.stderr, flush=True)


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 60 else f"{s / 60:.1f} min"


def _settings(spec: RunSpec, inputs, generator, methods: MethodChoice, *, steps_given, result, kernel_defaults,
              seed, device, threads, out, phi, vgg16, reliance_draws) -> dict:
    """run.json's ``settings``: every option of the run as given (and what the defaults resolved to)."""
    t, opts, choice = get_task(spec.task), spec.task_options, spec.model
    settings = {"inputs": [str(p) for p in inputs], "task": spec.task, "factor": None, "kernel": None,
                **t.settings(opts), "masks": [str(m) for m in opts.get("mask", [])], "generator": generator,
                "method": methods.method, "steps": steps_given, "warmup": result.extra.get("warmup"),
                "max_tree_depth": kernel_defaults.get("max_tree_depth"), "mass": methods.mass,
                "num_samples": methods.num_samples, "chains": methods.chains, "seed": seed,
                "device": device, "threads": threads, "workers": methods.workers, "out": str(out),
                "simulate": spec.simulate, "sigma_pixel": choice.sigma_pixel, "model_choice": asdict(choice),
                "percept": bool(spec.use_percept() and phi is not None), "lr": methods.lr,
                "optimiser": {k: v for k, v in result.extra.items() if k in ("lr", "lr_decay", "lr_rampdown")}
                or None, "vgg16": str(vgg16) if vgg16 else None, "reliance_draws": reliance_draws}
    if methods.guide is not None:
        settings["guide"] = methods.guide
    if methods.reweight is not None:
        settings["reweight"] = methods.reweight
    settings.pop("mask", None)
    return settings


def _write_and_report(outdir, obs, result, model, G, generator, settings, started, seed, device, vgg16, timings,
                      t_start, reliance_draws, simulate) -> int:
    """Step 4 of :func:`run_reconstruct`: run.json's record, the result folder, the console lines."""
    record = {"started_utc": started, "settings": settings, "seed": seed,
              "generator": {"spec": generator, "class": type(G).__name__, "resolution": G.img_resolution,
                            "channels": G.img_channels, "num_ws": G.num_ws, "w_dim": G.w_dim},
              "versions": package_versions(), "machine": machine_info(device)}
    from brgm_pyro.pipeline.outputs import write_results

    written = write_results(outdir, obs, result, model, vgg16=str(vgg16) if vgg16 else None, record=record,
                            timings=timings, t_start=t_start, reliance_draws=reliance_draws)
    from brgm_pyro.calibration_table import run_warnings

    scores = written.get("scores") or {}
    return report(written, result, simulate, timings,
                  notes=run_warnings(G, settings, scores.get("coverage") if simulate else None))


def report(written: dict, result, simulate: bool, timings: dict, notes: Sequence[str] = ()) -> int:
    """The console lines after a run; the exit status (130 after Ctrl-C). ``notes``: calibration
    warnings (:func:`brgm_pyro.calibration_table.run_warnings`), one line each."""
    for w in [*written["warnings"], *notes]:
        print(f"warning: {w}", file=sys.stderr)
    where = written["dir"]
    if simulate and written["scores"] is not None:
        m = written["scores"]["mean"]["reconstruction"]
        print(f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}")
        from brgm_pyro.pipeline.coverage import coverage_line

        line = coverage_line(written["scores"].get("coverage"))  # methods with posterior draws
        if line:
            print(line)
    if interrupted(result):
        print(f"interrupted after {result.timing.get('steps')} steps; partial results written to {where}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped:
        print(f"warning: inference stopped early: {result.stopped}", file=sys.stderr)
    for line in latent_lines(result):
        print(line)
    if result.extra.get("log_evidence") is not None:  # SMC
        se, se1 = result.extra.get("log_evidence_se"), result.extra.get("log_evidence_se_genealogy")
        print(f"log evidence {result.extra['log_evidence']:.3f}" + ("" if se is None else f" +- {se:.3f} (SE from "
              f"{len(result.extra['log_evidence_runs'])} runs)")
              + ("" if se1 is None else f"; single-run (genealogy) SE {se1:.3f}"))
    print(f"results written to {where} ({timings['total_s']:.1f} s)")
    return 0


def _methods_help() -> list[str]:
    """Every registered inference method, for --method's help."""
    return methods_registry().names()


def _guides() -> list[str]:
    from brgm_pyro.inference import GUIDES

    return GUIDES.names()


def _priors() -> list[str]:
    from brgm_pyro.models.priors import PRIORS

    return PRIORS.names()

# long help texts of brgm reconstruct (kept out of the option list so it stays readable)
MASS_HELP = ("HMC/NUTS metric: laplace (default from the MAP: the Laplace "
                                       "covariance there) | laplace_warmup (each chain's own, from the mean "
                                       "Laplace precision of 8 of its warm-up draws; for posteriors whose "
                                       "curvature moves, e.g. in-painting) | diag | dense (Pyro's adaptation); "
                                       "docs/mcmc.md.")
REWEIGHT_HELP = ("--method vi: none (default) | psis: the mean, std and intervals use the draws' Pareto-smoothed "
                 "importance weights against the true log joint (PSIS k-hat is reported for every VI run, with a "
                 "warning above 0.7; docs/calibration.md).")
DISCREPANCY_HELP = ("What G cannot draw, x = G(w) + e, e ~ N(0, tau^2): auto "
                                              "(the scale brgm fit-discrepancy stored beside the weights; bundled "
                                              "for builtin:faces64), off, or tau in [-1, 1] units. Default: auto "
                                              "for every method when a scale is stored and the noise is gaussian, "
                                              "else off. It makes the intervals cover real "
                                              "images (docs/discrepancy.md).")


# --- the command -----------------------------------------------------------------------------------------

def _reconstruct(
    inputs: List[Path] = typer.Argument(..., help="Observation image(s) (or clean images with --simulate); "
                                                  "several are reconstructed as one batch; a directory or a "
                                                  ".csv manifest (image[,mask][,task]) is a dataset run.",
                                        show_default=False),
    task: Optional[str] = typer.Option(None, help="A registered corruption (default: inpaint if --mask or "
                                                  "transparency is given, else superres); see the list below."),
    generator: str = typer.Option(DEFAULT_GENERATOR, help="builtin:NAME or a .pkl/.safetensors generator file."),
    class_index: Optional[int] = typer.Option(None, "--class", help="Class K of a conditional generator "
                                              "(required for those): mapping and latent statistics of class K."),
    method: str = typer.Option("map", help=f"Inference method: {' | '.join(_methods_help())} (inla: a learned "
                                           "noise level or kernel width integrated on a grid, with --no-percept; "
                                           "docs/latent_sites.md)."),
    guide: Optional[str] = typer.Option(None, help=f"Variational family of --method vi: {' | '.join(_guides())} "
                                                   "(default normal: independent normals per coordinate; "
                                                   "docs/latent_sites.md)."),
    steps: Optional[int] = typer.Option(None, help="Optimisation steps (MAP, VI), warm-up draws per chain (MCMC) "
                                                   "or moves per stage (SMC) "
                                                   f"(default: the method's; NUTS here: {CLI_NUTS_WARMUP})."),
    num_samples: int = typer.Option(16, help="Posterior samples to draw (per chain for MCMC methods)."),
    chains: Optional[int] = typer.Option(None, help="MCMC chains (MCMC methods only; default: the method's)."),
    max_tree_depth: Optional[int] = typer.Option(None, help=f"NUTS: max tree depth D, at most 2^D - 1 gradients "
                                                 f"per draw (default {CLI_NUTS_MAX_TREE_DEPTH} here, "
                                                 "8 in the library; docs/mcmc.md)."),
    mass: Optional[str] = typer.Option(None, help=MASS_HELP),
    reweight: Optional[str] = typer.Option(None, help=REWEIGHT_HELP),
    particles: Optional[int] = typer.Option(None, help="SMC: particles per run (default 256); --chains: independent "
                                            "runs (default 4), whose spread is the log evidence's standard error."),
    workers: int = typer.Option(1, help="Run this many MCMC chains at once, in separate CPU processes "
                                        "(MCMC methods on the CPU only; same draws as one at a time)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("cpu", help="cpu | cuda (under torchrun: each rank its own GPU)."),
    out: Path = typer.Option(Path("brgm-out"), "--out", help="Output directory (created; must be new or empty; a "
                             "dataset run resumes in it)."),
    simulate: bool = typer.Option(False, "--simulate", metavar="", help="INPUT is a clean image: corrupt it here and score "
                                                             "the reconstruction against it (metrics.json)."),
    sigma_pixel: Optional[str] = typer.Option(None, help="Pixel noise scale in [-1, 1] units (default: the "
                                              "model's), or 'auto' to learn it (a latent with a log-normal "
                                              "hyperprior, posterior in run.json)."),
    noise: str = typer.Option("gaussian", help="Pixel noise model: gaussian | laplace | studentt."),
    noise_per_image: bool = typer.Option(False, "--noise-per-image", metavar="", help="With --sigma-pixel auto: one noise "
                                                                           "level per image instead of one."),
    prior: str = typer.Option("brgm", help=f"Prior on W+: {' | '.join(_priors())}; its options: --prior-option)."),
    prior_option: List[str] = typer.Option([], "--prior-option", help="An option of the prior's factory as "
                                           "KEY=VALUE, repeatable (e.g. --prior rls --prior-option "
                                           "fidelity_scale=0.05; --prior studentt --prior-option df=5)."),
    discrepancy: Optional[str] = typer.Option(None, help=DISCREPANCY_HELP),
    percept: Optional[bool] = typer.Option(None, "--percept/--no-percept", metavar="",
                                           help="Use the generator's perceptual network when it has one (default: "
                                           "on for methods without draws (map), off for methods with draws: their "
                                           "intervals cover without it, docs/calibration.md)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's; MAP with --task none: "
                                                  "a constant 0.2, chosen for W+ inversion)."),
    vgg16: Optional[Path] = typer.Option(None, help="VGG16 weights file: adds LPIPS to metrics.json."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an earlier brgm result in --out."),
    batch_size: int = typer.Option(8, help="Dataset runs: images per batch (one model and one inference each)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's, one per core)."),
    reliance_draws: Optional[int] = typer.Option(None, help="Prior draws (renders of G) behind reliance.png, the "
                                                 "prior-reliance map written with posterior draws (default 512; 0: "
                                                 "none)."),
    max_memory: Optional[str] = typer.Option(None, help="Memory budget for batches through the generator, e.g. "
                                             "8GB: VI particles and rendered draws go through G in chunks that "
                                             "fit it, with the same results (default: 70% of the device's free "
                                             "memory; docs/memory.md)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress bar."),
    **task_options,
) -> None:
    """Reconstruct corrupted image(s) with a deep generative prior (MAP or posterior sampling)."""
    choice = ModelChoice(prior=prior, sigma_pixel=sigma_pixel, noise=noise, noise_per_image=noise_per_image,
                         discrepancy=discrepancy, prior_options=tuple(prior_option))
    code = guarded(run_reconstruct, inputs=inputs, task=task, generator=generator, method=method, guide=guide,
                   reweight=reweight,
                   steps=steps,
                   num_samples=num_samples, chains=chains, seed=seed, workers=workers, device=device, out=out,
                   simulate=simulate, percept=percept, lr=lr, vgg16=vgg16, overwrite=overwrite, quiet=quiet,
                   threads=threads, class_index=class_index, choice=choice, task_options=task_options,
                   batch_size=batch_size, reliance_draws=reliance_draws, max_tree_depth=max_tree_depth,
                   mass=mass, max_memory=max_memory, particles=particles)
    if code:
        raise typer.Exit(code)


def _task_parameters() -> tuple[list, dict]:
    """typer parameters of every task option (read off the corruption registry) and their owners."""
    fixed = set(inspect.signature(_reconstruct).parameters)
    merged = merged_options(_tasks(), reserved=fixed)
    params, owners = [], {}
    for key, (opt, users) in merged.items():
        who = ", ".join(t for t, _ in users)
        ann = List[opt.type] if opt.multiple else Optional[opt.type]
        shown = opt.default is not None and not opt.multiple and opt.type is not bool
        extra = {"metavar": ""} if opt.type is bool else {}  # a flag: it takes no value
        default = typer.Option([] if opt.multiple else None, opt.flag, show_default=False, **extra,
                               help=f"(--task {who}) {opt.help}" + (f" (default {opt.default})" if shown else ""))
        params.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=ann))
        owners[key] = (opt, users)
    return params, owners


def _make_command():
    """The typer command: the fixed options of :func:`_reconstruct` plus every task's options."""
    import functools
    import typing

    params, owners = _task_parameters()
    sig = inspect.signature(_reconstruct)
    fixed = [p for p in sig.parameters.values() if p.kind != inspect.Parameter.VAR_KEYWORD]
    hints = typing.get_type_hints(_reconstruct)

    @functools.wraps(_reconstruct)
    def command(**kwargs):
        return _reconstruct(**kwargs)

    command.__signature__ = sig.replace(parameters=[*fixed, *params])
    command.__annotations__ = {**hints, **{p.name: p.annotation for p in params}}
    del command.__wrapped__  # typer must read our signature, not _reconstruct's
    names = ", ".join(_tasks())
    command.__doc__ = (_reconstruct.__doc__ or "") + f"\n\nTasks (registered corruptions): {names}."
    return command, owners


reconstruct, TASK_OPTIONS = _make_command()
app.command(name="reconstruct")(user_errors(reconstruct))
