"""Train the bundled faces generator (``brgm train-generator``) by regression on procedural faces.

Why regression and not a GAN: every procedural face is ``draw(u)`` for a latent code
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


def broadcast(w: torch.Tensor, num_ws: int) -> torch.Tensor:
    """(B, d) -> (B, num_ws, d)."""
    return w.unsqueeze(1).expand(-1, num_ws, -1)


def generate_from_codes(G, u: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, 64, 64) of face codes u (B, 40) through mapping and synthesis."""
    return G.synthesis(broadcast(G.mapping(u), G.num_ws))


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


def train_generator(out_dir: str | Path, steps: int = 4000, seed: int = 0, batch_size: int = 32,
                    lr: float = 2e-3, device: str = "cpu", threads: Optional[int] = None,
                    resume: bool = False, log_every: int = 25, ckpt_every: int = 100,
                    eval_every: int = 250, arch_overrides: Optional[dict] = None,
                    stats_samples: int = 10_000, quiet: bool = False,
                    max_minutes: Optional[float] = None) -> dict:
    """Train the faces generator; returns the summary dict (also written to ``summary.json``).

    ``max_minutes`` stops early (after a checkpoint) when the wall time runs out; the run can
    then be continued with ``resume=True``. The final files are written only when ``steps`` is
    reached.
    """
    if steps < 1 or batch_size < 1:
        raise BRGMError("--steps and --batch-size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = setup_device(device, threads)
    log = Logger(out, quiet)
    torch.manual_seed(seed)
    G = make_faces64_generator(seed=seed, **(arch_overrides or {})).to(dev)
    G.train()
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.9, 0.99))
    step, elapsed, hist, evals = 0, 0.0, [], []
    ck = out / "checkpoint.pt"
    if resume and ck.is_file():
        st = load_checkpoint(ck)
        if st.get("config") != G.config() or st.get("batch_size") != batch_size:
            raise BRGMError(f"{ck} was written with another architecture or batch size; "
                            "use a new --out directory or the same settings")
        G.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        step, elapsed = int(st["step"]), float(st["elapsed"])
        hist, evals = list(st["hist"]), list(st["evals"])
        log(f"resumed from {ck} at step {step}")
    elif resume:
        log(f"--resume given but {ck} does not exist: starting from scratch")
    log(f"train-generator: steps={steps} batch={batch_size} lr={lr} seed={seed} device={dev} "
        f"threads={torch.get_num_threads()} arch={G.config()}")
    t0 = time.time()
    run_loss = None
    stop_reason = None
    while step < steps:
        u, x = train_batch(step, batch_size)
        u, x = u.to(dev), x.to(dev)
        for gparam in opt.param_groups:
            gparam["lr"] = lr_at(step, steps, lr)
        w = G.mapping(u)
        y = G.synthesis(broadcast(w, G.num_ws))
        loss = F.l1_loss(y, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        G.update_w_avg(w)
        step += 1
        lv = float(loss.detach())
        if not math.isfinite(lv):
            raise BRGMError(f"training diverged at step {step} (loss {lv}); lower --lr")
        run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
        now = elapsed + time.time() - t0
        if step % log_every == 0 or step == steps:
            hist.append((step, run_loss))
            log(f"step {step}/{steps} L1 {lv:.4f} (avg {run_loss:.4f}) lr {lr_at(step - 1, steps, lr):.2e} "
                f"{now:.0f} s")
        if step % eval_every == 0 or step == steps:
            G.eval()
            ev = evaluate_codes(G, 64, "test", dev)
            G.train()
            evals.append((step, ev["psnr_db"], ev["l1"]))
            log(f"eval step {step}: G(mapping(u)) vs draw(u) on 64 test faces: PSNR {ev['psnr_db']:.2f} dB, "
                f"L1 {ev['l1']:.4f}")
        timed_out = max_minutes is not None and (time.time() - t0) > 60 * max_minutes
        if step % ckpt_every == 0 or step == steps or timed_out:
            atomic_torch_save({"model": G.state_dict(), "opt": opt.state_dict(), "step": step,
                               "elapsed": elapsed + time.time() - t0, "hist": hist, "evals": evals,
                               "config": G.config(), "batch_size": batch_size, "seed": seed}, ck)
        if timed_out and step < steps:
            stop_reason = f"stopped at step {step} after --max-minutes {max_minutes}; continue with --resume"
            log(stop_reason)
            break
    wall = elapsed + time.time() - t0
    summary = {"steps_done": step, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
               "train_seed": TRAIN_SEED, "test_seed": TEST_SEED,
               "train_images": f"train split images 0..{step * batch_size - 1}",
               "wall_time_s": round(wall, 1), "hardware": hardware_string(str(dev)),
               "final_train_l1": hist[-1][1] if hist else None,
               "test_eval": evals[-1] if evals else None, "config": G.config()}
    if stop_reason is None:
        G.eval()
        G.cpu()
        meta = {"training": summary, "dataset": "brgm_pyro.data.faces (procedural cartoon faces)"}
        save_faces64_generator(G, out / "generator.safetensors", meta)
        from brgm_pyro.models.generators.stats import compute_latent_stats

        stats_path = out / "generator.safetensors.latent_stats.safetensors"
        if stats_path.exists():
            stats_path.unlink()
        compute_latent_stats(G, num_samples=stats_samples, seed=0, cache_path=stats_path)
        samples_png(G, out / "samples.png")
        log(f"done: wrote {out / 'generator.safetensors'}, latent stats, samples.png; wall {wall:.0f} s")
    summary["stopped"] = stop_reason
    write_json(out / "summary.json", summary)
    return summary
