"""Which model made this image? One observation, several model choices, SMC's evidence for each.

Reconstructs one observation under several (prior, pixel-noise) choices with ``method="smc"`` and
prints the log evidence of each with its standard error (spread of ``--runs`` independent SMC
runs), the differences to the best with their standard errors, and the posterior model
probabilities under a uniform prior over the models (``brgm_pyro.inference.smc.compare.compare_models``;
``brgm compare`` does the same for a user's image).

The observation: x8 box super-resolution (``--task superres``) or the in-painting block of
compare_inference.py (``--task inpaint``) of either test face ``--face`` (``--truth face``) or an
image G(w) with w drawn from the prior (``--truth prior``, which also works for generators that are
not 64 x 64), plus noise of ``--truth-noise`` (gaussian | studentt with 2 degrees of freedom) at
sigma = 0.05. With ``--truth prior`` one of the candidate models is the true one.

    python examples/compare_models.py --generator builtin:faces64 --task superres --truth prior \\
        --truth-noise studentt --models brgm/gaussian brgm/studentt brgm/laplace --particles 32 --runs 2

Each model is ``PRIOR/NOISE`` (a registered prior; gaussian | laplace | studentt noise, df 2).
Note: a prior with a factor (``brgm``'s colinearity term) is unnormalised, so its evidence is up to
that factor's constant; differences between noise models under the same prior are exact, between
priors with different factors they are not (docs/smc.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brgm_pyro.data.faces import face_image  # noqa: E402
from brgm_pyro.inference.smc.compare import compare_models, format_comparison  # noqa: E402
from brgm_pyro.models.brgm import build_model  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.models.generators.loading import load_generator  # noqa: E402

SIGMA = 0.05
DF = 2.0


def observation(G, task: str, truth: str, truth_noise: str, face: int, seed: int):
    """(corruption, y, truth image) for the example's problem."""
    res = G.img_resolution
    if task == "superres":
        corr = SuperResolution(8, "box")
    else:
        mask = torch.ones(res, res)
        mask[res * 30 // 64:res * 54 // 64, res // 4:res * 3 // 4] = 0
        corr = Inpainting(mask)
    gen = torch.Generator().manual_seed(seed)
    if truth == "face":
        x = face_image(face, "test")[None]
    else:
        prior_model = build_model(G, corr, prior="gaussian", sigma_pixel=SIGMA)
        with torch.no_grad():
            x = G(prior_model.prior.draw_init(1, gen))
    with torch.no_grad():
        clean = corr(x)
        noise = torch.randn(clean.shape, generator=gen) if truth_noise == "gaussian" else \
            torch.distributions.StudentT(DF).sample(clean.shape)
    return corr, clean + SIGMA * noise, x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="builtin:faces64")
    ap.add_argument("--task", default="superres", choices=["superres", "inpaint"])
    ap.add_argument("--truth", default="prior", choices=["prior", "face"])
    ap.add_argument("--truth-noise", default="gaussian", choices=["gaussian", "studentt"])
    ap.add_argument("--face", type=int, default=0)
    ap.add_argument("--models", nargs="+", default=["gaussian/gaussian", "gaussian/studentt", "gaussian/laplace"])
    ap.add_argument("--particles", type=int, default=32)
    ap.add_argument("--moves", type=int, default=3)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    G = load_generator(a.generator)
    corr, y, _ = observation(G, a.task, a.truth, a.truth_noise, a.face, a.seed)
    models = {}
    for spec in a.models:
        prior, noise = spec.split("/")
        models[spec] = build_model(G, corr, prior=prior, sigma_pixel=SIGMA, noise=noise,
                                   noise_options={"df": DF} if noise == "studentt" else None)

    def line(spec: str, r: dict) -> None:
        print(f"{spec}: log Z {r['log_evidence']:.2f} (runs {[round(v, 2) for v in r['log_evidence_runs']]}), "
              f"{r['seconds']:.0f} s", flush=True)

    out = compare_models(models, y, on_model=line, num_particles=a.particles, num_chains=a.runs, num_samples=8,
                         steps=a.moves, seed=a.seed, progress=True)
    rows = out["rows"]
    seconds = {k: r["seconds"] for k, r in out["models"].items()}
    print(format_comparison(rows))
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "results.json").write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows,
                                                        "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
