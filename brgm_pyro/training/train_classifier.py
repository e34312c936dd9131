"""Classifiers on Fashion-MNIST: the perceptual network of ``builtin:fashion32`` and its judge.

Two networks, trained the same way from different seeds and widths so that the one whose
features enter the likelihood is not also the one that scores the result:

* ``percept``: a :class:`~brgm_pyro.models.perceptual.faces_encoder.FacesEncoder` with one input
  channel, three stages (32, 64, 128 channels) at 32x32, a 10-class head; its normalised stage
  activations are ``phi`` (LPIPS-style, :class:`EncoderFeatures`), as for faces64.
* ``judge``: the same architecture, wider (48, 96, 192) and another seed; its 256-d penultimate
  activations are the feature space of the Frechet distance, precision and recall, and its
  normalised stage activations give the evaluation LPIPS (``docs/model_card_fashion32.md``).

Loss: cross-entropy on the training split (55,000 images), Adam 1e-3 (x0.2 after 70 % of the
steps), batch 128. Each image is degraded at random as the corrupted observations phi will see:
a horizontal flip with probability 1/2; with probability 1/2 a box down-sampling by 2, 4 or 8
followed by area (pixel-replicating) up-sampling, which is how phi enlarges a small observation;
Gaussian noise with sigma up to 0.1. Validation accuracy (clean validation images) is logged.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from brgm_pyro.models.perceptual.faces_encoder import FacesEncoder, save_encoder
from brgm_pyro.training.common import Logger, hardware_string, setup_device, write_json

ROLES = {"percept": dict(channels=(32, 64, 128), seed=0),
         "judge": dict(channels=(48, 96, 192), seed=1)}


def degrade(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip, low-pass (half of the images: down 2/4/8, area up) and noise; (B, 1, H, W) -> same."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
    choice = torch.randint(0, 6, (b,), generator=gen)
    for c, f in ((3, 2), (4, 4), (5, 8)):
        idx = (choice == c).nonzero().flatten()
        if len(idx):
            out[idx] = F.interpolate(F.avg_pool2d(out[idx], f), size=(h, w), mode="area")
    sig = 0.1 * torch.rand(b, 1, 1, 1, generator=gen)
    return out + sig * torch.randn(out.shape, generator=gen)


def make_classifier(role: str) -> FacesEncoder:
    """A fresh (untrained) classifier of ``role`` (``percept`` or ``judge``)."""
    spec = ROLES[role]
    torch.manual_seed(spec["seed"])
    return FacesEncoder(in_channels=1, channels=spec["channels"], out_dim=10, resolution=32)


@torch.no_grad()
def accuracy(net: FacesEncoder, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy of ``net`` on images (N, 1, 32, 32) in [-1, 1] with labels (N,)."""
    net.eval()
    hits = sum(int((net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum()) for i in range(0, len(x), batch))
    net.train()
    return hits / len(x)


def train_classifier(out_dir: str | Path, role: str = "percept", steps: int = 1500, batch_size: int = 128,
                     lr: float = 1e-3, threads: Optional[int] = None, root: Optional[str] = None,
                     log_every: int = 100) -> dict:
    """Train one classifier; writes ``{role}.safetensors`` (weights, config, record) and ``{role}_summary.json``."""
    from brgm_pyro.data.fashion_mnist import load_split, to_tensor

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = setup_device("cpu", threads)
    log = Logger(out)
    xtr, ytr = load_split("train", root)
    xva, yva = load_split("val", root)
    xtr, xva = to_tensor(xtr), to_tensor(xva)
    ytr, yva = torch.from_numpy(ytr), torch.from_numpy(yva)
    net = make_classifier(role).to(dev).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 0.7 * steps else 0.2)
    gen = torch.Generator().manual_seed(100 + ROLES[role]["seed"])
    t0 = time.time()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xtr), (batch_size,), generator=gen)
        loss = F.cross_entropy(net(degrade(xtr[idx], gen)), ytr[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0 or step == steps:
            log(f"{role} step {step}/{steps} loss {float(loss):.3f} {time.time() - t0:.0f} s")
    acc = accuracy(net, xva, yva)
    log(f"{role}: validation accuracy {acc:.4f} (5,000 clean validation images)")
    summary = {"role": role, "steps": steps, "batch_size": batch_size, "lr": lr, "val_accuracy": acc,
               "wall_time_s": round(time.time() - t0, 1), "hardware": hardware_string("cpu"),
               "data": "Fashion-MNIST training images 0..54,999; accuracy on validation 55,000..59,999"}
    save_encoder(net.cpu().eval(), out / f"{role}.safetensors", metadata={"training": summary})
    write_json(out / f"{role}_summary.json", summary)
    return summary
