"""Is the generator's misfit on real faces white? What a blur does to it, against the white model.

The discrepancy term (docs/discrepancy.md) models what G cannot draw as white noise e ~ N(0, tau^2 I)
on the clean image, so a blur of width t shrinks it to tau^2 sum_j k_t(j)^2 per observation. A
misfit that is correlated between neighbouring pixels shrinks less. This inverts clean validation
faces (W+ MAP of G(w) to the face itself, 1,000 Adam steps), takes the residual m = x - G(w*) and
prints, per blur width t of x4 super-resolution with a Gaussian kernel, RMS(A_t m) against the RMS
of A_t applied to white noise of the same overall scale. A ratio above 1 means the white model
under-states the blurred misfit, and a model that infers t compensates with a narrower kernel
(whose blurred white noise is larger): the held-out blur widths of docs/latent_sites.md.

It also prints the coloured discrepancy's predictions tau sqrt(diag(A_t R A_t^T)) beside the white
one: R from the power spectrum of residuals (:func:`~brgm_pyro.models.discrepancy.residual_spectrum`),
either these faces' own (in-sample) or, with ``--spectrum-from FILE``, a stored discrepancy record
(out of sample, e.g. the bundled one fitted on faces 64-79 when these are the report faces 0-7:
``--faces 8 --first 0``), and a Gaussian R of the best-fitting single correlation length for
comparison. A ratio near 1 at every width is what the coloured term is for.

    python benchmarks/misfit_whiteness.py --threads 1
"""

from __future__ import annotations

import argparse

import torch

from brgm_pyro.data.faces import face_batch
from brgm_pyro.inference import run_map
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity, SuperResolution
from brgm_pyro.models.corruptions.superres import blur_width_latent
import json

from brgm_pyro.models.discrepancy import StationarySmoother, residual_spectrum
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8, help="validation faces 64.. of the test split")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.4, 0.7, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--first", type=int, default=64, help="the first face of the test split (64: validation)")
    ap.add_argument("--spectrum-from", default=None, help="a discrepancy JSON whose spectrum to test (default: "
                    "the one fitted on these faces)")
    ap.add_argument("--gauss-length", type=float, default=0.5, help="the Gaussian R's correlation length (px)")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    G = load_generator("builtin:faces64").eval()
    _, x = face_batch(range(a.first, a.first + a.faces), "test")
    model = build_model(G, Identity(), sigma_pixel=0.02, stats=latent_stats_for(G))
    w = run_map(model, x, steps=a.steps, lr=0.1, lr_decay=0.1, progress=False).w
    with torch.no_grad():
        mis = x - G(w)
    tau = float(mis.pow(2).mean().sqrt())
    print(f"misfit RMS {tau:.4f} (per face {', '.join(f'{float(v):.4f}' for v in mis.pow(2).mean((1, 2, 3)).sqrt())})")
    fit = residual_spectrum(mis)
    spec = json.loads(open(a.spectrum_from).read())["spectrum"] if a.spectrum_from else fit["spectrum"]
    models = {"white": None, "spectrum": StationarySmoother(**spec),
              f"gauss {a.gauss_length}": StationarySmoother.gaussian(a.gauss_length)}
    emp = ", ".join(f"{c:.3f}" for c in fit["lag_correlations"])
    mod = ", ".join(f"{models['spectrum'].correlation(k):.3f}" for k in (1, 2, 3))
    print(f"lag 1-3 correlations of the misfit {emp}; spectrum model {mod}")
    f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
    out = {}
    print("width  RMS(A_t m)  " + "  ".join(f"{k:>10} ratio" for k in models))
    for t in a.widths:
        p = {"kernel_width": torch.tensor(t)}
        with torch.no_grad():
            rm = float(f(mis, {"kernel_width": torch.full((x.shape[0],), t)}).pow(2).mean().sqrt())
            pred = {k: tau * float((f.gram_diagonal(tuple(x.shape[1:]), p) if sm is None else
                                    f.smoothed_gram_diagonal(tuple(x.shape[1:]), sm, p)).mean().sqrt())
                    for k, sm in models.items()}
        out[t] = {"misfit": rm, **pred}
        print(f"{t:5.1f}  {rm:10.4f}  " + "  ".join(f"{v:10.4f} {rm / v:5.2f}" for v in pred.values()))
    return out


if __name__ == "__main__":
    main()
