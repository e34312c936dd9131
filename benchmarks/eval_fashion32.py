"""How good builtin:fashion32 is: the numbers and pictures of docs/model_card_fashion32.md.

    python benchmarks/eval_fashion32.py --threads 1 --out runs/eval_fashion32

* Frechet distance (FD) in the judge network's 256-d penultimate features between N generated
  samples (z ~ N(0, I), seed 0) and the official test set (10,000), beside the floor: the same
  distance between N training images and the test set. The judge is a classifier trained
  independently of the perceptual network the likelihood uses (brgm_pyro/training/train_classifier.py).
* Precision and recall (Kynkaanniemi et al. 2019, k = 3) in the same features, samples vs test.
* The class histogram of the samples (the judge's argmax), and the judge's accuracy on test 0-999.
* W+ inversion PSNR of held-out test images 0-63 (MAP, brgm_pyro.training.fit_discrepancy.invert,
  its default budget: 1,000 Adam steps, pixel noise 0.02).
* samples_vs_test.png (64 samples | 64 test images) and nearest_neighbours.png (16 samples, each
  beside its 3 nearest training images in pixel L2).
Needs the Debian package dataset-fashion-mnist (the test set and the training images).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def judge_features(judge, x: torch.Tensor, batch: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """(256-d penultimate features (N, 256), predicted class (N,)) of images (N, 1, 32, 32)."""
    enc = judge.encoder
    feats, cls = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            h = enc.head[:3](enc.features(x[i:i + batch])[-1])
            feats.append(h.numpy())
            cls.append(enc.head[3](h).argmax(1).numpy())
    return np.concatenate(feats).astype(np.float64), np.concatenate(cls)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    c1, c2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(c1 @ c2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))


def _kth_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    r = []
    for i in range(0, len(x), 1000):
        d = torch.cdist(x[i:i + 1000], x)
        r.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself
    return torch.cat(r)


def _coverage_of(queries: torch.Tensor, ref: torch.Tensor, radii: torch.Tensor) -> float:
    inside = []
    for i in range(0, len(queries), 1000):
        d = torch.cdist(queries[i:i + 1000], ref)
        inside.append((d <= radii[None]).any(1))
    return float(torch.cat(inside).float().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Kynkaanniemi et al.: precision = share of fakes inside the real k-NN manifold; recall the converse."""
    r, f = torch.from_numpy(real).float(), torch.from_numpy(fake).float()
    return _coverage_of(f, r, _kth_radius(r, k)), _coverage_of(r, f, _kth_radius(f, k))


def samples(G, n: int, seed: int = 0, batch: int = 500) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    with torch.no_grad():
        for i in range(0, n, batch):
            z = torch.randn(min(batch, n - i), G.z_dim, generator=g)
            out.append(G.synthesis(G.mapping(z).unsqueeze(1).expand(-1, G.num_ws, -1)).clamp(-1, 1))
    return torch.cat(out)


def pictures(G, s: torch.Tensor, test: torch.Tensor, train: torch.Tensor, out: Path) -> None:
    from PIL import Image

    from brgm_pyro.training.train_gan import image_grid

    left, right = image_grid(s[:64]), image_grid(test[:64])
    gap = np.full((left.shape[0], 12), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], 1)).resize((2 * (2 * left.shape[1] + 12), 2 * left.shape[0]),
                                                                  Image.NEAREST).save(out / "samples_vs_test.png")
    q = s[:16].flatten(1)
    d = torch.cdist(q, train.flatten(1))
    nn_idx = d.topk(3, largest=False).indices  # (16, 3)
    rows = torch.cat([torch.stack([s[i], *train[nn_idx[i]]]) for i in range(16)])
    grid = image_grid(rows, cols=8)
    Image.fromarray(grid).resize((2 * grid.shape[1], 2 * grid.shape[0]), Image.NEAREST).save(out / "nearest_neighbours.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="builtin:fashion32")
    ap.add_argument("--num", type=int, default=10_000, help="samples (and training images for the floor)")
    ap.add_argument("--invert", type=int, default=64, help="test images 0..N-1 inverted")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/eval_fashion32"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from brgm_pyro.data.fashion_mnist import CLASSES, load_split, to_tensor
    from brgm_pyro.models.generators.builtin_fashion32 import load_fashion32_network
    from brgm_pyro.models.generators.loading import load_generator
    from brgm_pyro.training.fit_discrepancy import invert

    a.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    G = load_generator(a.generator).eval()
    judge = load_fashion32_network("judge")
    xte, yte = load_split("test")
    xtr, _ = load_split("train")
    test, train = to_tensor(xte), to_tensor(xtr)
    s = samples(G, a.num)
    f_s, c_s = judge_features(judge, s)
    f_te, c_te = judge_features(judge, test)
    f_tr, _ = judge_features(judge, train[:a.num])
    prec, rec = precision_recall(f_te, f_s)
    res = {"generator": a.generator, "num_samples": a.num,
           "fd_samples_test": frechet(f_s, f_te), "fd_train_test_floor": frechet(f_tr, f_te),
           "precision": prec, "recall": rec,
           "class_share": {CLASSES[k]: float((c_s == k).mean()) for k in range(10)},
           "judge_accuracy_test_0_999": float((c_te[:1000] == yte[:1000]).mean())}
    res["fd_ratio"] = res["fd_samples_test"] / res["fd_train_test_floor"]
    x = test[:a.invert]
    rec_img = invert(G, x)
    mse = ((rec_img.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)  # images in [0, 1]
    res["inversion_psnr_db_test_0_%d" % (a.invert - 1)] = float((10 * torch.log10(1 / mse)).mean())
    pictures(G, s, test, train, a.out)
    res["wall_s"] = round(time.time() - t0, 1)
    res["command"] = "python benchmarks/eval_fashion32.py " + " ".join(
        f"--{k} {v}" for k, v in vars(a).items() if k != "out") + f" --out {a.out}"
    (a.out / "eval.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
