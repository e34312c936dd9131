"""Is SMC's log evidence biased? 12 independent runs per setting on a linear-Gaussian problem (D = 6),
mean and SE of log Z_r - exact for a few (N, moves, cess). (docs/smc.md, "Check of bias".)

    python benchmarks/smc_evidence_bias.py
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.test_smc as T  # noqa: E402
from brgm_pyro.inference import run_smc  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model, y = T._problem(seed=1)
    exact = T._log_marginal(model, y, 0.3)
    for N, steps, cess in [(400, 5, 0.5), (1600, 5, 0.5), (400, 20, 0.5), (400, 5, 0.9)]:
        res = run_smc(model, y, num_particles=N, num_chains=12, num_samples=10, steps=steps, cess=cess, seed=0,
                      progress=False)
        r = np.array(res.extra["log_evidence_runs"]) - exact
        print(f"N {N} moves {steps} cess {cess}: mean {r.mean():+.3f} sd {r.std(ddof=1):.3f} "
              f"SE {r.std(ddof=1) / math.sqrt(r.size):.3f} stages {res.extra['num_stages'][0]}", flush=True)


if __name__ == "__main__":
    main()
