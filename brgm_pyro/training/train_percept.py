"""Train the perceptual network of ``builtin:faces64`` (``brgm train-percept``).

A :class:`~brgm_pyro.models.perceptual.faces_encoder.FacesEncoder` learns to predict the latent
code ``u`` (k = 40) of a procedural training face from its image (mean squared error; ``u`` is
N(0, I) so the loss starts near 1). Each image is degraded at random to mimic the corrupted
observations phi will see: with probability 1/2 it is box-downsampled by 2, 4 or 8 and
bilinearly upsampled back, and Gaussian pixel noise (sigma up to 0.05) is added.

Outputs in ``--out DIR``: ``percept.safetensors`` (weights + config + training metadata),
``checkpoint.pt`` (atomic, every ``ckpt_every`` steps; ``resume=True`` continues from it),
``log.txt`` and ``summary.json``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from brgm_pyro.data.faces import FACE_LATENT_DIM, TEST_SEED, TRAIN_SEED, face_batch
from brgm_pyro.models.perceptual.faces_encoder import FacesEncoder, save_encoder
from brgm_pyro.training.common import (Logger, atomic_torch_save, face_training_data, hardware_string,
                                       images_from_uint8, load_checkpoint, setup_device, write_json)


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random low-pass (down 2/4/8 then up, half of the images) and noise; (B, 3, H, W) -> same."""
    B, _, H, W = x.shape
    out = x.clone()
    choice = torch.randint(0, 6, (B,), generator=gen)
    for c, f in ((3, 2), (4, 4), (5, 8)):
        idx = (choice == c).nonzero().flatten().to(x.device)
        if len(idx):
            lo = F.avg_pool2d(x[idx], f)
            out[idx] = F.interpolate(lo, size=(H, W), mode="bilinear", align_corners=False)
    sig = 0.05 * torch.rand(B, 1, 1, 1, generator=gen).to(x.device)
    return out + sig * torch.randn(x.shape, generator=gen).to(x.device)


def train_percept(out_dir: str | Path, steps: int = 1500, seed: int = 0, batch_size: int = 64,
                  num_train: int = 20_000, lr: float = 1e-3, device: str = "cpu",
                  threads: Optional[int] = None, resume: bool = False, log_every: int = 50,
                  ckpt_every: int = 200, data_cache: Optional[str | Path] = None,
                  quiet: bool = False) -> dict:
    """Train the faces encoder; returns the summary dict (also written to ``summary.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = setup_device(device, threads)
    log = Logger(out, quiet)
    torch.manual_seed(seed)
    enc = FacesEncoder(out_dim=FACE_LATENT_DIM).to(dev)
    opt = torch.optim.Adam(enc.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 0.7 * steps else 0.2)
    gen = torch.Generator().manual_seed(seed + 1)
    step, elapsed, hist = 0, 0.0, []
    ck = out / "checkpoint.pt"
    if resume and ck.is_file():
        st = load_checkpoint(ck)
        enc.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        gen.set_state(st["gen"])
        step, elapsed, hist = int(st["step"]), float(st["elapsed"]), list(st["hist"])
        log(f"resumed from {ck} at step {step}")
    u_all, img_all = face_training_data(num_train, data_cache, log)
    log(f"train-percept: steps={steps} batch={batch_size} lr={lr} seed={seed} device={dev} "
        f"threads={torch.get_num_threads()} num_train={num_train}")
    t0 = time.time()
    run_loss = None
    while step < steps:
        idx = torch.randint(0, num_train, (batch_size,), generator=gen)
        x = degrade(images_from_uint8(img_all[idx], dev), gen)
        u = u_all[idx].to(dev)
        loss = F.mse_loss(enc(x), u)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        lv = float(loss.detach())
        run_loss = lv if run_loss is None else 0.95 * run_loss + 0.05 * lv
        if step % log_every == 0 or step == steps:
            hist.append((step, run_loss))
            log(f"step {step}/{steps} loss {lv:.4f} (avg {run_loss:.4f}) "
                f"{(time.time() - t0 + elapsed):.0f} s")
        if step % ckpt_every == 0 or step == steps:
            atomic_torch_save({"model": enc.state_dict(), "opt": opt.state_dict(),
                               "sched": sched.state_dict(), "gen": gen.get_state(), "step": step,
                               "elapsed": elapsed + time.time() - t0, "hist": hist}, ck)
    wall = elapsed + time.time() - t0
    # held-out error on test faces (clean images)
    enc.eval()
    with torch.no_grad():
        u_te, x_te = face_batch(range(256), "test")
        test_mse = float(F.mse_loss(enc(x_te.to(dev)), u_te.to(dev)))
    summary = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "num_train": num_train,
               "train_seed": TRAIN_SEED, "test_seed": TEST_SEED, "wall_time_s": round(wall, 1),
               "hardware": hardware_string(str(dev)), "final_train_loss": hist[-1][1] if hist else None,
               "test_mse_256": test_mse}
    save_encoder(enc.cpu(), out / "percept.safetensors", metadata={"training": summary})
    write_json(out / "summary.json", summary)
    log(f"done: test MSE on 256 test faces {test_mse:.4f} (u ~ N(0, I): predicting 0 gives 1.0); "
        f"wall {wall:.0f} s")
    return summary
