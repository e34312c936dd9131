"""Adversarial StyleGAN2 training on real photographs (``brgm train-generator --data fashion-mnist``).

The recipe of NVIDIA's stylegan2-ada-pytorch at small resolution (its CIFAR-10 setting), written
for a CPU: the generator is our :class:`~brgm_pyro.models.generators.stylegan2.StyleGAN2Generator`
(z ~ N(0, I) through the mapping network, W+ synthesis), the discriminator a small residual
network with a minibatch-std layer (:class:`ResDiscriminator`). Losses (non-saturating logistic):

    D:  softplus(D(G(z))) + softplus(-D(x)) + [every R1_EVERY steps] R1_EVERY * gamma/2 |grad_x D(x)|^2
    G:  softplus(-D(G(z)))

Adam with betas (0, 0.99), lr 0.0025 for both; D's optimiser is the lazy-regularisation-corrected
one (lr and betas to the power R1_EVERY / (R1_EVERY + 1), as NVIDIA). The shipped weights are an
exponential moving average of G (half-life ``ema_kimg`` thousand images, ramped up over the
first images as NVIDIA's ``ema_rampup`` 0.05). No style mixing, no path-length regulariser and no
augmentation (the CIFAR setting; 55,000 images are enough for D not to over-fit at this size,
checked by the validation-image D score logged every evaluation).

Data: minibatch ``s`` is drawn with a generator seeded by ``(seed, s)`` from the training split
(55,000 images), so a resumed run sees exactly the minibatches the uninterrupted run would have.
Checkpoints (G, G_ema, D, both optimisers, step, elapsed) are written atomically every
``ckpt_every`` steps and when ``max_minutes`` runs out; ``resume=True`` continues.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.training.common import (Logger, atomic_torch_save, hardware_string, load_checkpoint,
                                       setup_device, write_json)

# builtin:fashion32: 32x32, one channel, W+ of 8 x 128 (docs/model_card_fashion32.md).
FASHION32_ARCH = dict(z_dim=64, w_dim=128, img_resolution=32, img_channels=1, mapping_layers=4,
                      channel_base=1024, channel_max=128, lr_multiplier=0.01)
R1_EVERY = 16


def make_fashion32_generator(seed: int = 0, **overrides):
    from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

    cfg = dict(FASHION32_ARCH)
    cfg.update(overrides)
    return StyleGAN2Generator(seed=seed, noise_mode="const", **cfg)


class EqConv2d(nn.Module):
    """Equalized-learning-rate conv (NVIDIA): weight ~ N(0, 1) used as weight / sqrt(fan_in), so
    Adam's step size means the same for every layer."""

    def __init__(self, c_in: int, c_out: int, k: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.gain, self.pad = 1.0 / math.sqrt(c_in * k * k), k // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.gain, self.bias, padding=self.pad)


class EqLinear(nn.Module):
    """Equalized-learning-rate dense layer: (B, n_in) -> (B, n_out)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(n_out))
        self.gain = 1.0 / math.sqrt(n_in)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.gain, self.bias)


class _ResBlock(nn.Module):
    """Two 3x3 convs and a 2x down-sampling, with a 1x1 skip; (B, c_in, H, W) -> (B, c_out, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqConv2d(c_in, c_in, 3)
        self.conv1 = EqConv2d(c_in, c_out, 3)
        self.skip = EqConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        y = F.leaky_relu(self.conv0(x), 0.2) * math.sqrt(2)
        y = F.avg_pool2d(F.leaky_relu(self.conv1(y), 0.2) * math.sqrt(2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) * math.sqrt(0.5)


class ResDiscriminator(nn.Module):
    """D: images (B, C, R, R) in [-1, 1] -> logits (B,), real > 0.

    fromRGB 1x1 conv, residual blocks down to 4x4 (channels ``channels``), NVIDIA's minibatch
    standard deviation (groups of ``mbstd_group``, one feature), a 3x3 conv and two dense layers.
    """

    def __init__(self, img_channels: int = 1, resolution: int = 32, channels=(32, 64, 128),
                 mbstd_group: int = 4) -> None:
        super().__init__()
        if resolution // 2 ** len(channels) != 4:
            raise BRGMError(f"ResDiscriminator: {len(channels)} blocks do not take {resolution} px to 4")
        self.mbstd_group = mbstd_group
        self.from_rgb = EqConv2d(img_channels, channels[0], 1)
        ch = [channels[0], *channels]
        self.blocks = nn.ModuleList(_ResBlock(a, b) for a, b in zip(ch[:-1], ch[1:]))
        c = channels[-1]
        self.conv = EqConv2d(c + 1, c, 3)
        self.fc = EqLinear(c * 16, c)
        self.out = EqLinear(c, 1)

    def _mbstd(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        g = min(self.mbstd_group, b)
        if b % g:
            g = 1
        y = x.reshape(g, -1, c, h, w)
        y = (y - y.mean(0)).pow(2).mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (b/g,)
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)
        return torch.cat([x, y], 1)

    def forward(self, x: Tensor) -> Tensor:
        g = math.sqrt(2)  # NVIDIA's lrelu gain keeps activations at unit scale
        x = F.leaky_relu(self.from_rgb(x), 0.2) * g
        for blk in self.blocks:
            x = blk(x)
        x = F.leaky_relu(self.conv(self._mbstd(x)), 0.2) * g
        x = F.leaky_relu(self.fc(x.flatten(1)), 0.2) * g
        return self.out(x).squeeze(1)


def minibatch(images: Tensor, step: int, batch_size: int, seed: int) -> Tensor:
    """Minibatch ``step``: indices from a generator seeded by (seed, step); (B, 1, R, R) in [-1, 1]."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    idx = torch.randint(0, images.shape[0], (batch_size,), generator=g)
    return images[idx].float().div(127.5).sub(1.0).unsqueeze(1)


def d_step(G, D, opt_d, real: Tensor, z: Tensor, step: int, gamma: float) -> dict:
    """One D update; returns its logistic loss, R1 penalty (or None) and mean logits."""
    with torch.no_grad():
        fake = G.synthesis(_broadcast(G.mapping(z), G.num_ws))
    r1 = step % R1_EVERY == 0
    real = real.detach().requires_grad_(r1)
    d_real, d_fake = D(real), D(fake)
    loss = F.softplus(d_fake).mean() + F.softplus(-d_real).mean()
    pen = None
    if r1:
        (g,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
        pen = g.pow(2).flatten(1).sum(1).mean()
        loss = loss + R1_EVERY * 0.5 * gamma * pen
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return {"d_loss": float(loss.detach()), "r1": None if pen is None else float(pen.detach()),
            "d_real": float(d_real.detach().mean()), "d_fake": float(d_fake.detach().mean())}


def g_step(G, D, opt, z: Tensor) -> float:
    """One G update with the non-saturating loss; updates G's running w_avg."""
    w = G.mapping(z)
    fake = G.synthesis(_broadcast(w, G.num_ws))
    D.requires_grad_(False)
    loss = F.softplus(-D(fake)).mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    D.requires_grad_(True)
    G.update_w_avg(w.detach())
    return float(loss.detach())


def _broadcast(w: Tensor, num_ws: int) -> Tensor:
    return w.unsqueeze(1).expand(-1, num_ws, -1)


@torch.no_grad()
def ema_update(G_ema, G, step: int, batch_size: int, ema_kimg: float) -> None:
    """G_ema <- beta G_ema + (1 - beta) G, half-life min(ema_kimg * 1000, 0.05 * images seen) images."""
    nimg = (step + 1) * batch_size
    half = min(ema_kimg * 1000.0, 0.05 * nimg)
    beta = 0.5 ** (batch_size / max(half, 1e-8))
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.lerp_(p, 1.0 - beta)
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def _optimisers(G, D, lr: float):
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.99), eps=1e-8)
    c = R1_EVERY / (R1_EVERY + 1)  # NVIDIA's lazy-regularisation correction of D's optimiser
    opt_d = torch.optim.Adam(D.parameters(), lr=lr * c, betas=(0.0, 0.99 ** c), eps=1e-8)
    return opt, opt_d


def _state(G, G_ema, D, opt, opt_d, step, elapsed, hist, spec) -> dict:
    return {"G": G.state_dict(), "G_ema": G_ema.state_dict(), "D": D.state_dict(), "opt": opt.state_dict(),
            "opt_d": opt_d.state_dict(), "step": step, "elapsed": elapsed, "hist": hist, "spec": spec}


def _restore(ck: Path, spec: dict, G, G_ema, D, opt, opt_d, log) -> tuple[int, float, list]:
    st = load_checkpoint(ck)
    if st.get("spec") != spec:
        raise BRGMError(f"{ck} was written with other settings ({st.get('spec')}); use a new --out "
                        "directory or the same settings")
    G.load_state_dict(st["G"])
    G_ema.load_state_dict(st["G_ema"])
    D.load_state_dict(st["D"])
    opt.load_state_dict(st["opt"])
    opt_d.load_state_dict(st["opt_d"])
    log(f"resumed from {ck} at step {int(st['step'])}")
    return int(st["step"]), float(st["elapsed"]), list(st["hist"])


@torch.no_grad()
def sample_grid(G, n: int = 64, seed: int = 0) -> np.ndarray:
    """An 8-column uint8 grid (H, W) of n samples z ~ N(0, I) (seed)."""
    z = torch.randn(n, G.z_dim, generator=torch.Generator().manual_seed(seed))
    x = G.synthesis(_broadcast(G.mapping(z), G.num_ws)).clamp(-1, 1)
    return image_grid(x)


def image_grid(x: Tensor, cols: int = 8) -> np.ndarray:
    """(N, 1, R, R) in [-1, 1] -> uint8 (rows*(R+2), cols*(R+2)) grid with 2-px white gaps."""
    n, _, r, _ = x.shape
    rows = math.ceil(n / cols)
    out = np.full((rows * (r + 2), cols * (r + 2)), 255, np.uint8)
    a = ((x[:, 0].cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    for k in range(n):
        i, j = divmod(k, cols)
        out[i * (r + 2) + 1: i * (r + 2) + 1 + r, j * (r + 2) + 1: j * (r + 2) + 1 + r] = a[k]
    return out


def train_gan(out_dir: str | Path, steps: int = 20_000, seed: int = 0, batch_size: int = 32,
              lr: float = 0.0025, gamma: float = 0.01, ema_kimg: float = 10.0, device: str = "cpu",
              threads: Optional[int] = None, resume: bool = False, log_every: int = 50,
              ckpt_every: int = 250, max_minutes: Optional[float] = None, root: Optional[str] = None,
              arch_overrides: Optional[dict] = None, quiet: bool = False) -> dict:
    """Train the fashion32 GAN; returns the summary (also ``summary.json``).

    Writes ``checkpoint.pt`` (resumable), ``log.txt``, ``samples_STEP.png`` every ``10 * ckpt_every``
    steps, and when ``steps`` is reached the EMA generator as ``generator.safetensors`` (weights +
    config + training record) with its latent statistics beside it.
    """
    from brgm_pyro.data.fashion_mnist import load_split

    if steps < 1 or batch_size < 2:
        raise BRGMError("--steps must be >= 1 and --batch-size >= 2")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = setup_device(device, threads)
    log = Logger(out, quiet)
    imgs = torch.from_numpy(load_split("train", root)[0])
    torch.manual_seed(seed)
    G = make_fashion32_generator(seed=seed, **(arch_overrides or {})).to(dev).train()
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    torch.manual_seed(seed + 1)
    D = ResDiscriminator(G.img_channels, G.img_resolution).to(dev)
    opt, opt_d = _optimisers(G, D, lr)
    spec = {"config": G.config(), "batch_size": batch_size, "lr": lr, "gamma": gamma, "seed": seed,
            "ema_kimg": ema_kimg, "steps": steps}
    ck = out / "checkpoint.pt"
    step, elapsed, hist = (_restore(ck, spec, G, G_ema, D, opt, opt_d, log) if resume and ck.is_file()
                           else (0, 0.0, []))
    log(f"train-generator --data fashion-mnist: {spec}, device {dev}, {torch.get_num_threads()} thread(s)")
    t0, stop = time.time(), None
    while step < steps:
        real = minibatch(imgs, step, batch_size, seed).to(dev)
        gz = torch.Generator().manual_seed(int(seed) * 7_919 + 2 * step)
        z1, z2 = (torch.randn(batch_size, G.z_dim, generator=gz).to(dev) for _ in range(2))
        dst = d_step(G, D, opt_d, real, z1, step, gamma)
        gl = g_step(G, D, opt, z2)
        ema_update(G_ema, G, step, batch_size, ema_kimg)
        step += 1
        if not math.isfinite(gl) or not math.isfinite(dst["d_loss"]):
            raise BRGMError(f"training diverged at step {step}; lower --lr or raise --gamma")
        now = elapsed + time.time() - t0
        if step % log_every == 0 or step == steps:
            hist.append((step, gl, dst["d_loss"], dst["d_real"], dst["d_fake"]))
            log(f"step {step}/{steps} G {gl:.3f} D {dst['d_loss']:.3f} D(real) {dst['d_real']:+.2f} "
                f"D(fake) {dst['d_fake']:+.2f} {now:.0f} s")
        timed_out = max_minutes is not None and time.time() - t0 > 60 * max_minutes
        if step % ckpt_every == 0 or step == steps or timed_out:
            atomic_torch_save(_state(G, G_ema, D, opt, opt_d, step, now, hist, spec), ck)
        if step % (10 * ckpt_every) == 0:
            _save_png(sample_grid(G_ema), out / f"samples_{step:06d}.png")
        if timed_out and step < steps:
            stop = f"stopped at step {step} after --max-minutes {max_minutes}; continue with --resume"
            log(stop)
            break
    summary = {"steps_done": step, **spec, "wall_time_s": round(elapsed + time.time() - t0, 1),
               "hardware": hardware_string(str(dev)), "stopped": stop,
               "train_images": "Fashion-MNIST training images 0..54,999 (padded to 32x32)"}
    # A run stopped by --max-minutes still writes the EMA generator it has (labelled by steps_done),
    # so a long run can be used and evaluated while it is continued with --resume.
    finish_generator(copy.deepcopy(G_ema).cpu(), out, summary, log)
    write_json(out / "summary.json", summary)
    return summary


def _save_png(a: np.ndarray, path: Path) -> None:
    from PIL import Image

    from brgm_pyro.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")


def finish_generator(G, out: Path, summary: dict, log, stats_samples: int = 10_000) -> Path:
    """Write the EMA generator (``generator.safetensors``), its latent statistics and a sample grid."""
    from brgm_pyro.models.generators.loading import save_generator
    from brgm_pyro.models.generators.stats import compute_latent_stats

    G.eval()
    path = out / "generator.safetensors"
    save_generator(G, path)
    write_json(out / "training_summary.json", {"training": summary, "dataset": "Fashion-MNIST (MIT), padded 32x32"})
    stats = out / "generator.safetensors.latent_stats.safetensors"
    if stats.exists():
        stats.unlink()
    compute_latent_stats(G, num_samples=stats_samples, seed=0, cache_path=stats)
    _save_png(sample_grid(G), out / "samples.png")
    log(f"done: wrote {path}, latent statistics and samples.png")
    return path
