"""Where our MAP step's time goes, against the reference loop's, on the same generator (issue #12).

Times, interleaved (so machine noise hits all alike; medians over ``--reps`` rounds), one loss
evaluation plus backward of: our MAP objective (``LogJointTerms`` over an ``AutoDelta`` guide, the
loss ``run_map`` minimises, one model trace per step; and, for comparison, the same loss as an
entropy-free ``ELBOTerms``, a guide trace plus a replayed model trace, which run_map used before
the tenth session) with and without the discrepancy term and without the perceptual term;
the reference BRGM loss restated in ``vs_reference.py``; G + f alone; and the two losses with G
replaced by a constant (what is left is phi, the log densities, Pyro's traces and their backward).
The optimiser step is left out on both sides (it is the same Adam). Run it on an idle machine:
under load the ratios are not to be trusted.

    python benchmarks/step_breakdown.py --task sr8 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import pyro
import torch
from pyro.infer.autoguide import AutoDelta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vs_reference import ReferenceLoss, make_task, reference_stats  # noqa: E402

from brgm_pyro.data.faces import face_batch  # noqa: E402
from brgm_pyro.inference.engine import ELBOTerms, LogJointTerms  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator  # noqa: E402
from brgm_pyro.pipeline.core import default_phi  # noqa: E402


def ours(G, f, phi, y, two_traces: bool = False, **kw):
    """One loss + backward of our MAP objective, as a closure (``two_traces``: as an ELBO)."""
    pyro.clear_param_store()
    model = build_model(G, f, phi=phi, stats=latent_stats_for(G), **kw)
    guide = AutoDelta(model)
    guide(y)
    elbo = ELBOTerms(model, guide, num_particles=1, entropy=False) if two_traces else LogJointTerms(model, guide)

    def step():
        loss, vec = elbo(y)
        loss.backward()
        vec.detach().tolist()
    return step


def timed(fns: dict, reps: int) -> dict:
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="sr8", choices=["sr8", "inpaint"])
    ap.add_argument("--reps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    G = load_generator("builtin:faces64").eval()
    phi = default_phi(G)
    _, x = face_batch([0], "test")
    make_f, _ = make_task(a.task, [0], "bicubic")
    f = make_f(0, 1)
    with torch.no_grad():
        y = f(x)
    w_avg, sigma_s = reference_stats(G)
    ref = ReferenceLoss(G, f, y, phi, w_avg, sigma_s, 0.1, percept=True)
    ws = w_avg.expand(1, G.num_ws, G.w_dim).clone().requires_grad_(True)
    fns = {"ours (the CLI's model)": ours(G, f, phi, y, discrepancy="auto"),
           "ours as an ELBO (2 traces)": ours(G, f, phi, y, two_traces=True, discrepancy="auto"),
           "ours, no discrepancy": ours(G, f, phi, y),
           "ours, no perceptual term": ours(G, f, None, y, discrepancy="auto"),
           "reference": lambda: ref(ws).backward(),
           "G + f alone": lambda: f(G(ws)).sum().backward()}
    res = timed(fns, a.reps)
    with torch.no_grad():
        fixed = G(ws)
    G.forward = types.MethodType(lambda self, w: fixed + 0 * w.sum(), G)  # G stubbed: what is left
    stub = {"ours, G stubbed": ours(G, f, phi, y, discrepancy="auto"),
            "ours as an ELBO, G stubbed": ours(G, f, phi, y, two_traces=True, discrepancy="auto"),
            "reference, G stubbed": lambda: ref(ws).backward()}
    res.update(timed(stub, a.reps * 3))
    base = res["reference"]
    for k, v in res.items():
        extra = f"  ratio to reference {v / base:.3f}" if "stubbed" not in k else ""
        print(f"{k:28s} {v:7.2f} ms{extra}")
    return res


if __name__ == "__main__":
    main()
