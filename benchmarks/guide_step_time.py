"""Seconds per VI step of the low-rank guides on builtin:faces64, for a batch of 1 and of 4 faces.

``lowrank`` (per image, brgm_pyro.inference.guides) against ``lowrank_joint`` (Pyro's
AutoLowRankMultivariateNormal over the whole batch), rank 10, 4 particles, the paper's hyperprior,
x8 super-resolution, the CLI's model (discrepancy term, perceptual term unless --no-percept). Each
figure: median of ``--steps`` timed loss + backward passes after one warm-up, one thread::

    python benchmarks/guide_step_time.py --steps 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pyro
import torch

from brgm_pyro.data.faces import face_batch
from brgm_pyro.inference.engine import ELBOTerms
from brgm_pyro.inference.sites import init_loc_fn, initial_values
from brgm_pyro.inference.vi import GUIDES
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.pipeline.core import build_model, load_generator


def step_seconds(G, guide: str, B: int, steps: int, percept: bool) -> float:
    """Median seconds of one ELBO loss + backward for ``guide`` on a batch of ``B`` faces."""
    f = SuperResolution(8, "bicubic")
    y = f(face_batch(list(range(B)), "test")[1])
    model = build_model(G, f, phi="default" if percept else None, sigma_pixel=0.05, discrepancy="auto")
    pyro.clear_param_store()
    q = GUIDES.build(guide, model, init_loc_fn(initial_values(model, y, None, None)), 0.05, rank=10)
    q(y)
    elbo = ELBOTerms(model, q, num_particles=4, entropy=True, hyperprior=(0.1, 0.95))
    params = list(q.parameters())
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = elbo(y)
        torch.autograd.grad(loss, params)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--no-percept", action="store_true")
    ap.add_argument("--guides", default="lowrank,lowrank_joint")
    a = ap.parse_args()
    torch.set_num_threads(1)
    G = load_generator("builtin:faces64")
    out = {}
    for guide in a.guides.split(","):
        for B in (1, 4):
            out[f"{guide}/B={B}"] = s = step_seconds(G, guide, B, a.steps, not a.no_percept)
            print(f"{guide:14s} B={B}: {s:.3f} s/step", flush=True)
        print(f"{guide:14s} ratio B=4 / B=1: {out[f'{guide}/B=4'] / out[f'{guide}/B=1']:.1f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
