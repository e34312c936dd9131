"""``brgm reconstruct``: reconstruct a user's own corrupted image(s), or simulate the corruption.

Default mode: each INPUT is the real observation (for x8 super-resolution with a 64x64 generator
an 8x8 image; for in-painting a 64x64 image plus ``--mask``, white = observed, black = missing,
or a PNG whose transparent pixels mark the missing region). With ``--simulate`` each INPUT is a
clean image: it is centre-cropped and resized to the generator, the corruption is applied, and
metrics against it are written.

Several INPUTs are reconstructed as one batch. With one INPUT the files go straight into DIR;
with several, each image gets DIR/<file stem>/ and run.json (and metrics.json) stay in DIR.

Everything is validated before any work, errors are one line with exit status 2, and DIR appears
only when it is complete (it is built in a hidden temporary directory beside it). Ctrl-C during
inference stops the optimiser; what exists is written and the exit status is 130.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import typer

from brgm_pyro import io
from brgm_pyro.cli.app import app, user_errors
from brgm_pyro.errors import BRGMError

TASKS = ("superres", "inpaint", "none")
KERNELS = ("box", "bicubic", "gauss")
DEVICES = ("cpu", "cuda")
DEFAULT_GENERATOR = "builtin:faces64"
EXIT_INTERRUPTED = 130


# --- small shared helpers (also used by ``brgm demo``) -------------------------------------------

def package_versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist, key in [("brgm-pyro", "brgm_pyro"), ("torch", "torch"), ("pyro-ppl", "pyro"), ("numpy", "numpy"),
                      ("scipy", "scipy"), ("pillow", "pillow"), ("arviz", "arviz"), ("typer", "typer"),
                      ("matplotlib", "matplotlib"), ("safetensors", "safetensors")]:
        try:
            out[key] = md.version(dist)
        except md.PackageNotFoundError:
            out[key] = None
    if out.get("brgm_pyro") is None:
        import brgm_pyro

        out["brgm_pyro"] = brgm_pyro.__version__
    return out


def machine_info(device: str) -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device}
    if device == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
    return info


def check_choice(value: str, choices, option: str) -> str:
    if value not in choices:
        raise BRGMError(f"{option} {value!r} is not one of: {', '.join(choices)}")
    return value


def resolve_device(device: str) -> str:
    import torch

    check_choice(device, DEVICES, "--device")
    if device == "cuda" and not torch.cuda.is_available():
        raise BRGMError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return device


def set_threads(threads: Optional[int]) -> None:
    """torch.set_num_threads, with a one-line error for nonsense."""
    import torch

    if threads is None:
        return
    if threads < 1:
        raise BRGMError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(int(threads))


def load_generator_checked(spec: str, device: str):
    """load_generator with every failure on a user file turned into one line."""
    try:
        from brgm_pyro.models.generators.loading import load_generator
    except ImportError:  # pragma: no cover - only while the loader is not installed
        raise BRGMError("generator loading is not available in this installation") from None
    is_file = not spec.startswith("builtin:")
    if is_file:
        p = Path(spec)
        if not p.exists():
            raise BRGMError(f"generator file {spec!r} does not exist; give a .pkl or .safetensors generator "
                            f"or builtin:NAME (default {DEFAULT_GENERATOR})")
        if p.is_dir():
            raise BRGMError(f"generator {spec!r} is a directory; give a .pkl or .safetensors generator file")
    try:
        G = load_generator(spec, device=device)
    except BRGMError:
        raise
    except Exception as e:  # a file that is not a generator can fail in many ways
        if not is_file:
            raise
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BRGMError(f"{spec!r} is not a generator this tool can load ({type(e).__name__}: {reason}); "
                        f"give a StyleGAN2 .pkl or a brgm .safetensors generator") from None
    return G.eval()


def default_phi(G, spec: str):
    """The generator's own perceptual network, if it brings one (builtin generators), else None.

    Looked up, in order: ``loading.default_phi(spec)`` if the loader offers it, a ``default_phi``
    attribute or method of the generator, and the bundled faces network for ``builtin:faces64``.
    """
    from brgm_pyro.models.generators import loading

    fn = getattr(loading, "default_phi", None)
    if fn is not None:
        return fn(spec)
    phi = getattr(G, "default_phi", None)
    if phi is not None:
        return phi() if callable(phi) and not isinstance(phi, nn_module()) else phi
    if spec == "builtin:faces64":
        from brgm_pyro.models.perceptual import load_faces64_percept

        return load_faces64_percept(device=str(G.device()))
    return None


def nn_module():
    from torch import nn

    return nn.Module


def methods_registry():
    from brgm_pyro.inference import METHODS

    try:  # the MCMC methods register themselves on import, when installed
        import brgm_pyro.inference.mcmc  # noqa: F401
    except ImportError:
        pass
    return METHODS


def superres_factor_check(resolution: int, factor: int) -> None:
    if factor < 1:
        raise BRGMError(f"--factor must be a positive integer, got {factor}")
    if factor == 1:
        raise BRGMError("--factor 1 is no super-resolution; use --task none, or a factor such as 4 or 8")
    if resolution % factor:
        ok = [f for f in range(2, resolution + 1) if resolution % f == 0]
        raise BRGMError(f"--factor {factor} does not divide the generator's resolution {resolution}; "
                        f"use one of {', '.join(map(str, ok))}")


# --- the model the options describe ---------------------------------------------------------------

def _number_or_auto(value: Optional[str], option: str) -> Optional[Any]:
    """None, the string 'auto', or a positive float; a one-line error otherwise."""
    if value is None or value == "auto":
        return value
    try:
        v = float(value)
    except ValueError:
        raise BRGMError(f"{option} must be a positive number or 'auto'; got {value!r}") from None
    if not v > 0:
        raise BRGMError(f"{option} must be positive; got {value}")
    return v


@dataclass
class ModelChoice:
    """What ``--prior``, ``--sigma-pixel``, ``--noise``, ``--kernel-width`` ... ask of the model."""

    prior: str = "brgm"
    sigma_pixel: Optional[str] = None
    noise: str = "gaussian"
    noise_per_image: bool = False
    kernel_width: Optional[str] = None
    simulate_kernel_width: Optional[float] = None

    def check(self, task: str, kernel: str, simulate: bool) -> None:
        from brgm_pyro.models.likelihoods import PIXEL_NOISE
        from brgm_pyro.models.priors import PRIORS

        check_choice(self.prior, PRIORS.names(), "--prior")
        check_choice(self.noise, list(PIXEL_NOISE), "--noise")
        sp = _number_or_auto(self.sigma_pixel, "--sigma-pixel")
        if self.noise_per_image and sp != "auto":
            raise BRGMError("--noise-per-image learns one noise level per image: add --sigma-pixel auto")
        kw = _number_or_auto(self.kernel_width, "--kernel-width")
        if kw is not None and (task != "superres" or kernel != "gauss"):
            raise BRGMError("--kernel-width is the width of the Gaussian kernel: use it with --task superres "
                            "--kernel gauss")
        if self.simulate_kernel_width is not None:
            if not (simulate and kw == "auto"):
                raise BRGMError("--simulate-kernel-width makes a blind observation: use it with --simulate and "
                                "--kernel-width auto")
            if not self.simulate_kernel_width > 0:
                raise BRGMError(f"--simulate-kernel-width must be positive; got {self.simulate_kernel_width}")

    def model_kwargs(self) -> dict:
        out: dict[str, Any] = {"prior": self.prior, "noise": self.noise}
        sp = _number_or_auto(self.sigma_pixel, "--sigma-pixel")
        if sp == "auto":
            out.update(sigma_pixel="learn", noise_per_image=self.noise_per_image)
        elif sp is not None:
            out["sigma_pixel"] = sp
        return out

    def corruption(self, factor: int, kernel: str):
        from brgm_pyro.models.corruptions import make_corruption
        from brgm_pyro.models.corruptions.superres import blur_width_latent

        kw = _number_or_auto(self.kernel_width, "--kernel-width")
        if kw == "auto":
            return make_corruption("superres", factor=factor, kernel=kernel, gauss_sigma=blur_width_latent(factor))
        return make_corruption("superres", factor=factor, kernel=kernel, gauss_sigma=kw)

    def simulation_params(self, corruption) -> Optional[dict]:
        """Values of the corruption's latents used to simulate an observation (their prior guess by default)."""
        lats = corruption.latents()
        if not lats:
            return None
        import torch

        width = self.simulate_kernel_width
        return {lat.name: torch.tensor(float(width) if width is not None else lat.init) for lat in lats}


# --- the observation ---------------------------------------------------------------------------------

@dataclass
class Batch:
    """Observations ready for the model, and what is needed to write and score them."""

    y: Any  # torch (B, C, h, w) in [-1, 1]; missing pixels 0
    mask: Optional[np.ndarray]  # (B, H, W) bool (True = observed) for in-painting
    truth: Optional[np.ndarray]  # (B, H, W, C) in [0, 1] with --simulate
    inputs: list[dict] = field(default_factory=list)
    masks: list[dict] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def _size_hint(h: int, w: int, R: int, task: str, factor: int) -> str:
    if task == "superres":
        need = R // factor
        tips = [f"give a {need}x{need} image"]
        if (h, w) == (R, R):
            tips.append("use --task inpaint (with --mask) or --task none for a full-size image")
        elif h == w and R % h == 0 and R // h > 1:
            tips.append(f"use --factor {R // h} for this {h}x{w} image")
        tips.append("or pass --simulate to corrupt a clean image yourself")
        return f"is {h}x{w} but x{factor} super-resolution with the {R}x{R} generator needs a {need}x{need} " \
               f"observation; " + ", ".join(tips)
    return f"is {h}x{w} but the {R}x{R} generator needs a {R}x{R} observation for --task {task}; resize or " \
           f"crop it to {R}x{R}, or pass --simulate to centre-crop and resize a clean image"


def prepare_batch(paths: List[Path], *, task: str, factor: int, kernel: str, masks: List[Path], simulate: bool,
                  resolution: int, channels: int, choice: Optional["ModelChoice"] = None) -> tuple[Batch, Any]:
    """Read and check every input and mask; build the corruption and the observation tensor."""
    import torch

    from brgm_pyro.models.corruptions import make_corruption

    if not paths:
        raise BRGMError("no INPUT image given; give one or more PNG/JPEG files")
    if task == "superres":
        superres_factor_check(resolution, factor)
    if masks and task != "inpaint":
        raise BRGMError(f"--mask is for in-painting but --task is {task}; add --task inpaint or drop --mask")
    if len(masks) not in (0, 1, len(paths)):
        raise BRGMError(f"{len(masks)} masks for {len(paths)} inputs; give one --mask for all inputs or one per input")
    R, C = resolution, channels
    imgs = [io.read_image(p, what="input image") for p in paths]
    names = io.stems(paths)
    arrays, infos, truths = [], [], []
    for img in imgs:
        arr, note = io.match_channels(img.array, C)
        info = img.info()
        if note:
            info["conversions"].append(note)
        info["sha256"] = io.sha256(img.path)
        if simulate:
            arr, notes = io.center_crop_resize(arr, R)
            info["conversions"] += notes
            io.check_not_constant(arr, img.path, "input image")
            truths.append(arr)
        else:
            h, w = img.size
            need = R // factor if task == "superres" else R
            if (h, w) != (need, need):
                raise BRGMError(f"input image {img.path!r} " + _size_hint(h, w, R, task, factor))
        arrays.append(arr)
        infos.append(info)

    mask_arr = None
    mask_infos: list[dict] = []
    if task == "inpaint":
        per_image = []
        if masks:
            loaded = []
            for mp in masks:
                if simulate:
                    m, minfo = io.read_mask(mp)
                    if m.shape != (R, R):  # a mask drawn on the original clean image: same crop + resize
                        sizes = {im.size for im in imgs}
                        if m.shape not in sizes:
                            raise BRGMError(
                                f"mask {str(mp)!r} is {m.shape[0]}x{m.shape[1]}; with --simulate give a {R}x{R} "
                                f"mask or one of the clean image's size ({io.MASK_HINT})")
                        r, _ = io.center_crop_resize(m[:, :, None].astype(np.float32), R)
                        m = r[:, :, 0] >= 0.5
                        if m.all() or not m.any():
                            raise BRGMError(f"mask {str(mp)!r} resized to {R}x{R} has no missing or no observed "
                                            f"pixel left; give a {R}x{R} mask ({io.MASK_HINT})")
                else:
                    m, minfo = io.read_mask(mp, (R, R), size_of=f"the {R}x{R} observation")
                loaded.append(m)
                mask_infos.append({**minfo.info(), "missing_fraction": float((~m).mean())})
            per_image = loaded * len(paths) if len(loaded) == 1 else loaded
        else:
            for img in imgs:
                m = None if simulate else io.alpha_mask(img)
                if m is None and not simulate:
                    raise BRGMError(
                        f"in-painting {img.path!r} needs a mask: pass --mask MASK.png ({io.MASK_HINT}), or give a "
                        f"PNG whose transparent pixels mark the missing region")
                if m is None:
                    m = io.default_mask(R)
                    mask_infos.append({"path": None, "source": "default: centred square hole, half the side",
                                       "missing_fraction": float((~m).mean())})
                else:
                    mask_infos.append({"path": img.path, "source": "transparent pixels of the input",
                                       "missing_fraction": float((~m).mean())})
                per_image.append(m)
        mask_arr = np.stack(per_image)  # (B, H, W)
        if not simulate:
            for arr, m, img in zip(arrays, per_image, imgs):
                io.check_not_constant(arr, img.path, "input image", mask=m)
    elif not simulate:
        for arr, img in zip(arrays, imgs):
            io.check_not_constant(arr, img.path, "input image")

    # the corruption
    if task == "superres":
        corruption = (choice or ModelChoice()).corruption(factor, kernel)
    elif task == "inpaint":
        same = all(np.array_equal(mask_arr[0], m) for m in mask_arr[1:])
        mt = torch.from_numpy(mask_arr[0] if same else mask_arr[:, None])
        corruption = make_corruption("inpaint", mask=mt)
    else:
        corruption = make_corruption("none")

    if simulate:
        x = torch.stack([io.to_model(a) for a in truths])
        with torch.no_grad():
            y = corruption(x, (choice or ModelChoice()).simulation_params(corruption))
    else:
        y = torch.stack([io.to_model(a) for a in arrays])
    if mask_arr is not None:
        y = y * torch.from_numpy(mask_arr[:, None]).to(y.dtype)  # missing pixels: 0 (mid-grey)
    truth = np.stack(truths) if simulate else None
    return Batch(y=y, mask=mask_arr, truth=truth, inputs=infos, masks=mask_infos, names=names), corruption


# --- writing results -----------------------------------------------------------------------------------

def write_image_outputs(out: io.OutputDir, prefix: tuple, batch: Batch, b: int, result, task: str) -> dict:
    """Write the PNGs of image ``b``; return a dict of what was written and std scale."""
    from brgm_pyro import figures

    written = []
    recon = io.from_model(result.mean_image()[b])
    io.save_png(out.path(*prefix, "reconstruction.png"), recon)
    obs = io.from_model(batch.y[b])
    io.save_png(out.path(*prefix, "observed.png"), obs)
    written += ["reconstruction.png", "observed.png"]
    info: dict = {}
    if batch.truth is not None:
        io.save_png(out.path(*prefix, "truth.png"), batch.truth[b])
        written.append("truth.png")
    if task == "inpaint":
        comp = figures.composite(obs, recon, batch.mask[b])
        io.save_png(out.path(*prefix, "composite.png"), comp)
        written.append("composite.png")
    if result.samples is not None:
        S = result.samples.shape[0]
        imgs = [io.from_model(result.samples[s, b]) for s in range(S)]
        digits = max(3, len(str(S - 1)))
        for s, im in enumerate(imgs):
            io.save_png(out.path(*prefix, "samples", f"sample_{s:0{digits}d}.png"), im)
        written.append(f"samples/ ({S} PNGs)")
        std = figures.std_map(np.stack(imgs))
        img, top = figures.std_png(std)
        io.save_png(out.path(*prefix, "std.png"), img)
        written.append("std.png")
        info["std_png_white_is"] = top
        info["std_mean"] = float(std.mean())
    info["files"] = written
    return info


def image_scores(batch: Batch, b: int, result, task: str, factor: int, vgg16: Optional[str]) -> dict:
    """metrics.json entries for image ``b`` (only with --simulate)."""
    import torch
    import torch.nn.functional as F

    from brgm_pyro import figures, metrics

    truth = batch.truth[b]
    recon = io.from_model(result.mean_image()[b])
    out = {"reconstruction": metrics.image_metrics(recon, truth)}
    if vgg16:
        out["reconstruction"]["lpips"] = metrics.lpips(recon, truth, vgg16)
    if task == "inpaint":
        comp = figures.composite(io.from_model(batch.y[b]), recon, batch.mask[b])
        out["composite"] = metrics.image_metrics(comp, truth)
        if vgg16:
            out["composite"]["lpips"] = metrics.lpips(comp, truth, vgg16)
    if task == "superres":  # the baseline anyone could do: bicubic up-sampling of the observation
        R = truth.shape[0]
        up = F.interpolate(batch.y[b:b + 1].double().cpu(), size=(R, R), mode="bicubic", align_corners=False)
        out["baseline_bicubic"] = metrics.image_metrics(io.from_model(up[0].clamp(-1, 1)), truth)
    if result.samples is not None:
        per = [metrics.image_metrics(io.from_model(result.samples[s, b]), truth)
               for s in range(result.samples.shape[0])]
        out["samples_mean"] = metrics.summarize(per)
    return out


def write_posterior_nc(out: io.OutputDir, result, model, y) -> Optional[str]:
    """posterior.nc (ArviZ InferenceData, written atomically) when the method drew samples and the
    ArviZ converter is installed; returns a warning line if the export failed, else None."""
    if result.samples_w is None:
        return None
    try:
        from brgm_pyro.inference.arviz_io import to_inference_data, write_inference_data
    except ImportError:
        return None
    try:
        write_inference_data(to_inference_data(result, model, y), out.path("posterior.nc"))
    except Exception as e:  # never lose the images because of the NetCDF export
        return f"posterior.nc not written ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return None


def latent_lines(result) -> list[str]:
    """One console line per learned scalar latent: its estimate, or its posterior mean and 90 % interval."""
    out = []
    for name, row in result.scalar_summary().items():
        def fmt(v):
            return ", ".join(f"{x:.4g}" for x in v) if isinstance(v, list) else f"{v:.4g}"
        if "mean" in row:
            out.append(f"{name}: posterior mean {fmt(row['mean'])} (90 % interval {fmt(row['q05'])} .. "
                       f"{fmt(row['q95'])})")
        else:
            out.append(f"{name}: estimate {fmt(row['estimate'])}")
    return out


def history_summary(history: dict) -> dict:
    return {k: {"first": v[0], "last": v[-1], "min": float(np.nanmin(v))} for k, v in history.items() if v}


def _interrupted(result) -> bool:
    return bool(result.stopped) and "interrupt" in str(result.stopped).lower()


def guarded(fn, *args, **kwargs) -> int:
    """Run ``fn``; Ctrl-C outside inference ends with one line and status 130 (outputs are all or nothing)."""
    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- the command -----------------------------------------------------------------------------------------

@app.command()
@user_errors
def reconstruct(
    inputs: List[Path] = typer.Argument(..., help="Observation image(s) (or clean images with --simulate); "
                                                  "several are reconstructed as one batch.", show_default=False),
    task: Optional[str] = typer.Option(None, help="superres | inpaint | none (default: inpaint if --mask or "
                                                  "transparency is given, else superres)."),
    factor: int = typer.Option(8, help="Super-resolution factor; must divide the generator resolution."),
    kernel: str = typer.Option("box", help="Down-sampling kernel: box | bicubic | gauss."),
    mask: List[Path] = typer.Option([], "--mask", help="In-painting mask (white = observed, black = missing); "
                                                       "once for all inputs or once per input."),
    generator: str = typer.Option(DEFAULT_GENERATOR, help="builtin:NAME or a .pkl/.safetensors generator file."),
    class_index: Optional[int] = typer.Option(None, "--class", help="Class K of a conditional generator "
                                              "(required for those): mapping and latent statistics of class K."),
    method: str = typer.Option("map", help="Inference method: map | vi | sgld | psgld | mala | hmc | nuts."),
    steps: Optional[int] = typer.Option(None, help="Optimisation/sampling steps (default: the method's)."),
    num_samples: int = typer.Option(16, help="Posterior samples to draw (per chain for MCMC methods)."),
    chains: Optional[int] = typer.Option(None, help="MCMC chains (MCMC methods only; default: the method's)."),
    workers: int = typer.Option(1, help="Run this many MCMC chains at once, in separate CPU processes "
                                        "(MCMC methods on the CPU only; same draws as one at a time)."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = typer.Option("cpu", help="cpu | cuda."),
    out: Path = typer.Option(Path("brgm-out"), "--out", help="Output directory (created; must be new or empty)."),
    simulate: bool = typer.Option(False, "--simulate", help="INPUT is a clean image: corrupt it here and score "
                                                             "the reconstruction against it (metrics.json)."),
    sigma_pixel: Optional[str] = typer.Option(None, help="Pixel noise scale in [-1, 1] units (default: the "
                                              "model's), or 'auto' to learn it (a latent with a log-normal "
                                              "hyperprior, posterior in run.json)."),
    noise: str = typer.Option("gaussian", help="Pixel noise model: gaussian | laplace | studentt."),
    noise_per_image: bool = typer.Option(False, "--noise-per-image", help="With --sigma-pixel auto: one noise "
                                                                           "level per image instead of one."),
    prior: str = typer.Option("brgm", help="Prior on W+ (a registered name, e.g. brgm | gaussian | studentt)."),
    kernel_width: Optional[str] = typer.Option(None, help="With --kernel gauss: the kernel's std in input "
                                               "pixels (default factor/2), or 'auto' to infer it (blind)."),
    simulate_kernel_width: Optional[float] = typer.Option(None, help="With --simulate and --kernel-width auto: "
                                                          "the width used to make the observation."),
    percept: bool = typer.Option(True, "--percept/--no-percept", help="Use the generator's perceptual network "
                                                                      "when it has one."),
    lr: Optional[float] = typer.Option(None, help="Learning rate (default: the method's; MAP with --task none: "
                                                  "a constant 0.2, chosen for W+ inversion)."),
    vgg16: Optional[Path] = typer.Option(None, help="VGG16 weights file: adds LPIPS to metrics.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier brgm result in --out."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's, one per core)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Reconstruct corrupted image(s) with a deep generative prior (MAP or posterior sampling)."""
    code = guarded(run_reconstruct, inputs=inputs, task=task, factor=factor, kernel=kernel, masks=mask,
                   generator=generator, method=method, steps=steps, num_samples=num_samples, chains=chains, seed=seed,
                   workers=workers, device=device, out=out, simulate=simulate, sigma_pixel=sigma_pixel,
                   percept=percept, lr=lr, vgg16=vgg16, overwrite=overwrite, quiet=quiet, threads=threads,
                   class_index=class_index,
                   choice=ModelChoice(prior=prior, sigma_pixel=sigma_pixel, noise=noise, noise_per_image=noise_per_image,
                                      kernel_width=kernel_width, simulate_kernel_width=simulate_kernel_width))
    if code:
        raise typer.Exit(code)


def run_reconstruct(*, inputs, task, factor, kernel, masks, generator, method, steps, num_samples, seed, device,
                    out, simulate, sigma_pixel, percept, lr, vgg16, overwrite, quiet, chains=None,
                    threads=None, workers=1, class_index=None, choice: Optional["ModelChoice"] = None) -> int:
    t_start = time.perf_counter()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    timings: dict[str, float] = {}
    # 1. cheap checks first: nothing is loaded or created before the arguments make sense
    inputs = list(inputs)
    if task is None:
        task = "inpaint" if masks else "superres"
        if not masks and not simulate and inputs:
            try:  # a transparent hole in the input also means in-painting
                first = io.read_image(inputs[0], what="input image")
                if io.alpha_mask(first) is not None:
                    task = "inpaint"
            except BRGMError:
                pass  # reported properly below
    check_choice(task, TASKS, "--task")
    check_choice(kernel, KERNELS, "--kernel")
    choice = choice or ModelChoice(sigma_pixel=None if sigma_pixel is None else str(sigma_pixel))
    choice.check(task, kernel, simulate)
    METHODS = methods_registry()
    runner = METHODS.get(method)
    device = resolve_device(device)
    set_threads(threads)
    if lr is not None and method not in ("map", "vi"):
        raise BRGMError(f"--lr is the MAP/VI learning rate; --method {method} has none (drop --lr)")
    if steps is not None and steps < 1:
        raise BRGMError(f"--steps must be at least 1, got {steps}")
    if num_samples < 0:
        raise BRGMError(f"--num-samples must be >= 0, got {num_samples}")
    if chains is not None:
        if method in ("map", "vi"):
            raise BRGMError(f"--chains is for MCMC methods; --method {method} has no chains (drop --chains)")
        if chains < 1:
            raise BRGMError(f"--chains must be at least 1, got {chains}")
    if workers != 1:
        if method in ("map", "vi"):
            raise BRGMError(f"--workers runs MCMC chains in parallel; --method {method} has no chains (drop --workers)")
        if workers < 1:
            raise BRGMError(f"--workers must be at least 1, got {workers}")
        if device != "cpu":
            raise BRGMError("--workers > 1 runs chains in CPU processes; on a GPU drop --workers "
                            "(chains then run one after another on the device)")
    if vgg16 is not None:
        if not simulate:
            raise BRGMError("--vgg16 adds LPIPS to metrics.json, which needs --simulate (a clean reference)")
        if not Path(vgg16).is_file():
            raise BRGMError(f"VGG16 weights file {str(vgg16)!r} does not exist; give the path of the VGG16 file")
    outdir = io.OutputDir(out, overwrite=overwrite)  # refuses a bad --out now, before any work
    for p in inputs:  # file problems before the (slower) generator
        io.read_image(p, what="input image")

    # 2. generator, observation, model
    t0 = time.perf_counter()
    G = load_generator_checked(generator, device)
    from brgm_pyro.models.generators.loading import choose_class

    choose_class(G, class_index, required=True)  # conditional generators: --class K
    timings["load_generator_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch, corruption = prepare_batch(inputs, task=task, factor=factor, kernel=kernel, masks=list(masks),
                                      simulate=simulate, resolution=G.img_resolution, channels=G.img_channels,
                                      choice=choice)
    timings["load_inputs_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from brgm_pyro.models.brgm import build_model

    phi = default_phi(G, generator) if percept else None
    kw = choice.model_kwargs()
    if phi is not None and hasattr(phi, "to"):
        phi = phi.to(device)
    from brgm_pyro.models.generators.loading import latent_stats_for

    model = build_model(G, corruption, phi=phi, stats=latent_stats_for(G), **kw)
    y = batch.y.to(device)
    timings["build_model_s"] = time.perf_counter() - t0

    # 3. inference (Ctrl-C inside stops the optimiser and returns what exists)
    opts: dict[str, Any] = {}
    if lr is not None:
        opts["lr"] = lr
    elif task == "none" and method == "map":
        from brgm_pyro.inference.map import INVERSION_MAP_OPTIONS

        # inversion: nothing to in-fill, so no early stop to protect; optimise harder (docs/defaults.md)
        opts.update(INVERSION_MAP_OPTIONS)
    if chains is not None:
        opts["num_chains"] = chains
    if workers != 1:
        opts["workers"] = workers
    t0 = time.perf_counter()
    result = runner(model, y, steps=steps, num_samples=num_samples, seed=seed, progress=not quiet, **opts)
    timings["inference_s"] = time.perf_counter() - t0

    # 4. write everything, atomically, with Ctrl-C held back
    t0 = time.perf_counter()
    warnings_: list[str] = []
    per_image: dict[str, dict] = {}
    scores: dict[str, dict] = {}
    B = batch.y.shape[0]
    with io.sigint_deferred():
        with outdir as od:
            for b in range(B):
                prefix = () if B == 1 else (batch.names[b],)
                per_image[batch.names[b]] = write_image_outputs(od, prefix, batch, b, result, task)
                if simulate:
                    scores[batch.names[b]] = image_scores(batch, b, result, task, factor,
                                                          str(vgg16) if vgg16 else None)
            w = write_posterior_nc(od, result, model, y)
            if w:
                warnings_.append(w)
            if simulate:
                from brgm_pyro import metrics as _m

                summary = {k: _m.summarize([s[k] for s in scores.values()])
                           for k in next(iter(scores.values()))}
                io.save_json(od.path("metrics.json"), {
                    "reference": "the clean input, centre-cropped and resized to the generator",
                    "range": "images in [0, 1]; PSNR in dB (capped at 100); SSIM: Gaussian window 11, sigma 1.5",
                    "task": task, "method": method, "images": scores, "mean": summary})
            timings["write_s"] = time.perf_counter() - t0
            timings["total_s"] = time.perf_counter() - t_start
            run = {
                "command": "reconstruct",
                "argv": sys.argv,
                "started_utc": started,
                "settings": {"inputs": [str(p) for p in inputs], "task": task, "factor": factor if task == "superres"
                             else None, "kernel": kernel if task == "superres" else None,
                             "masks": [str(m) for m in masks], "generator": generator, "method": method,
                             "steps": steps, "num_samples": num_samples, "chains": chains, "seed": seed,
                             "device": device, "threads": threads, "workers": workers,
                             "out": str(out), "simulate": simulate, "sigma_pixel": sigma_pixel,
                             "model_choice": asdict(choice),
                             "percept": percept and phi is not None, "lr": lr,
                             "optimiser": {k: v for k, v in result.extra.items()
                                           if k in ("lr", "lr_decay", "lr_rampdown")} or None,
                             "vgg16": str(vgg16) if vgg16 else None},
                "seed": seed,
                "inputs": batch.inputs,
                "masks": batch.masks,
                "layout": "files in DIR" if B == 1 else "one sub-directory per input (file stem)",
                "images": per_image,
                "generator": {"spec": generator, "class": type(G).__name__, "resolution": G.img_resolution,
                              "channels": G.img_channels, "num_ws": G.num_ws, "w_dim": G.w_dim},
                "model": model.config(),
                "latents": result.scalar_summary(),
                "inference": {"method": result.method, "stopped": result.stopped,
                              "steps_done": result.timing.get("steps"), "timing": result.timing,
                              "loss_terms": history_summary(result.history),
                              "num_samples": None if result.samples is None else int(result.samples.shape[0])},
                "timings_s": timings,
                "versions": package_versions(),
                "machine": machine_info(device),
                "warnings": warnings_,
            }
            io.save_json(od.path("run.json"), run)
    for w in warnings_:
        print(f"warning: {w}", file=sys.stderr)
    where = outdir.target
    if simulate:
        m = summary["reconstruction"]
        print(f"PSNR {m['psnr']:.2f} dB  SSIM {m['ssim']:.3f}  MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}")
    if _interrupted(result):
        print(f"interrupted after {result.timing.get('steps')} steps; partial results written to {where}",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    if result.stopped:
        print(f"warning: inference stopped early: {result.stopped}", file=sys.stderr)
    for line in latent_lines(result):
        print(line)
    print(f"results written to {where} ({timings['total_s']:.1f} s)")
    return 0
