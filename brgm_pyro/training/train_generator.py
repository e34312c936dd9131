"""Train the bundled faces generator (``brgm train-generator``): regression on procedural faces,
then (``adv_weight > 0``) an adversarial fine-tune. ``builtin:faces64`` is both stages;
``builtin:faces64-l1`` is stage 1 alone (docs/model_card_faces64.md).

Why regression first: every procedural face is ``draw(u)`` for a latent code
``u ~ N(0, I_40)`` (see :mod:`brgm_pyro.data.faces`). We make the generator's mapping input be
that same code (``z_dim = 40``) and train

    G.synthesis(broadcast(G.mapping(u)))  ~=  draw(u)        (L1 loss on [-1, 1] pixels)

So ``z ~ N(0, I) -> w = mapping(z)`` gives images distributed like the dataset *by construction*
(the pushforward of N(0, I) through ``draw`` is the dataset's distribution), training is a plain
supervised problem (stable, no discriminator, no mode collapse, reproducible on a CPU), and the
result is an ordinary StyleGAN2 generator: mapping network, W space, W+ synthesis, latent
statistics. What it gives up: L1 regression averages what ``u`` does not determine (nothing
here: ``draw`` is deterministic) but also smooths the categorical switches (hair style, glasses)
near their boundaries in ``u``, so codes near a boundary render a blend.

Data: training step ``s`` (0-based) uses images ``s*B .. s*B+B-1`` of the train split
(``TRAIN_SEED``), drawn on the fly (about 0.4 ms each); no image is used twice, nothing is cached,
and a resumed run sees exactly the images the uninterrupted run would have seen.

Adversarial fine-tuning (``adv_weight > 0``, usually with ``init``): the regression alone leaves
the small high-contrast features (eyes, eyebrows, mouths, glasses; ~4 % of the pixels) out: the
L1-optimal image for a feature the network cannot yet place to within a pixel is plain skin, so
the gradient never asks for one (measured: 65,000 steps, and even 600 steps of over-fitting 8
faces, draw no eyes). A small discriminator :class:`FaceDiscriminator` on 64x64 images (real:
the batch's drawings; fake: the generator's images of the same codes) supplies the missing signal,
as in pix2pix: the generator minimises

    L1(G(u), draw(u)) + adv_weight * softplus(-D(G(u)))        (non-saturating GAN loss)

and D minimises softplus(-D(real)) + softplus(D(fake)) plus a lazy R1 penalty
(gamma/2 * |grad_x D(real)|^2 with gamma 1, every 16 steps, scaled by 16). Both use Adam with
betas (0, 0.99); D's learning rate is twice G's. The L1 term keeps each code's face where
``draw`` puts it (so the mapping still pushes N(0, I) to the dataset), the adversarial term puts
the features in. ``init`` starts from another run's ``checkpoint.pt`` (weights only: a fresh
optimiser and schedule); its data stream continues where that run stopped, so no image is reused.

Optimiser: Adam (betas 0.9, 0.99), learning rate ``lr`` with a linear warm-up over the first 2 %
of the steps and a cosine decay to 2 % of ``lr`` at the end. ``w_avg`` is tracked as NVIDIA does.

Outputs in ``--out DIR``: ``checkpoint.pt`` (atomic, every ``ckpt_every`` steps and at the end;
``resume=True`` continues from it), ``generator.safetensors`` (weights + config + training
metadata), ``generator.safetensors.latent_stats.safetensors`` (10,000 mapped
draws, seed 0; the name :func:`~brgm_pyro.models.generators.loading.latent_stats_for` looks for),
``training_summary.json``, ``samples.png`` (64 random
samples next to 64 dataset images), ``log.txt``, ``summary.json``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from brgm_pyro.data.faces import (FACE_LATENT_DIM, TEST_SEED, TRAIN_SEED, draw_face, face_batch,
                                  face_grid, face_latent, to_tensor)
from brgm_pyro.errors import BRGMError
from brgm_pyro.training.evaluate import broadcast, code_recovery, generate_from_codes  # noqa: F401
from brgm_pyro.training.common import (Logger, atomic_torch_save, hardware_string, load_checkpoint,
                                       setup_device, write_json)

# The architecture of builtin:faces64 (see docs/model_card_faces64.md for why these sizes).
FACES64_ARCH = dict(z_dim=FACE_LATENT_DIM, w_dim=128, img_resolution=64, img_channels=3,
                    mapping_layers=4, channel_base=1024, channel_max=128, lr_multiplier=1.0)


def make_faces64_generator(seed: int = 0, **overrides):
    """A fresh (untrained) StyleGAN2 with the faces64 architecture (overrides for tests)."""
    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    cfg = dict(FACES64_ARCH)
    cfg.update(overrides)
    return StyleGAN2Generator(seed=seed, noise_mode="const", **cfg)


class FaceDiscriminator(torch.nn.Module):
    """D: images (B, 3, 64, 64) in [-1, 1] -> logits (B,), real > 0.

    Four stages of [3x3 conv, lrelu, 4x4 stride-2 conv, lrelu] (16, 32, 64, 128 channels; 64 -> 4
    pixels), then two dense layers. Small on purpose: it only has to notice missing or misplaced
    features, and it runs every step on a CPU (~40 % of a training step).
    """

    def __init__(self, channels=(16, 32, 64, 128), resolution: int = 64) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        c_in = 3
        for c in channels:
            layers += [torch.nn.Conv2d(c_in, c, 3, 1, 1), torch.nn.LeakyReLU(0.2),
                       torch.nn.Conv2d(c, c, 4, 2, 1), torch.nn.LeakyReLU(0.2)]
            c_in = c
        r = resolution // 2 ** len(channels)
        layers += [torch.nn.Flatten(), torch.nn.Linear(c_in * r * r, 128), torch.nn.LeakyReLU(0.2),
                   torch.nn.Linear(128, 1)]
        self.net = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)


R1_EVERY = 16
R1_GAMMA = 1.0


def discriminator_step(D, opt_d, real: torch.Tensor, fake: torch.Tensor, step: int) -> float:
    """One D update on a batch of drawings and (detached) generated images; returns D's loss."""
    r1 = step % R1_EVERY == 0
    real = real.detach().requires_grad_(r1)
    d_real, d_fake = D(real), D(fake.detach())
    loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    if r1:  # lazy R1: the penalty every R1_EVERY steps, scaled up by R1_EVERY
        (g,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        loss = loss + R1_EVERY * 0.5 * R1_GAMMA * g.pow(2).flatten(1).sum(1).mean()
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return float(loss.detach())


def train_batch(step: int, batch_size: int):
    """Codes (B, 40) float32 and images (B, 3, 64, 64) in [-1, 1] of training step ``step``."""
    idx = range(step * batch_size, (step + 1) * batch_size)
    u = np.stack([face_latent(i, "train") for i in idx])
    imgs = np.stack([draw_face(x) for x in u])
    return torch.from_numpy(u).float(), to_tensor(imgs)


def lr_at(step: int, steps: int, lr: float) -> float:
    warm = max(1, int(0.02 * steps))
    if step < warm:
        return lr * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


@torch.no_grad()
def evaluate_codes(G, n: int = 64, split: str = "test", device="cpu") -> dict:
    """PSNR (dB, images in [-1, 1] mapped to [0, 1]) and L1 of G(mapping(u_i)) vs draw(u_i)."""
    u, x = face_batch(range(n), split)
    y = generate_from_codes(G, u.to(device)).clamp(-1, 1).cpu()
    mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1.0 / mse.clamp_min(1e-12))).mean()
    return {"psnr_db": float(psnr), "l1": float((y - x).abs().mean())}


def save_faces64_generator(G, path: Path, metadata: dict) -> None:
    """Write the generator with :func:`brgm_pyro.models.generators.loading.save_generator`, and
    the training metadata beside it (``training_summary.json``)."""
    from brgm_pyro.models.generators.loading import save_generator

    save_generator(G, path)
    write_json(path.with_name("training_summary.json"), metadata)


def samples_png(G, path: Path, seed: int = 0, n: int = 64) -> None:
    """64 random samples (z ~ N(0, I), seed) next to 64 test-split dataset images; one PNG."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.z_dim, generator=g)
    with torch.no_grad():
        s = generate_from_codes(G, z.to(G.device())).cpu()
    _, x = face_batch(range(n), "test")
    left, right = face_grid(s), face_grid(x)
    gap = np.full((left.shape[0], 16, 3), 255, np.uint8)
    Image.fromarray(np.concatenate([left, gap, right], 1)).save(path)


def _initialise(G, init, batch_size: int, log) -> tuple[int, Optional[dict]]:
    """``--init``: G's weights from another run's checkpoint; (data stream start step, record)."""
    if init is None:
        return 0, None
    st0 = load_checkpoint(init)
    if st0.get("config") != G.config() or st0.get("batch_size") != batch_size:
        raise BRGMError(f"--init {str(init)!r} was written with another architecture or batch size; "
                        "use the same --batch-size")
    G.load_state_dict(st0["model"])
    data_start = int(st0.get("data_start", 0)) + int(st0["step"])
    log(f"initialised from {init} (step {st0['step']}); data stream continues at step {data_start}")
    return data_start, {"path": str(init), "step": int(st0["step"]), "data_start": int(st0.get("data_start", 0))}


def _resume(ck: Path, resume: bool, G, opt, D, opt_d, batch_size: int, data_start: int, log) -> tuple:
    """``--resume``: G, D and both optimisers from ``ck``; (step, elapsed s, loss history, evals)."""
    if not resume:
        return 0, 0.0, [], []
    if not ck.is_file():
        log(f"--resume given but {ck} does not exist: starting from scratch")
        return 0, 0.0, [], []
    st = load_checkpoint(ck)
    if st.get("config") != G.config() or st.get("batch_size") != batch_size:
        raise BRGMError(f"{ck} was written with another architecture or batch size; "
                        "use a new --out directory or the same settings")
    if ("disc" in st) != (D is not None) or int(st.get("data_start", 0)) != data_start:
        raise BRGMError(f"{ck} was written with other --adv-weight/--init settings; "
                        "use a new --out directory or the same settings")
    G.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    if D is not None:
        D.load_state_dict(st["disc"])
        opt_d.load_state_dict(st["opt_disc"])
    log(f"resumed from {ck} at step {int(st['step'])}")
    return int(st["step"]), float(st["elapsed"]), list(st["hist"]), list(st["evals"])


def _train_step(G, opt, D, opt_d, u: torch.Tensor, x: torch.Tensor, step: int,
                adv_weight: float) -> tuple[float, Optional[float]]:
    """One step: L1 of G(mapping(u)) against the drawing x (+ the adversarial term with a D);
    (loss, D's loss or None)."""
    w = G.mapping(u)
    y = G.synthesis(broadcast(w, G.num_ws))
    loss = F.l1_loss(y, x)
    d_loss = None
    if D is not None:
        d_loss = discriminator_step(D, opt_d, x, y, step)
        D.requires_grad_(False)  # G's step: gradients through D to the image only
        loss = loss + adv_weight * F.softplus(-D(y)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if D is not None:
        D.requires_grad_(True)
    G.update_w_avg(w)
    return float(loss.detach()), d_loss


def _evaluate(G, step: int, dev, log) -> tuple[int, float, float]:
    """(step, PSNR dB, L1) of G(mapping(u)) against the drawings of 64 test faces."""
    G.eval()
    ev = evaluate_codes(G, 64, "test", dev)
    G.train()
    log(f"eval step {step}: G(mapping(u)) vs draw(u) on 64 test faces: PSNR {ev['psnr_db']:.2f} dB, "
        f"L1 {ev['l1']:.4f}")
    return step, ev["psnr_db"], ev["l1"]


def _finish(G, out: Path, summary: dict, stats_samples: int, log) -> None:
    """The final files of a completed run: weights (with ``summary`` as metadata), latent stats, samples."""
    G.eval()
    G.cpu()
    summary["code_recovery_r2"] = code_recovery(G, 256)
    log("code recovery R^2 (generator / drawings) on 256 test faces: " + ", ".join(
        f"{k} {v['generator']:.2f}/{v['drawings']:.2f}" for k, v in summary["code_recovery_r2"].items()))
    meta = {"training": summary, "dataset": "brgm_pyro.data.faces (procedural cartoon faces)"}
    save_faces64_generator(G, out / "generator.safetensors", meta)
    from brgm_pyro.models.generators.stats import compute_latent_stats

    stats_path = out / "generator.safetensors.latent_stats.safetensors"
    if stats_path.exists():
        stats_path.unlink()
    compute_latent_stats(G, num_samples=stats_samples, seed=0, cache_path=stats_path)
    samples_png(G, out / "samples.png")


def _networks(seed: int, arch_overrides: Optional[dict], dev, lr: float, adv: bool) -> tuple:
    """(G, its Adam, D or None, its Adam or None), seeded: G from ``seed``, D from ``seed + 1``; the
    adversarial run uses beta1 = 0 (StyleGAN2's), the L1-only run Adam's usual 0.9."""
    torch.manual_seed(seed)
    G = make_faces64_generator(seed=seed, **(arch_overrides or {})).to(dev)
    G.train()
    betas = (0.0, 0.99) if adv else (0.9, 0.99)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=betas)
    D = opt_d = None
    if adv:
        torch.manual_seed(seed + 1)
        D = FaceDiscriminator(resolution=G.img_resolution).to(dev)
        opt_d = torch.optim.Adam(D.parameters(), lr=2 * lr, betas=betas)
    return G, opt, D, opt_d


def train_generator(out_dir: str | Path, steps: int = 4000, seed: int = 0, batch_size: int = 32,
                    lr: float = 2e-3, device: str = "cpu", threads: Optional[int] = None,
                    resume: bool = False, log_every: int = 25, ckpt_every: int = 100,
                    eval_every: int = 250, arch_overrides: Optional[dict] = None,
                    stats_samples: int = 10_000, quiet: bool = False,
                    max_minutes: Optional[float] = None, adv_weight: float = 0.0,
                    init: Optional[str | Path] = None) -> dict:
    """Train the faces generator; returns the summary dict (also written to ``summary.json``).

    ``adv_weight`` > 0 adds the adversarial term (module docstring); ``init`` starts from the
    weights of another run's ``checkpoint.pt`` (same architecture), with fresh optimisers.

    ``max_minutes`` stops early (after a checkpoint) when the wall time runs out; the run can
    then be continued with ``resume=True``. The final files are written only when ``steps`` is
    reached.
    """
    if steps < 1 or batch_size < 1:
        raise BRGMError("--steps and --batch-size must be >= 1")
    if not (adv_weight >= 0 and math.isfinite(adv_weight)):
        raise BRGMError(f"--adv-weight must be a finite number >= 0, got {adv_weight}")
    if init is not None and not Path(init).is_file():
        raise BRGMError(f"--init {str(init)!r} does not exist; give the checkpoint.pt of an earlier run")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = setup_device(device, threads)
    log = Logger(out, quiet)
    adv = adv_weight > 0
    G, opt, D, opt_d = _networks(seed, arch_overrides, dev, lr, adv)
    ck = out / "checkpoint.pt"
    data_start, init_info = _initialise(G, init, batch_size, log)
    step, elapsed, hist, evals = _resume(ck, resume, G, opt, D, opt_d, batch_size, data_start, log)
    log(f"train-generator: steps={steps} batch={batch_size} lr={lr} seed={seed} adv_weight={adv_weight} "
        f"device={dev} threads={torch.get_num_threads()} arch={G.config()}")
    t0 = time.time()
    run_loss = None
    stop_reason = None
    while step < steps:
        u, x = train_batch(data_start + step, batch_size)
        for o, f in ((opt, 1.0), (opt_d, 2.0)):
            if o is not None:
                for gparam in o.param_groups:
                    gparam["lr"] = f * lr_at(step, steps, lr)
        lv, d_loss = _train_step(G, opt, D, opt_d, u.to(dev), x.to(dev), step, adv_weight)
        step += 1
        if not math.isfinite(lv):
            raise BRGMError(f"training diverged at step {step} (loss {lv}); lower --lr")
        run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
        now = elapsed + time.time() - t0
        if step % log_every == 0 or step == steps:
            hist.append((step, run_loss))
            dmsg = f" D {d_loss:.3f}" if d_loss is not None else ""
            log(f"step {step}/{steps} loss {lv:.4f} (avg {run_loss:.4f}){dmsg} lr {lr_at(step - 1, steps, lr):.2e} "
                f"{now:.0f} s")
        if step % eval_every == 0 or step == steps:
            evals.append(_evaluate(G, step, dev, log))
        timed_out = max_minutes is not None and (time.time() - t0) > 60 * max_minutes
        if step % ckpt_every == 0 or step == steps or timed_out:
            atomic_torch_save({"model": G.state_dict(), "opt": opt.state_dict(), "step": step,
                               "elapsed": elapsed + time.time() - t0, "hist": hist, "evals": evals,
                               "config": G.config(), "batch_size": batch_size, "seed": seed, "data_start": data_start,
                               **({"disc": D.state_dict(), "opt_disc": opt_d.state_dict()} if adv else {})}, ck)
        if timed_out and step < steps:
            stop_reason = f"stopped at step {step} after --max-minutes {max_minutes}; continue with --resume"
            log(stop_reason)
            break
    wall = elapsed + time.time() - t0
    summary = {"steps_done": step, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "train_seed": TRAIN_SEED, "test_seed": TEST_SEED,
               "adv_weight": adv_weight, "init": init_info,
               "train_images": f"train split images {data_start * batch_size}.."
                               f"{(data_start + step) * batch_size - 1}",
               "wall_time_s": round(wall, 1), "hardware": hardware_string(str(dev)),
               "final_train_loss": hist[-1][1] if hist else None,  # L1 (+ adv_weight * GAN term)
               "test_eval": evals[-1] if evals else None, "config": G.config()}
    if stop_reason is None:
        _finish(G, out, summary, stats_samples, log)
        log(f"done: wrote {out / 'generator.safetensors'}, latent stats, samples.png; wall {wall:.0f} s")
    summary["stopped"] = stop_reason
    write_json(out / "summary.json", summary)
    return summary
