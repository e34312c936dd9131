"""Time and memory of writing and summarising a 10^4-dimensional posterior.

4 chains x 500 draws of w in W+ with L = 18, d = 512 (9,216 latent dimensions, StyleGAN2-1024's
shape) and 3 x 64 x 64 reconstructions, one image, x8 super-resolution. The generator is a cheap
stand-in (a fixed random linear map of the mean latent, upsampled) so that only the ArviZ
conversion, NetCDF I/O and diagnostics are measured.

    python benchmarks/bench_arviz_10k.py [--chains 4] [--draws 500] [--out /tmp/bench10k]

Prints one line per stage: seconds, peak resident memory of the process so far (ru_maxrss) and
the peak of numpy/Python allocations during the stage (tracemalloc).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brgm_pyro.diagnostics import diagnose, write_plots  # noqa: E402
from brgm_pyro.inference import InferenceResult  # noqa: E402
from brgm_pyro.inference.arviz_io import read_inference_data, to_inference_data, write_inference_data  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import SuperResolution  # noqa: E402
from brgm_pyro.models.generators import Generator  # noqa: E402


class StandIn(Generator):
    num_ws, w_dim, z_dim, img_channels, img_resolution = 18, 512, 512, 3, 64

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.P = torch.randn(512, 3 * 8 * 8, generator=g) / 512 ** 0.5

    def synthesis(self, ws):
        low = (ws.mean(1) @ self.P).reshape(-1, 3, 8, 8)
        return torch.tanh(F.interpolate(low, scale_factor=8, mode="bilinear", align_corners=False))

    def mapping(self, z):
        return z


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def stage(name, fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"{name:<34} {dt:8.2f} s   peak RSS {rss_mb():7.0f} MB   numpy/python peak {peak / 2**20:7.0f} MB",
          flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--draws", type=int, default=500)
    ap.add_argument("--out", default="/tmp/bench10k")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    G = StandIn()
    model = build_model(G, SuperResolution(8, "box"), sigma_pixel=0.05)
    C, S = a.chains, a.draws
    print(f"posterior: {C} chains x {S} draws x {G.num_ws * G.w_dim} latent dims; images 3x64x64; "
          f"torch threads 1", flush=True)

    def make():
        g = torch.Generator().manual_seed(1)
        base = model.init_latents(1)
        sw = base + 0.1 * torch.randn(C * S, 1, G.num_ws, G.w_dim, generator=g)
        with torch.no_grad():
            samples = torch.cat([G(sw[i:i + 100]) for i in range(0, C * S, 100)])
        y = model.predict(base)
        return y, InferenceResult(method="nuts", latents={"w": sw.mean(0)}, image=samples.mean(0), draws={"w": sw},
                                  samples=samples, extra={"num_chains": C, "num_draws": S})

    y, res = stage("draws in memory (w and images)", make)
    idata = stage("to_inference_data", lambda: to_inference_data(res, model, y))
    p = out / "posterior.nc"
    stage("write posterior.nc (no compression)", lambda: write_inference_data(idata, p))
    size = p.stat().st_size / 2**20
    pz = out / "posterior_zlib.nc"
    stage("write posterior.nc (zlib)", lambda: write_inference_data(idata, pz, compress=True))
    print(f"file size: {size:.0f} MB uncompressed, {pz.stat().st_size / 2**20:.0f} MB zlib", flush=True)
    back = stage("read posterior.nc", lambda: read_inference_data(p))
    rep = stage("diagnose (scalar summaries)", lambda: diagnose(back))
    stage("trace + rank plots", lambda: write_plots(back, out))
    rep2 = stage("diagnose --all-coords", lambda: diagnose(back, all_coords=True))
    print(f"max r_hat {rep['max_r_hat']:.3f}, min ess_bulk {rep['min_ess_bulk']:.0f}; over all coords: "
          f"max r_hat {rep2['w_max_r_hat']:.3f}, min ess_bulk {rep2['w_min_ess_bulk']:.0f}", flush=True)
    os.unlink(pz)


if __name__ == "__main__":
    main()
