"""Time and peak memory of the StyleGAN2 synthesis network on CPU.

    python benchmarks/bench_stylegan2.py                   # 64, 256, 1024; batch 1; 1 thread
    python benchmarks/bench_stylegan2.py --res 64 --repeats 5 --threads 2

Each (resolution, mode) runs in a fresh subprocess, so that the peak resident memory (ru_maxrss)
belongs to that measurement alone; we report it and the resident memory just before the timed
calls (model + inputs), their difference being the working memory of the pass. Networks are the
config-f shapes NVIDIA uses (w_dim 512, channel_base 32768, channel_max 512; FFHQ 1024 has
18 x 512 latents, 256 px has 14, 64 px has 10), random weights, noise mode 'const', fp32.
Modes: 'forward' (under torch.no_grad, as inference of a fixed latent) and 'forward+backward'
(gradient with respect to the latents only, as in BRGM's MAP/VI: the weights are frozen).
'CPU s' is user + system CPU time of the timed call (median): on a shared machine it is a steadier
figure than wall time; system time is mostly page faults of fresh large allocations.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def run_one(res: int, mode: str, repeats: int, batch: int, threads: int) -> dict:
    import torch

    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    torch.set_num_threads(threads)
    G = StyleGAN2Generator(z_dim=512, w_dim=512, img_resolution=res, img_channels=3, seed=0).eval()
    G.requires_grad_(False)
    ws = torch.randn(batch, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))
    ws.requires_grad_(mode != "forward")

    def step():
        if mode == "forward":
            with torch.no_grad():
                G(ws)
        else:
            ws.grad = None
            G(ws).square().mean().backward()

    step()  # warm-up (allocator, kernels)
    base = _rss_mib()
    times, cpu = [], []
    for _ in range(repeats):
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return dict(res=res, mode=mode, num_ws=G.num_ws, batch=batch, threads=threads, repeats=repeats,
                median_s=sorted(times)[len(times) // 2], min_s=min(times),
                median_cpu_s=sorted(cpu)[len(cpu) // 2],
                rss_before_mib=round(base, 1), peak_rss_mib=round(peak, 1),
                params_m=round(sum(p.numel() for p in G.synthesis_network.parameters()) / 1e6, 2),
                torch=torch.__version__)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--res", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--modes", nargs="+", default=["forward", "forward+backward"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--one", nargs=2, metavar=("RES", "MODE"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(run_one(int(a.one[0]), a.one[1], a.repeats, a.batch, a.threads)))
        return
    rows = []
    print(f"{'res':>5} {'num_ws':>6} {'mode':<17} {'median s':>9} {'min s':>8} {'CPU s':>7} "
          f"{'RSS before MiB':>15} {'peak RSS MiB':>13}")
    for res in a.res:
        for mode in a.modes:
            cmd = [sys.executable, __file__, "--one", str(res), mode, "--repeats", str(a.repeats),
                   "--batch", str(a.batch), "--threads", str(a.threads)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            rows.append(r)
            print(f"{r['res']:>5} {r['num_ws']:>6} {r['mode']:<17} {r['median_s']:>9.3f} {r['min_s']:>8.3f} "
                  f"{r['median_cpu_s']:>7.3f} {r['rss_before_mib']:>15.0f} {r['peak_rss_mib']:>13.0f}",
                  flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
