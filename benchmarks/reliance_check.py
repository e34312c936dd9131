"""Is the prior-reliance map high where the observation says nothing and low where it says everything?

On builtin:faces64 test faces, `brgm reconstruct --method vi`'s model and defaults (discrepancy term,
perceptual term, 300 steps x 4 particles, ``--draws`` draws) for free-form in-painting (the masks of
benchmarks/eval_faces64.py) and x8 super-resolution, observation noise N(0, 0.05^2); the map from
512 prior draws (the CLI's default). Reports the mean r (channels and pixels) over the hole and the
observed pixels of in-painting and over all pixels of x8 SR, beside the discrepancy floor of an
observed pixel, Var[e | w, y] / Var[x] = (tau^2 s^2 / (tau^2 + s^2)) / Var[x], and writes a figure
(observation, posterior mean, r for each task; ``reliance_check.png``)::

    python benchmarks/reliance_check.py --faces 0,1 --out runs/reliance_check
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from brgm_pyro.data.faces import face_batch  # noqa: E402
from brgm_pyro.inference import run_vi  # noqa: E402
from brgm_pyro.models.corruptions import Inpainting, SuperResolution  # noqa: E402
from brgm_pyro.pipeline.core import build_model, load_generator  # noqa: E402
from brgm_pyro.reliance import prior_reliance  # noqa: E402

NOISE = 0.05


def run_task(G, task: str, ids: list[int], draws: int, percept: bool, steps=None):
    """(observation (B, C, H, W) shown in [-1, 1], posterior mean, reliance map, missing mask or None)."""
    from eval_faces64 import freeform_mask

    x = face_batch(ids, "test")[1]
    if task == "inpaint":
        masks = torch.from_numpy(np.stack([freeform_mask(i) for i in ids]))[:, None]
        f = Inpainting(masks)
    else:
        f, masks = SuperResolution(8, "bicubic"), None
    y = f(x) + NOISE * torch.randn(f(x).shape, generator=torch.Generator().manual_seed(0))
    model = build_model(G, f, phi="default" if percept else None, sigma_pixel=NOISE, discrepancy="auto")
    res = run_vi(model, y, num_samples=draws, seed=0, progress=False, steps=steps)
    rel = prior_reliance(model, res)
    shown = y if task == "inpaint" else torch.nn.functional.interpolate(y, size=x.shape[-2:], mode="nearest")
    return shown, res.image, rel, None if masks is None else ~masks


def summarise(task: str, rel, missing, tau: float) -> dict:
    r = rel.prior_reliance.double().clamp(0, 1)
    floor = (tau ** 2 * NOISE ** 2 / (tau ** 2 + NOISE ** 2)) / rel.prior_var.double()
    out = {"all": float(r.mean()), "floor_mean": float(floor.mean()), "fraction_above_1":
           float((rel.prior_reliance > 1).double().mean())}
    if missing is not None:
        m = missing.expand_as(r)
        out.update(hole=float(r[m].mean()), observed=float(r[~m].mean()),
                   observed_p10_p90=[float(q) for q in torch.quantile(r[~m], torch.tensor([0.1, 0.9]).double())],
                   hole_p10_p90=[float(q) for q in torch.quantile(r[m], torch.tensor([0.1, 0.9]).double())])
    print(task, json.dumps(out), flush=True)
    return out


def figure(rows: list, path: Path) -> None:
    """One row per (task, face): observation, posterior mean, channel-mean r (magma, 0-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), 3, figsize=(6.6, 2.2 * len(rows)))
    for i, (name, obs, mean, r) in enumerate(rows):
        for j, (img, title) in enumerate([(obs, f"{name}: observation"), (mean, "posterior mean"),
                                          (r, "prior reliance r")]):
            ax = axes[i, j]
            if img.ndim == 3:
                ax.imshow(((img.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1))
            else:
                im = ax.imshow(img.numpy(), cmap="magma", vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.colorbar(im, ax=axes[:, 2].tolist(), shrink=0.6)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--faces", default="0,1")
    ap.add_argument("--draws", type=int, default=64)
    ap.add_argument("--no-percept", action="store_true")
    ap.add_argument("--steps", type=int, default=None, help="VI steps (default: the CLI's 300)")
    ap.add_argument("--out", default="runs/reliance_check")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    G = load_generator("builtin:faces64")
    from brgm_pyro.models.discrepancy import load_discrepancy

    tau = load_discrepancy(G).tau
    ids = [int(i) for i in a.faces.split(",")]
    results, rows = {"command": " ".join(["python"] + sys.argv), "faces": ids, "draws": a.draws}, []
    for task in ("inpaint", "superres"):
        obs, mean, rel, missing = run_task(G, task, ids, a.draws, not a.no_percept, a.steps)
        results[task] = summarise(task, rel, missing, tau)
        rows += [(f"{task} face {i}", obs[b], mean[b], rel.channel_mean()[b]) for b, i in enumerate(ids)]
        (out / "reliance_check.json").write_text(json.dumps(results, indent=1))
    figure(rows, out / "reliance_check.png")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
