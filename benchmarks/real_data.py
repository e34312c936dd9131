"""Real photographs: builtin:fashion32 on Fashion-MNIST test images, as `brgm reconstruct` runs it.

Every BRGM row is a dataset run of the CLI itself (``brgm reconstruct DIR --simulate --generator
builtin:fashion32 --task ... --method map|vi ...``, in this process through the typer app), so
the model, its defaults (discrepancy term, perceptual term, noise), the simulation and the scores
are exactly what a user gets; each image's ``result.json`` gives the reconstruction's PSNR/SSIM
and, for methods with draws, the interval coverage (observed / missing pixels).

The classical baselines see the same observation: it is re-made with the library's
``core.observe`` on the same files, seed and batch as the dataset run (checked against the
run's ``observed.png`` to 8-bit precision), then:

| row | observation | baseline (library) |
|---|---|---|
| sr4 | x4 box down-sampling (8x8) + noise | bicubic (the CLI's own baseline, torch) |
| inpaint_half / inpaint_free | lower half / free-form strokes missing | biharmonic fill (scikit-image) |
| denoise | + N(0, 0.2^2) | TV (scikit-image Chambolle, weight chosen on validation) |
| deblur | Gaussian blur 2 px + noise | Wiener (scikit-image, balance chosen on validation) |
| cs_M | M seeded Gaussian measurements + noise | Lasso in the 2-D DCT basis (scikit-learn, alpha chosen on validation) |

Scores on [0, 1] images: PSNR, SSIM, and LPIPS-judge (the LPIPS-style distance in the
independently trained judge classifier, not the perceptual network of the likelihood).

    python benchmarks/real_data.py --choose --split val --num 32 --out runs/real_val      # baselines' settings
    python benchmarks/real_data.py --split test --num 100 --threads 1 --out runs/real_test # the table

Needs scikit-image and scikit-learn (``pip install -c constraints.txt -e '.[bench]'``). Test
images 0-999 come from the shipped subset; validation images 0-199 too.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

ROWS = {"sr4": ("superres", ["--factor", "4"]),
        "inpaint_half": ("inpaint", []), "inpaint_free": ("inpaint", []),
        "denoise": ("denoise", []), "deblur": ("deblur", []),
        **{f"cs_{m}": ("cs", ["--measurements", str(m)]) for m in (25, 50, 100, 200, 500)}}
# chosen on validation images 0-31 with --choose (docs/real_data.md; grids in choose())
BASELINE_SETTINGS = {"tv_weight": 0.05, "wiener_balance": 0.002, "lasso_alpha": 3e-5}  # Lasso: chosen at m = 100


def half_mask(size: int = 32) -> np.ndarray:
    """Observed-pixel mask: the upper half observed, the lower half missing."""
    m = np.ones((size, size), bool)
    m[size // 2:] = False
    return m


def freeform_mask(i: int, size: int = 32, seed: int = 27) -> np.ndarray:
    """Observed-pixel mask for image i: seeded thick strokes, 25-50 % missing (resampled until so)."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng((seed, i))
    s = size / 64
    for _ in range(100):
        img = Image.new("L", (size, size), 255)
        d = ImageDraw.Draw(img)
        for _ in range(rng.integers(3, 6)):
            x, y = rng.uniform(4, size - 4, 2)
            pts = [(x, y)]
            for _ in range(rng.integers(2, 5)):
                a, r = rng.uniform(0, 2 * math.pi), rng.uniform(8, 22) * s
                x, y = float(np.clip(x + r * math.cos(a), 0, size)), float(np.clip(y + r * math.sin(a), 0, size))
                pts.append((x, y))
            d.line(pts, fill=0, width=max(2, int(rng.integers(5, 10) * s)), joint="curve")
        m = np.asarray(img) > 127
        if 0.25 <= 1 - m.mean() <= 0.5:
            return m
    return m


def write_inputs(split: str, ids: list[int], folder: Path) -> dict[str, Path]:
    """PNG files of the images and both kinds of masks; a CSV manifest per in-painting row."""
    from PIL import Image

    from brgm_pyro.data.fashion_mnist import load_images

    folder.mkdir(parents=True, exist_ok=True)
    imgs, _ = load_images(split, ids)
    (folder / "img").mkdir(exist_ok=True)
    (folder / "mask").mkdir(exist_ok=True)
    rows = {"inpaint_half": [], "inpaint_free": []}
    for k, i in enumerate(ids):
        p = folder / "img" / f"{split}{i:05d}.png"
        Image.fromarray(imgs[k]).save(p)
        for row, m in (("inpaint_half", half_mask()), ("inpaint_free", freeform_mask(i))):
            mp = folder / "mask" / f"{row}_{i:05d}.png"
            Image.fromarray((m * 255).astype(np.uint8)).save(mp)
            rows[row].append(f"{p},{mp}")
    out = {"img": folder / "img"}
    for row, lines in rows.items():
        (folder / f"{row}.csv").write_text("image,mask\n" + "\n".join(lines) + "\n")
        out[row] = folder / f"{row}.csv"
    return out


def run_cli(inputs: Path, row: str, method: str, out: Path, a) -> None:
    """One dataset run of `brgm reconstruct` (the typer app in this process)."""
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    task, opts = ROWS[row]
    args = ["reconstruct", str(inputs), "--simulate", "--generator", a.generator, "--task", task, *opts,
            "--method", method, "--batch-size", str(a.batch), "--threads", str(a.threads), "--seed", "0",
            "--out", str(out), "--quiet"]
    if method != "map":
        args += ["--num-samples", str(a.draws)]
    r = CliRunner().invoke(app, args)
    if r.exit_code != 0:
        raise SystemExit(f"brgm {' '.join(args)} failed ({r.exit_code}): {r.output[-2000:]}")


def linear_matrix(f, shape: tuple) -> np.ndarray:
    """The matrix (m, n) of a linear corruption, by applying it to the n basis images."""
    n = int(np.prod(shape))
    with torch.no_grad():
        cols = f(torch.eye(n).reshape(n, *shape)).reshape(n, -1)
    return cols.T.double().numpy()


def baseline(row: str, obs, b: int, s: dict) -> np.ndarray:
    """The classical reconstruction (H, W) in [0, 1] of image b of an observation."""
    from skimage import restoration

    y = obs.y[b].detach().cpu().double().numpy()
    if row == "sr4":  # the CLI's own bicubic (brgm_pyro.pipeline.baselines, torch's bicubic, antialiased grid)
        return np.asarray(obs.task.baseline(obs.y[b].cpu(), (1, 32, 32))[1])[..., 0].clip(0, 1)
    if row.startswith("inpaint"):
        img = ((y[0] + 1) / 2).clip(0, 1)
        return restoration.inpaint_biharmonic(img, ~obs.masks[b]).clip(0, 1)
    if row == "denoise":
        return restoration.denoise_tv_chambolle(((y[0] + 1) / 2), weight=s["tv_weight"]).clip(0, 1)
    if row == "deblur":
        psf = obs.corruption.kernel2d().double().cpu().numpy()
        return restoration.wiener(((y[0] + 1) / 2), psf, balance=s["wiener_balance"]).clip(0, 1)
    return lasso_dct(obs, y, s["lasso_alpha"])


def lasso_dct(obs, y: np.ndarray, alpha: float) -> np.ndarray:
    """Lasso in the orthonormal 2-D DCT basis: argmin_c ||y - A D c||^2 / (2m) + alpha |c|_1, x = D c."""
    from scipy.fft import idctn
    from sklearn.linear_model import Lasso

    shape = (1, 32, 32)
    key = ("A", id(obs.corruption))
    if key not in _CACHE:
        A = linear_matrix(obs.corruption, shape)
        D = np.stack([idctn(e.reshape(32, 32), norm="ortho").ravel() for e in np.eye(1024)], 1)
        _CACHE[key] = A @ D, D
    AD, D = _CACHE[key]
    c = Lasso(alpha=alpha, fit_intercept=False, max_iter=5000).fit(AD, y.ravel()).coef_
    return (((D @ c).reshape(32, 32) + 1) / 2).clip(0, 1)


_CACHE: dict = {}


def observations(files: list[str], masks, row: str, a, G) -> list:
    """The observations of the dataset run, re-made batch by batch as run_batch makes them."""
    from brgm_pyro.pipeline import core

    task, opts = ROWS[row]
    kw = {"factor": 4} if row == "sr4" else {"measurements": int(row[3:])} if row.startswith("cs_") else {}
    out = []
    for k in range(0, len(files), a.batch):
        extra = {"mask": masks[k:k + a.batch]} if masks else {}
        names = [Path(f).stem for f in files[k:k + a.batch]]
        out.append(core.observe(files[k:k + a.batch], G, task, simulate=True, seed=0, names=names, **kw, **extra))
    return out


def _scores(img: np.ndarray, truth: np.ndarray, judge) -> dict:
    """PSNR, SSIM (brgm_pyro.metrics) and LPIPS-judge of one (H, W) image in [0, 1]."""
    from brgm_pyro import metrics

    out = {k: v for k, v in metrics.image_metrics(img[..., None], truth).items() if k in ("psnr", "ssim")}
    t = lambda x: torch.from_numpy(np.asarray(x, np.float32).reshape(1, 1, 32, 32) * 2 - 1)  # noqa: E731
    out["lpips_judge"] = float(judge.distance(t(img), t(truth[..., 0])))
    out["mse"] = 10 ** (-out["psnr"] / 10)  # per-pixel MSE of [0, 1] images (Bora et al.'s error)
    return out


def brgm_scores(out: Path, name: str, truth: np.ndarray, judge) -> dict:
    """A dataset run's image folder: its reconstruction's scores and, with draws, its coverage."""
    from PIL import Image

    res = json.loads((out / name / "result.json").read_text())
    img = np.asarray(Image.open(out / name / "reconstruction.png").convert("L"), np.float64) / 255
    s = _scores(img, truth, judge)
    s["psnr"] = res["scores"]["reconstruction"]["psnr"]  # from the float image, as metrics.json has it
    s["ssim"] = res["scores"]["reconstruction"]["ssim"]
    s["mse"] = 10 ** (-s["psnr"] / 10)
    cov = res["scores"].get("coverage")
    if cov:
        s["coverage90"] = {reg: v["0.9"]["coverage"] for reg, v in cov.items() if isinstance(v, dict) and "0.9" in v}
    return s


def inputs_for(row: str, paths: dict) -> tuple[Path, list[str], list | None]:
    """(CLI input, image files, mask files or None) of a row."""
    if row.startswith("inpaint"):
        lines = paths[row].read_text().splitlines()[1:]
        return paths[row], [ln.split(",")[0] for ln in lines], [ln.split(",")[1] for ln in lines]
    return paths["img"], sorted(str(p) for p in paths["img"].glob("*.png")), None


def mean_of(rows: list[dict]) -> dict:
    out = {}
    for k in rows[0]:
        if k == "coverage90":
            regs = rows[0][k].keys()
            out[k] = {r: float(np.mean([x[k][r] for x in rows if r in x[k]])) for r in regs}
        else:
            out[k] = float(np.mean([x[k] for x in rows]))
    return out


def check_same_observation(o, b: int, folder: Path) -> None:
    """The re-made observation equals the one the dataset run saved (observed.png, 8-bit)."""
    from PIL import Image

    if not o.image_observation or not (folder / "observed.png").is_file():
        return
    saved = np.asarray(Image.open(folder / "observed.png").convert("L"), np.float64) / 255
    mine = ((o.y[b, 0].detach().cpu().double().numpy() + 1) / 2).clip(0, 1)
    if saved.shape == mine.shape and np.abs(saved - mine).max() > 1.5 / 255:
        raise SystemExit(f"{folder}: the baseline's observation differs from the run's; the simulation drifted")


def run_row(row: str, paths: dict, a, G, judge, methods: list[str]) -> dict:
    inp, files, masks = inputs_for(row, paths)
    obs = observations(files, masks, row, a, G)
    per: dict[str, list] = {"baseline": [], **{m: [] for m in methods}}
    for m in methods:
        run_cli(inp, row, m, a.out / row / m, a)
    for o in obs:
        for b, name in enumerate(o.names):
            truth = o.truth[b]
            check_same_observation(o, b, a.out / row / methods[0] / name)
            per["baseline"].append(_scores(baseline(row, o, b, BASELINE_SETTINGS), truth, judge))
            for m in methods:
                per[m].append(brgm_scores(a.out / row / m, name, truth, judge))
    return {k: mean_of(v) for k, v in per.items() if v}


def choose(paths: dict, a, G, judge) -> dict:
    """Baseline settings by grid search on the given (validation) images: best mean PSNR."""
    grids = {"denoise": ("tv_weight", [0.02, 0.05, 0.1, 0.2, 0.4]),
             "deblur": ("wiener_balance", [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05]),
             "cs_100": ("lasso_alpha", [3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2])}
    best = {}
    for row, (key, vals) in grids.items():
        _, files, _ = inputs_for(row, paths)
        obs = observations(files, None, row, a, G)
        score = {}
        for v in vals:
            s = dict(BASELINE_SETTINGS, **{key: v})
            score[v] = float(np.mean([_scores(baseline(row, o, b, s), o.truth[b], judge)["psnr"]
                                      for o in obs for b in range(len(o.names))]))
        best[key] = max(score, key=score.get)
        print(f"{row}: {key} -> PSNR {score}; best {best[key]}", flush=True)
    return best


def to_markdown(res: dict, draws: int) -> str:
    from brgm_pyro.calibration import exact_sampler_coverage

    ref = exact_sampler_coverage(0.9, draws)
    lines = ["| row | baseline PSNR / SSIM / LPIPS-j | MAP | VI mean | VI 90 % coverage all / observed / missing "
             f"(exact sampler with {draws} draws: {ref:.3f}) |", "|---|---|---|---|---|"]
    f = lambda s: f"{s['psnr']:.2f} / {s['ssim']:.3f} / {s['lpips_judge']:.3f}"  # noqa: E731
    for row, r in res["rows"].items():
        cov = r.get("vi", {}).get("coverage90", {})
        c = " / ".join(f"{cov[k]:.3f}" if k in cov else "-" for k in ("all", "observed", "missing"))
        lines.append(f"| {row} | {f(r['baseline'])} | {f(r['map']) if 'map' in r else '-'} | "
                     f"{f(r['vi']) if 'vi' in r else '-'} | {c} |")
    return "\n".join(lines) + "\n"


def cs_plot(res: dict, path: Path) -> None:
    """Per-pixel MSE ([0, 1] images) against the number of measurements, as Bora et al. 2017 Fig. 1a."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted((int(r[3:]), v) for r, v in res["rows"].items() if r.startswith("cs_"))
    if not rows:
        return
    ms = [m for m, _ in rows]
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for key, label in (("baseline", "Lasso (DCT)"), ("map", "BRGM MAP"), ("vi", "BRGM VI mean")):
        if key in rows[0][1]:
            ax.plot(ms, [v[key]["mse"] for _, v in rows], "o-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("Gaussian measurements m (of 1,024 pixels)")
    ax.set_ylabel("per-pixel MSE, mean over images")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="builtin:fashion32")
    ap.add_argument("--split", default="test", choices=["test", "val"])
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--num", type=int, default=100)
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--methods", default="map,vi")
    ap.add_argument("--draws", type=int, default=128, help="VI posterior draws per image")
    ap.add_argument("--batch", type=int, default=25)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--choose", action="store_true", help="choose the baselines' settings (use --split val)")
    ap.add_argument("--out", type=Path, default=Path("runs/real_data"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    from brgm_pyro.models.generators.builtin_fashion32 import load_fashion32_network
    from brgm_pyro.pipeline import core

    if a.split == "test" and a.first + a.num > 1000:
        raise SystemExit("test images 1000 and up are reserved for independent checks; use --first + --num <= 1000")
    t0 = time.time()
    G = core.load_generator(a.generator)
    judge = load_fashion32_network("judge")
    paths = write_inputs(a.split, list(range(a.first, a.first + a.num)), a.out / "inputs")
    if a.choose:
        return choose(paths, a, G, judge)
    res = {"command": "python benchmarks/real_data.py " + " ".join(argv or __import__("sys").argv[1:]),
           "generator": a.generator, "split": a.split, "images": [a.first, a.first + a.num - 1],
           "baseline_settings": BASELINE_SETTINGS, "rows": {}}
    for row in a.rows.split(","):
        res["rows"][row] = run_row(row, paths, a, G, judge, a.methods.split(","))
        print(row, json.dumps(res["rows"][row]), flush=True)
        (a.out / "results.json").write_text(json.dumps(res, indent=2))
    res["wall_s"] = round(time.time() - t0, 1)
    (a.out / "results.json").write_text(json.dumps(res, indent=2))
    (a.out / "results.md").write_text(to_markdown(res, a.draws))
    cs_plot(res, a.out / "cs_error_vs_m.png")
    print(to_markdown(res, a.draws))
    return res


if __name__ == "__main__":
    main()
