"""The paper's scale: every method on a 1024 x 1024 config-f StyleGAN2, time and peak memory.

    python benchmarks/paper_scale.py --methods map,vi --tasks superres --max-memory 12GB
    python benchmarks/paper_scale.py --resolution 64 --steps 2        # a quick smoke run of the script
    python benchmarks/paper_scale.py --methods map --precision fp16 --device cuda   # NVIDIA's fp16 setting
    python benchmarks/paper_scale.py --methods sgld,smc --steps 1 --smc-particles 2 \
        --caps map_start=2,laplace=4,thin=1,smc_stages=2     # the per-run pass counts lowered (CPU)
    python benchmarks/paper_scale.py --methods vi --steps 2 --checkpoint   # activation checkpointing

The generator is built with our own code (``StyleGAN2Generator``: 1024 px, w_dim 512, channel_base
32768, channel_max 512, 18 x 512 W+, random weights from ``--seed``; ``--precision fp16`` adds
NVIDIA's ``num_fp16_res=4, conv_clamp=256``: fp16 arithmetic on CUDA only, the clamp on any device) and saved
once as a .safetensors file, so every run loads it as a user's file would be loaded.

Each (task, method) runs in a fresh process (so its peak memory is its own, read with ``os.wait4``)
that first times the generator's own forward + backward at batch 1 (gradient with respect to w,
weights frozen, as BRGM's methods need; median of ``--ref-repeats``) and then runs ``brgm
reconstruct`` in-process through the CLI's own argument parsing (``--simulate`` on a seeded smooth
1024 x 1024 image: x16 super-resolution observes 64 x 64, in-painting the default mask; ``--steps``
steps, 2 posterior draws, 1 chain, no reliance map unless ``--reliance-draws``). Reported per run:
the median step time over the reference forward + backward (per particle for VI), in wall seconds
and in this process's CPU seconds (steps after the first: it also pays one-time checks; with one
thread the CPU figure is the work done, whatever else the machine runs), peak RSS (and
CUDA max allocated), the RSS peak of the reference alone, and the time to the first result
(command start to run.json written). Results go to ``<out>/paper_scale.json`` and a Markdown table
is printed. On a shared machine use ``--threads 1`` (default) and read the ratios: both parts of a
ratio are measured in the same process at the same time.

Every method's cost per gradient is also read off G itself: a forward hook on the synthesis network
records every pass (CPU and wall time, images, with or without gradients; ``events`` in the record,
and ``record_*.progress.json`` while it runs), and ``per_grad_cpu_s`` is the median time from one
forward with gradients to the next forward, per image. Passes made while the reliance map is built
are counted apart (``reliance_generator_images``). ``--caps`` lowers per-run pass counts of the
library (the MCMC methods' MAP start and Laplace passes, thinning, SMC's stages, INLA's Jacobian
passes: :data:`CAPS`) so that a 1024 x 1024 run of a sampler ends in minutes on a CPU; a full run's
cost is those counts times the per-gradient time. ``--skip-done`` keeps records already written.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's brgm_pyro, not another installed one
METHODS = ("map", "vi", "sgld", "mala", "hmc", "nuts", "inla", "smc")


def build_generator(resolution: int, precision: str, seed: int):
    """The config-f network (random seeded weights); fp16: NVIDIA's FFHQ setting."""
    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    fp16 = dict(num_fp16_res=4, conv_clamp=256, precision="fp16") if precision == "fp16" else {}
    return StyleGAN2Generator(z_dim=512, w_dim=512, img_resolution=resolution, img_channels=3, mapping_layers=8,
                              channel_base=32768, channel_max=512, seed=seed, **fp16).eval()


def make_inputs(work: Path, resolution: int, precision: str, seed: int) -> tuple[Path, Path]:
    """(generator file, clean image): written once per (resolution, precision, seed)."""
    import numpy as np
    from PIL import Image

    from brgm_pyro.models.generators.loading import save_generator

    work.mkdir(parents=True, exist_ok=True)
    gpath = work / f"configf_{resolution}_{precision}_seed{seed}.safetensors"
    if not gpath.exists():
        save_generator(build_generator(resolution, precision, seed), gpath)
    img = work / f"clean_{resolution}.png"
    if not img.exists():
        yy, xx = np.mgrid[0:resolution, 0:resolution] / resolution
        rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx), 0.5 + 0.4 * np.cos(5 * yy), 0.5 + 0.3 * np.sin(4 * (xx + yy))], -1)
        Image.fromarray((rgb * 255).astype(np.uint8)).save(img)
    return gpath, img


def reference_step(gpath: Path, device: str, repeats: int) -> dict:
    """Median seconds of G's forward + backward at batch 1 (d/dw of a scalar of the image)."""
    import torch

    from brgm_pyro.models.generators.loading import load_generator

    G = load_generator(str(gpath), device).requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    w = G.mapping(torch.randn(1, G.z_dim, generator=g).to(device)).unsqueeze(1).repeat(1, G.num_ws, 1)
    times, cpu = [], []
    for _ in range(repeats):
        wv = w.detach().clone().requires_grad_(True)
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        G(wv).square().mean().backward()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    del G
    return {"ref_fwd_bwd_s": sorted(times)[len(times) // 2], "ref_times_s": times,
            "ref_fwd_bwd_cpu_s": sorted(cpu)[len(cpu) // 2], "ref_cpu_s": cpu}


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def cli_args(a, gpath: Path, img: Path, task: str, method: str, out: Path) -> list[str]:
    """The `brgm reconstruct` command line of one run."""
    args = ["reconstruct", str(img), "--simulate", "--generator", str(gpath), "--method", method, "--steps",
            str(a.steps), "--num-samples", str(a.num_samples), "--seed", "0", "--device", a.device, "--out", str(out),
            "--overwrite", "--quiet", "--no-percept", "--reliance-draws", str(a.reliance_draws), "--threads",
            str(a.threads)]
    args += ["--task", "superres", "--factor", "16"] if task == "superres" else ["--task", "inpaint"]
    if a.max_memory:
        args += ["--max-memory", a.max_memory]
    if method not in ("map", "vi", "inla"):
        args += ["--chains", "1"]
    if method == "smc":
        args += ["--particles", str(a.smc_particles)]
    return args + a.extra.split()


# Library defaults a CPU benchmark may lower so that a 1024 x 1024 run ends in minutes (``--caps``): every
# one is a per-run cost that is a count of generator passes, recorded in the row with what was passed, so a
# full run's time is the row's per-pass times these counts. The sampler's own steps are never changed.
CAPS = {
    "map_start": "MCMC's MAP warm start: Adam steps (library default 250)",
    "laplace": "passes for the Laplace/Gauss-Newton metric and start (default 1,536; sketched below min(M, D))",
    "thin": "Langevin steps per kept draw (default 10 SGLD, 5 MALA)",
    "smc_stages": "SMC temperatures at most (default 2,000; adaptive)",
    "jacobian_chunks": "INLA's Jacobian: passes computed (the other rows/columns left 0; default all)",
}


def apply_caps(spec: str) -> dict:
    """Lower the library defaults named in ``spec`` ("map_start=2,laplace=4"), in this process only."""
    import functools

    from brgm_pyro.inference import inla, map as map_mod
    from brgm_pyro.inference.mcmc import runner
    from brgm_pyro.inference.smc import runner as smc_runner

    caps = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(",") if kv)}
    unknown = set(caps) - set(CAPS)
    if unknown:
        raise SystemExit(f"unknown caps {sorted(unknown)}; known: {', '.join(CAPS)}")
    if "map_start" in caps:
        map_mod.DEFAULT_MAP_STEPS = caps["map_start"]
    if "laplace" in caps:
        runner.DEFAULT_LAPLACE_PASSES = caps["laplace"]
    if "thin" in caps:
        runner.DEFAULT_THIN = {k: caps["thin"] for k in runner.DEFAULT_THIN}
    if "smc_stages" in caps:
        one = smc_runner._one_run
        smc_runner._one_run = lambda *a, max_stages, **kw: one(*a, max_stages=min(max_stages, caps["smc_stages"]), **kw)
    if "jacobian_chunks" in caps:
        starts = inla._chunk_starts
        inla._chunk_starts = functools.wraps(starts)(lambda n, c: starts(n, c)[:caps["jacobian_chunks"]])
    return caps


class PassCounter:
    """Images through G's synthesis network, in total and while the reliance map is made (a global
    forward hook on every ``SynthesisNetwork``)."""

    def __init__(self, log: Optional[Path] = None) -> None:
        import torch

        from brgm_pyro import reliance
        from brgm_pyro.models.generators.stylegan2 import SynthesisNetwork

        self.total = self.calls = self.reliance = 0
        self._in_reliance = False
        self.events: list = []  # (CPU s, wall s, images, with gradients) at the start of every call

        def hook(module, args):
            if isinstance(module, SynthesisNetwork):
                n = int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 1
                self.total, self.calls = self.total + n, self.calls + 1
                self.reliance += n if self._in_reliance else 0
                self.events.append((time.process_time(), time.perf_counter(), n, torch.is_grad_enabled()))
                if log is not None:  # so that a run stopped from outside still says how far it got
                    log.write_text(json.dumps({"calls": self.calls, "images": self.total, **self.per_gradient()}))

        torch.nn.modules.module.register_module_forward_pre_hook(hook)
        inner = reliance.prior_reliance

        def counted(*a, **kw):
            self._in_reliance = True
            try:
                return inner(*a, **kw)
            finally:
                self._in_reliance = False

        reliance.prior_reliance = counted


    def per_gradient(self, skip: int = 2) -> dict:
        """Median seconds (CPU, wall) from a forward of G with gradients to the next forward of G (of any
        kind), per image: one gradient evaluation of the method (forward, backward and the method's own
        work), whatever the method; the first ``skip`` of them (one-time checks, estimates) left out."""
        ev = self.events
        pairs = [(a, b) for a, b in zip(ev, ev[1:]) if a[3]][skip:]
        cpu = [(b[0] - a[0]) / a[2] for a, b in pairs]
        wall = [(b[1] - a[1]) / a[2] for a, b in pairs]
        med = lambda v: sorted(v)[len(v) // 2] if v else None  # noqa: E731
        return {"per_grad_cpu_s": med(cpu), "per_grad_s": med(wall), "grad_intervals": len(cpu),
                "grad_forwards": sum(e[2] for e in ev if e[3])}


def _with_checkpointing(G):
    G.checkpoint = True
    return G


def _find(d, key):
    """The first value of ``key`` anywhere in a nested dict/list."""
    if isinstance(d, dict):
        if key in d:
            return d[key]
        d = list(d.values())
    if isinstance(d, list):
        for v in d:
            got = _find(v, key)
            if got is not None:
                return got
    return None


def child(a) -> None:
    """One (task, method) run: reference timing, then `brgm reconstruct` in this process."""
    import resource

    import torch

    torch.set_num_threads(a.threads)
    gpath, img = Path(a.generator), Path(a.image)
    rec = {"task": a.task, "method": a.method, "precision": a.precision, "device": a.device, "threads": a.threads,
           "max_memory": a.max_memory, "steps": a.steps}
    rec.update(reference_step(gpath, a.device, a.ref_repeats))
    rec["ref_peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    if a.device.startswith("cuda"):
        rec["ref_cuda_max_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        torch.cuda.reset_peak_memory_stats()
    out = Path(a.out) / f"{a.task}_{a.method}_{a.precision}{a.tag}"
    import typer

    from brgm_pyro.cli import app

    args = cli_args(a, gpath, img, a.task, a.method, out)
    rec["command"] = "brgm " + " ".join(args)
    rec["caps"] = apply_caps(a.caps)
    rec["checkpoint"] = a.checkpoint
    if a.checkpoint:  # the library setting G.checkpoint on the generator the command loads
        from brgm_pyro.cli import reconstruct as cli_reconstruct

        load = cli_reconstruct.load_generator_checked
        cli_reconstruct.load_generator_checked = lambda *x, **kw: _with_checkpointing(load(*x, **kw))
    counter = PassCounter(Path(a.record).with_suffix(".progress.json"))
    t0 = time.perf_counter()
    try:
        code = typer.main.get_command(app).main(args=args, prog_name="brgm", standalone_mode=False)
        rec["ok"] = code in (None, 0)
        if not rec["ok"]:
            rec["error"] = f"exit {code}"
    except BaseException as e:  # a failed run is a row of the table, not the end of the benchmark
        rec["ok"], rec["error"] = False, f"{type(e).__name__}: {e}"
    rec["command_s"] = time.perf_counter() - t0
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").exists() else {}
    timing = _find(run, "timing") or {}
    rec["per_step_s"] = timing.get("per_step_s")
    rec["per_step_cpu_s"] = timing.get("per_step_cpu_s")
    rec["timings_s"] = run.get("timings_s")
    rec["time_to_result_s"] = (run.get("timings_s") or {}).get("total_s")
    rec["generator_images"], rec["generator_calls"] = counter.total, counter.calls
    rec["reliance_generator_images"] = counter.reliance
    rec.update(counter.per_gradient())
    rec["events"] = counter.events  # (CPU s, wall s, images, with gradients) per forward of G
    rec["run_info"] = {k: _find(run, k) for k in ("grad_evals", "jacobian_passes", "laplace_grad_evals",
                                                "map_grad_evals", "stopped", "tree_depth", "num_steps")}
    if a.device.startswith("cuda"):
        rec["cuda_max_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    Path(a.record).write_text(json.dumps(rec, indent=1))


def run_child(a, task: str, method: str, gpath: Path, img: Path) -> dict:
    """Run one child process; its own peak RSS from os.wait4."""
    rec_path = Path(a.out) / f"record_{task}_{method}_{a.precision}{a.tag}.json"
    if a.skip_done and rec_path.exists() and "peak_rss_gib" in json.loads(rec_path.read_text()):
        return json.loads(rec_path.read_text())
    cmd = [sys.executable, __file__, "--child", "--task", task, "--method", method, "--generator", str(gpath),
           "--image", str(img), "--record", str(rec_path)] + [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                                                               if k in PASS_ON]
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, cwd=str(ROOT))
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    rec = json.loads(rec_path.read_text()) if rec_path.exists() else {"task": task, "method": method, "ok": False,
                                                                      "error": f"exit {p.returncode}"}
    rec["peak_rss_gib"] = usage.ru_maxrss / 2 ** 20
    rec["tag"] = a.tag
    rec["process_s"] = time.perf_counter() - t0
    k = a.num_particles if method == "vi" else 1
    if rec.get("per_step_s") and rec.get("ref_fwd_bwd_s"):
        rec["step_over_ref"] = rec["per_step_s"] / k / rec["ref_fwd_bwd_s"]
    if rec.get("per_step_cpu_s") and rec.get("ref_fwd_bwd_cpu_s") and not a.device.startswith("cuda"):
        rec["cpu_step_over_ref"] = rec["per_step_cpu_s"] / k / rec["ref_fwd_bwd_cpu_s"]
    if rec.get("per_grad_cpu_s") and rec.get("ref_fwd_bwd_cpu_s") and not a.device.startswith("cuda"):
        rec["cpu_grad_over_ref"] = rec["per_grad_cpu_s"] / rec["ref_fwd_bwd_cpu_s"]
    rec_path.write_text(json.dumps(rec, indent=1))
    return rec


PASS_ON = ("steps", "num_samples", "device", "out", "max_memory", "threads", "reliance_draws", "precision",
           "ref_repeats", "extra", "num_particles", "resolution", "seed", "caps", "tag", "smc_particles", "checkpoint")


def table(rows: list) -> str:
    """Markdown: wall and CPU seconds per step against G's forward + backward, peaks, first result."""
    head = ("| task | method | precision | per step, wall (s) | G fwd+bwd, wall (s) | ratio, wall | per step, CPU (s) "
            "| G fwd+bwd, CPU (s) | ratio, CPU | peak RSS (GiB) | G fwd+bwd alone, peak RSS (GiB) "
            "| first result (s) | ok |")
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    f = lambda v, p=2: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r.get('precision')} | {f(r.get('per_step_s'), 1)} | "
                     f"{f(r.get('ref_fwd_bwd_s'), 1)} | {f(r.get('step_over_ref'), 3)} | "
                     f"{f(r.get('per_step_cpu_s'), 1)} | {f(r.get('ref_fwd_bwd_cpu_s'), 1)} | "
                     f"{f(r.get('cpu_step_over_ref'), 3)} | {f(r.get('peak_rss_gib'))} | "
                     f"{f(r.get('ref_peak_rss_gib'))} | {f(r.get('time_to_result_s'), 0)} | "
                     f"{'yes' if r.get('ok') else r.get('error', 'no')} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="map,vi", help=f"comma-separated, of {','.join(METHODS)}")
    p.add_argument("--tasks", default="superres,inpaint")
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16"])
    p.add_argument("--resolution", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3, help="optimiser steps (MAP, VI) or warm-up draws (MCMC)")
    p.add_argument("--num-samples", type=int, default=2)
    p.add_argument("--num-particles", type=int, default=4, help="VI's particles (the library default): the ratio's divisor")
    p.add_argument("--max-memory", default="12GB")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reliance-draws", type=int, default=0)
    p.add_argument("--ref-repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extra", default="", help="more `brgm reconstruct` options, e.g. '--mass diag'")
    p.add_argument("--caps", default="", help="lowered library defaults, e.g. 'map_start=2,laplace=4': "
                   + "; ".join(f"{k}: {v}" for k, v in CAPS.items()))
    p.add_argument("--smc-particles", type=int, default=256, help="SMC's --particles (the CLI's default: 256)")
    p.add_argument("--checkpoint", type=lambda v: v.lower() in ("1", "true", "yes"), nargs="?", const=True,
                   default=False, help="activation checkpointing per synthesis block (G.checkpoint = True)")
    p.add_argument("--tag", default="", help="suffix of the record and output names (several settings, one --out)")
    p.add_argument("--skip-done", action="store_true", help="keep records already written (resume)")
    p.add_argument("--out", default="/tmp/brgm_paper_scale")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for k in ("task", "method", "generator", "image", "record"):
        p.add_argument(f"--{k}", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return child(a)
    out = Path(a.out)
    gpath, img = make_inputs(out / "inputs", a.resolution, a.precision, a.seed)
    rows = []
    for task in a.tasks.split(","):
        for method in a.methods.split(","):
            if method not in METHODS:
                raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
            rows.append(run_child(a, task, method, gpath, img))
            print(json.dumps(rows[-1]), flush=True)
    from brgm_pyro.io import atomic_path

    with atomic_path(out / "paper_scale.json") as tmp:
        Path(tmp).write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
