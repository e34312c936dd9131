r"""Fit the flow prior of :mod:`brgm_pyro.models.priors.flow` to a generator's mapped latents.

In the models layer (not under training/) because the RLS prior itself fits a small flow for a tiny
generator that has no prior file (``models.priors.rls``); ``brgm train-prior`` and
``brgm_pyro.training.train_prior`` use this module.

Data: ``num_train`` latents w = mapping(z) with z drawn from seed ``seed`` and ``num_val`` with z
from seed ``seed + 1`` (disjoint draws: the validation latents are never trained on). The flow is
fitted by maximum likelihood on standardised latents plus Gaussian smoothing of std ``noise``
(see :class:`~brgm_pyro.models.priors.flow.FlowConfig`), Adam with a cosine-decayed learning
rate, minibatches drawn by a seeded generator. Every ``eval_every`` steps the validation
log-likelihood (of the smoothed validation latents, a fixed noise draw) is measured; the best
state is kept and training stops after ``patience`` evaluations without improvement.

A checkpoint (``<out>.ckpt.pt``: model, optimiser, schedule, sampler state, best state) is written
atomically every ``ckpt_every`` steps; ``resume=True`` continues it and gives bit-for-bit the result
of an uninterrupted run (same device, same thread count).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.priors.flow import (FlowConfig, WFlow, flow_nats_per_dim, gaussian_nats_per_dim,
                                          probe_latents, save_flow)


def atomic_torch_save(obj, path) -> None:
    """torch.save atomically: a killed fit never leaves a half-written checkpoint."""
    from brgm_pyro.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path) -> dict:
    """A checkpoint written by :func:`train_prior` (tensors and plain containers only; no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BRGMError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from None


@torch.no_grad()
def mapped_latents(generator, num: int, seed: int, batch: int = 2000) -> Tensor:
    """``num`` latents mapping(z), z ~ N(0, I) from ``seed``: (num, d) float32 on the CPU."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    out = []
    for i in range(0, num, batch):
        z = torch.randn(min(batch, num - i), generator.z_dim, generator=g)
        w = generator.mapping(z.to(generator.device()))
        out.append((w[:, 0] if w.ndim == 3 else w).float().cpu())
    return torch.cat(out)


def fisher_diagonal(wflow: WFlow, w: Tensor, batch: int = 1024) -> Tensor:
    """E[(d log p_F / dw)^2] per coordinate over latents w (N, d): (d,), the location's Fisher information."""
    total = torch.zeros(wflow.w_dim, dtype=torch.float64)
    for i in range(0, w.shape[0], batch):
        x = w[i:i + batch].clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(wflow.log_prob(x).sum(), x)
        total += g.double().pow(2).sum(0).cpu()
    return (total / w.shape[0]).float()


def _data(generator, num_train: int, num_val: int, seed: int, noise: float) -> dict:
    train = mapped_latents(generator, num_train, seed)
    val = mapped_latents(generator, num_val, seed + 1)
    mu, sigma = train.mean(0), train.std(0).clamp_min(1e-8)
    g = torch.Generator(device="cpu").manual_seed(seed + 2)
    val_noisy = val + noise * sigma * torch.randn(val.shape, generator=g)
    return {"train": train, "val": val, "val_noisy": val_noisy, "mu": mu, "sigma": sigma}


def _new_state(wflow: WFlow, lr: float, steps: int, seed: int) -> dict:
    params = [p for p in wflow.maf.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator(device="cpu").manual_seed(seed + 3)
    return {"opt": opt, "sched": sched, "rng": g, "step": 0, "best_val": -math.inf, "best_step": 0,
            "best_state": copy.deepcopy(wflow.state_dict()), "bad": 0, "history": [], "elapsed": 0.0}


def _spec(cfg: FlowConfig, **kw) -> dict:
    return {"config": cfg.to_json(), **kw}


def train_prior(generator, out: str | Path, *, cfg: FlowConfig, num_train: int = 50_000, num_val: int = 5_000,
                steps: int = 6000, batch_size: int = 512, lr: float = 1e-3, seed: int = 0,
                eval_every: int = 250, patience: int = 6, ckpt_every: int = 500, resume: bool = False,
                stop_after: Optional[int] = None, max_minutes: Optional[float] = None,
                log: Callable[[str], None] = print) -> dict:
    """Fit a flow to ``generator``'s mapped latents; write it to ``out`` (safetensors). Returns the summary.

    ``stop_after``: stop (after a checkpoint) once this many steps are done, without writing ``out``
    (for tests and for splitting a long run); ``max_minutes`` likewise on wall time.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise BRGMError(f"{out}: the flow prior file must end in .safetensors")
    if cfg.w_dim != generator.w_dim:
        raise BRGMError(f"the flow's w_dim {cfg.w_dim} differs from the generator's {generator.w_dim}")
    if min(num_train, num_val, steps, batch_size, eval_every) < 1:
        raise BRGMError("num_train, num_val, steps, batch_size and eval_every must be positive")
    ckpt = out.with_name(out.name + ".ckpt.pt")
    spec = _spec(cfg, num_train=num_train, num_val=num_val, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                 eval_every=eval_every, patience=patience)
    device = generator.device()
    data = _data(generator, num_train, num_val, seed, cfg.noise)
    with torch.random.fork_rng(devices=[]):  # the initial weights depend on ``seed`` only
        torch.manual_seed(seed)
        wflow = WFlow(cfg, data["mu"], data["sigma"], z_dim=generator.z_dim)
    wflow.probe_z.copy_(probe_latents(generator)[0])
    wflow.probe_w.copy_(probe_latents(generator)[1])
    wflow = wflow.to(device)
    wflow.maf.requires_grad_(True)
    st = _new_state(wflow, lr, steps, seed)
    if resume and ckpt.is_file():
        _restore(st, wflow, load_checkpoint(ckpt), spec, ckpt)
        log(f"resumed {ckpt} at step {st['step']}")
    train, val_noisy = data["train"].to(device), data["val_noisy"].to(device)
    t0 = time.time() - st["elapsed"]
    stop_reason = None
    while st["step"] < steps:
        idx = torch.randint(0, num_train, (batch_size,), generator=st["rng"])
        eps = torch.randn(batch_size, cfg.w_dim, generator=st["rng"]).to(device)
        x = train[idx.to(device)] + cfg.noise * wflow.sigma * eps
        loss = -wflow.log_prob(x).mean() / cfg.w_dim
        st["opt"].zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(wflow.maf.parameters(), 10.0)
        st["opt"].step()
        st["sched"].step()
        st["step"] += 1
        if st["step"] % eval_every == 0 or st["step"] == steps:
            if _evaluate(st, wflow, val_noisy, float(loss.detach()), log, patience):
                stop_reason = f"early stop: no validation gain in {patience} evaluations"
        st["elapsed"] = time.time() - t0
        done = stop_reason is not None or st["step"] == steps
        pause = (stop_after is not None and st["step"] >= stop_after) or \
                (max_minutes is not None and st["elapsed"] > 60 * max_minutes)
        if st["step"] % ckpt_every == 0 or done or pause:
            atomic_torch_save(_checkpoint(st, wflow, spec), ckpt)
        if done:
            break
        if pause:
            log(f"paused at step {st['step']} (checkpoint {ckpt}); continue with --resume")
            return {"stopped": f"paused at step {st['step']}", "step": st["step"]}
    return _finish(wflow, st, data, out, cfg, spec, stop_reason, log)


def _evaluate(st: dict, wflow: WFlow, val: Tensor, loss: float, log, patience: int) -> bool:
    """Record the validation log-likelihood; keep the best state. True when it is time to stop."""
    v = flow_nats_per_dim(wflow, val)
    st["history"].append([st["step"], loss, v])
    if v > st["best_val"]:
        st["best_val"], st["best_step"], st["bad"] = v, st["step"], 0
        st["best_state"] = copy.deepcopy(wflow.state_dict())
    else:
        st["bad"] += 1
    log(f"step {st['step']}: train {-loss:.4f} nats/dim, validation {v:.4f} (best {st['best_val']:.4f} "
        f"at {st['best_step']})")
    return st["bad"] >= patience


def _checkpoint(st: dict, wflow: WFlow, spec: dict) -> dict:
    return {"spec": spec, "model": wflow.state_dict(), "opt": st["opt"].state_dict(),
            "sched": st["sched"].state_dict(), "rng": st["rng"].get_state(), "step": st["step"],
            "best_val": st["best_val"], "best_step": st["best_step"], "best_state": st["best_state"],
            "bad": st["bad"], "history": st["history"], "elapsed": st["elapsed"]}


def _restore(st: dict, wflow: WFlow, ck: dict, spec: dict, path: Path) -> None:
    if ck.get("spec") != spec:
        raise BRGMError(f"{path} was written by a run with other settings ({ck.get('spec')}); "
                        "use the same options, or another --out")
    wflow.load_state_dict(ck["model"])
    st["opt"].load_state_dict(ck["opt"])
    st["sched"].load_state_dict(ck["sched"])
    st["rng"].set_state(ck["rng"])
    for k in ("step", "best_val", "best_step", "best_state", "bad", "history", "elapsed"):
        st[k] = ck[k]


def _finish(wflow: WFlow, st: dict, data: dict, out: Path, cfg: FlowConfig, spec: dict, stop_reason, log) -> dict:
    wflow.load_state_dict(st["best_state"])
    wflow.requires_grad_(False)
    val = data["val"].to(wflow.mu.device)
    wflow.fisher.copy_(fisher_diagonal(wflow, val).to(wflow.fisher.device))
    summary = {"steps_run": st["step"], "best_step": st["best_step"], "stopped": stop_reason,
               "val_nats_per_dim_smoothed": st["best_val"],
               "val_nats_per_dim_clean": flow_nats_per_dim(wflow, val),
               "gaussian_val_nats_per_dim_clean": gaussian_nats_per_dim(data["val"], data["mu"], data["sigma"]),
               "train_minutes": round(st["elapsed"] / 60, 2), "history": st["history"],
               **{k: v for k, v in spec.items() if k != "config"}, "config": cfg.to_json()}
    save_flow(wflow.cpu(), out, summary)
    log(f"wrote {out}: validation {summary['val_nats_per_dim_clean']:.3f} nats/dim (Gaussian "
        f"{summary['gaussian_val_nats_per_dim_clean']:.3f}), best step {st['best_step']}")
    return summary


__all__ = ["train_prior", "mapped_latents", "fisher_diagonal"]
