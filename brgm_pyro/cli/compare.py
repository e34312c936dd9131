"""``brgm compare``: which model explains this image best? SMC's evidence under several model choices.

A thin adapter over :func:`brgm_pyro.inference.smc.compare.compare_models`: one INPUT (the observation,
or a clean image with ``--simulate``), every combination of ``--prior`` x ``--noise`` x ``--task``
(comma-separated priors and noise models; ``--task`` repeatable, one corruption variant each, e.g.
``--task deblur:sigma=1 --task none`` for blur present or absent), each model built as ``brgm
reconstruct --method smc`` builds it (:class:`~brgm_pyro.pipeline.run.RunSpec`), each run by SMC with
the same options. Printed: each model's log evidence with its standard error, the differences to the
best with theirs, and the posterior model probabilities (uniform prior over the models); written:
``--out`` (compare.json, atomically). Every option is checked, the generator loaded and every model
built before the first SMC run, so bad input is one line (exit status 2) before any long work.

A ``--task`` value is a registered task with its options, as a step of ``--task compose --parts``:
``NAME[:option=value,...]``; several steps joined by ``+`` are a composition. With ``--simulate`` the
first variant makes the observation; every variant must observe the same shape.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import List, Optional

import typer

from brgm_pyro import io
from brgm_pyro.cli.app import app, user_errors
from brgm_pyro.errors import BRGMError
from brgm_pyro.pipeline.run import MethodChoice, ModelChoice, RunSpec, set_threads

DEFAULT_OUT = Path("compare.json")


def parse_list(text: str, option: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"] (order kept, duplicates refused)."""
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    if not items:
        raise BRGMError(f"{option} needs at least one value (comma-separated)")
    if len(set(items)) != len(items):
        raise BRGMError(f"{option} lists a value twice: {text!r}")
    return items


def task_variant(spec: str, mask: Optional[Path]) -> tuple[str, dict]:
    """A ``--task`` value -> (task name, its options): one step of :func:`parse_parts`, or ``compose``."""
    from brgm_pyro.pipeline.corruption_tasks import parse_parts

    steps = parse_parts(spec)
    if len(steps) > 1:
        return "compose", {"parts": spec}
    name, task, opts = steps[0]
    given = {k: v for k, v in opts.items() if v is not None}
    if mask is not None and any(o.name == "mask" for o in task.options) and not given.get("mask"):
        given["mask"] = [mask]
    return name, given


def build_specs(tasks: list[str], priors: list[str], noises: list[str], mask: Optional[Path], simulate: bool,
                choice: dict, methods: MethodChoice, device: str) -> dict[str, RunSpec]:
    """Every model as a checked :class:`RunSpec` (name ``prior/noise[/task]``); nothing loaded yet."""
    specs = {}
    for t in tasks:
        name, opts = task_variant(t, mask)
        for prior in priors:
            for noise in noises:
                key = f"{prior}/{noise}" + (f"/{t}" if len(tasks) > 1 else "")
                spec = RunSpec(task=name, task_options=dict(opts), model=ModelChoice(prior=prior, noise=noise, **choice),
                               method=methods, simulate=simulate)
                spec.check(device)
                specs[key] = spec
    if mask is not None and not any("mask" in s.task_options for s in specs.values()):
        raise BRGMError("--mask is for in-painting variants; no --task variant takes a mask (add --task inpaint)")
    if len(specs) < 2:
        raise BRGMError("brgm compare needs at least two models: give several --prior, --noise or --task values")
    return specs


def build_models(G, specs: dict[str, RunSpec], inputs: list, seed: int, note) -> tuple[dict, object]:
    """(name -> model, the observation y): each variant's corruption on the first variant's data."""
    from brgm_pyro.pipeline import core

    models, obs0, by_task = {}, None, {}
    for key, spec in specs.items():
        tkey = (spec.task, json.dumps(spec.task_options, sort_keys=True, default=str))
        if tkey not in by_task:
            by_task[tkey] = core.observe(inputs, G, spec.task, simulate=spec.simulate, seed=seed, **spec.task_options)
        obs = by_task[tkey]
        if obs0 is None:
            obs0 = obs
        elif tuple(obs.y.shape) != tuple(obs0.y.shape):
            raise BRGMError(f"model {key} observes shape {tuple(obs.y.shape[1:])} but the first variant's "
                            f"observation has shape {tuple(obs0.y.shape[1:])}; the models must explain the same data")
        models[key] = spec.build(G, obs, note=note)
    return models, obs0.y


def _record(args: dict, specs: dict[str, RunSpec], out: dict, seconds: float) -> dict:
    from dataclasses import asdict

    return {"settings": args, "seconds": seconds,
            "models": {k: {"task": s.task, "task_options": json.loads(json.dumps(s.task_options, default=str)),
                           "model_choice": asdict(s.model), **out["models"][k]} for k, s in specs.items()},
            "rows": out["rows"]}


@app.command()
@user_errors
def compare(
    input: Path = typer.Argument(..., help="The observation image (or a clean image with --simulate).",
                                 show_default=False),
    task: List[str] = typer.Option(["superres"], "--task", help="A corruption variant NAME[:option=value,...] "
                                   "(repeatable: one model per variant), e.g. deblur:sigma=1 and none."),
    mask: Optional[Path] = typer.Option(None, help="In-painting mask for the variants that take one."),
    prior: str = typer.Option("brgm", help="Priors to compare, comma-separated (e.g. brgm,studentt,flow)."),
    noise: str = typer.Option("gaussian", help="Pixel noise models, comma-separated (gaussian,laplace,studentt)."),
    generator: str = typer.Option("builtin:faces64", help="builtin:NAME or a .pkl/.safetensors generator file."),
    sigma_pixel: Optional[str] = typer.Option(None, help="Pixel noise scale (default: the model's), or auto."),
    discrepancy: Optional[str] = typer.Option(None, help="As brgm reconstruct (default: SMC's default, "
                                              "auto for gaussian noise where a scale is stored, else off)."),
    particles: int = typer.Option(256, help="SMC particles per run."),
    chains: int = typer.Option(4, help="Independent SMC runs per model (their spread is the SE of log Z)."),
    steps: Optional[int] = typer.Option(None, help="MCMC moves per SMC stage (default 10)."),
    simulate: bool = typer.Option(False, "--simulate", metavar="", help="INPUT is clean: the first --task "
                                  "variant corrupts it (seeded)."),
    seed: int = typer.Option(0, help="Random seed (the same for every model)."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    out: Path = typer.Option(DEFAULT_OUT, "--out", help="Where to write the comparison (JSON, atomically)."),
    overwrite: bool = typer.Option(False, "--overwrite", metavar="", help="Replace an existing --out file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", metavar="", help="No progress bars."),
) -> None:
    """Compare models of one image by their evidence p(y | model), estimated by adaptive tempered SMC."""
    from brgm_pyro.inference.smc.compare import compare_models, format_comparison
    from brgm_pyro.pipeline import core

    t_start = time.perf_counter()
    device = core.resolve_device(device)
    set_threads(threads)
    if out.is_dir():
        raise BRGMError(f"--out {str(out)!r} is a directory; give a file name such as {DEFAULT_OUT}")
    if out.exists() and not overwrite:
        raise BRGMError(f"{str(out)!r} exists; give another --out or --overwrite")
    io.check_writable_dir(out.expanduser().absolute().parent)
    io.read_image(input, what="input image")
    methods = MethodChoice("smc", steps=steps, num_samples=1, chains=chains, particles=particles)
    choice = {"sigma_pixel": sigma_pixel, "discrepancy": discrepancy}
    specs = build_specs(task, parse_list(prior, "--prior"), parse_list(noise, "--noise"), mask, simulate, choice,
                        methods, device)
    G = core.load_generator_checked(generator, device)
    models, y = build_models(G, specs, [input], seed, note=lambda text: print(text, file=sys.stderr))

    def line(name: str, r: dict) -> None:
        print(f"{name}: log Z {r['log_evidence']:.3f} (runs {', '.join(f'{v:.2f}' for v in r['log_evidence_runs'])}; "
              f"{r['seconds']:.0f} s)", flush=True)
        for w in r["warnings"]:
            print(f"warning: {name}: {w}", file=sys.stderr)

    result = compare_models(models, y.to(G.device()), on_model=line, num_particles=particles, num_chains=chains,
                            steps=steps, num_samples=1, seed=seed, progress=not quiet)
    print(format_comparison(result["rows"]))
    args = {"input": str(input), "tasks": list(task), "priors": prior, "noises": noise, "generator": generator,
            "particles": particles, "chains": chains, "steps": steps, "seed": seed, "simulate": simulate,
            "sigma_pixel": sigma_pixel, "discrepancy": discrepancy, "device": device}
    io.write_text_atomic(out, json.dumps(_record(args, specs, result, time.perf_counter() - t_start), indent=1,
                                         default=str))
    print(f"wrote {out}")
