"""Is the generator's misfit on real faces white? What a blur does to it, against the white model.

The discrepancy term (docs/discrepancy.md) models what G cannot draw as white noise e ~ N(0, tau^2 I)
on the clean image, so a blur of width t shrinks it to tau^2 sum_j k_t(j)^2 per observation. A
misfit that is correlated between neighbouring pixels shrinks less. This inverts clean validation
faces (W+ MAP of G(w) to the face itself, 1,000 Adam steps), takes the residual m = x - G(w*) and
prints, per blur width t of x4 super-resolution with a Gaussian kernel, RMS(A_t m) against the RMS
of A_t applied to white noise of the same overall scale. A ratio above 1 means the white model
under-states the blurred misfit, and a model that infers t compensates with a narrower kernel
(whose blurred white noise is larger): the held-out blur widths of docs/latent_sites.md.

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
from brgm_pyro.models.generators.loading import latent_stats_for, load_generator


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", type=int, default=8, help="validation faces 64.. of the test split")
    ap.add_argument("--widths", type=float, nargs="+", default=[0.4, 0.7, 1.0, 1.5, 2.0, 3.0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    G = load_generator("builtin:faces64").eval()
    _, x = face_batch(range(64, 64 + a.faces), "test")
    model = build_model(G, Identity(), sigma_pixel=0.02, stats=latent_stats_for(G))
    w = run_map(model, x, steps=a.steps, lr=0.1, lr_decay=0.1, progress=False).w
    with torch.no_grad():
        mis = x - G(w)
    tau = float(mis.pow(2).mean().sqrt())
    print(f"misfit RMS {tau:.4f} (per face {', '.join(f'{float(v):.4f}' for v in mis.pow(2).mean((1, 2, 3)).sqrt())})")
    f = SuperResolution(4, "gauss", gauss_sigma=blur_width_latent(4, per_image=True))
    white = tau * torch.randn(64, *x.shape[1:], generator=torch.Generator().manual_seed(0))
    out = {}
    print("width  RMS(A_t m)  RMS(A_t white)  ratio")
    for t in a.widths:
        with torch.no_grad():
            rm = float(f(mis, {"kernel_width": torch.full((x.shape[0],), t)}).pow(2).mean().sqrt())
            rw = float(f(white, {"kernel_width": torch.full((64,), t)}).pow(2).mean().sqrt())
        out[t] = (rm, rw)
        print(f"{t:5.1f}  {rm:10.4f}  {rw:14.4f}  {rm / rw:5.2f}")
    return out


if __name__ == "__main__":
    main()
