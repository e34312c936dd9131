"""Latent statistics of a generator's W space, estimated through its mapping network.

The BRGM prior (paper Eq. 2) is ``w_i ~ N(mu, sigma^2)`` with mu and sigma computed from
10,000 latents ``w = mapping(z)``, ``z ~ N(0, I)``. We keep both forms:

* ``mu`` (d,) and ``sigma`` (d,): per-dimension mean and standard deviation;
* ``sigma_scalar``: one standard deviation shared by all dimensions, the RMS of ``sigma``;
* ``sigma_ref``: the reference code's scalar, ``sqrt(sum_j var_j)`` (the RMS distance of a
  sample to ``w_avg``; it is ``sqrt(d)`` times ``sigma_scalar``), kept for comparisons.

Results are seeded and cached in memory per generator and optionally on disk
(``cache_path``; a small safetensors file).

Conditional generators (``c_dim > 0``) map ``z`` with the class chosen by ``generator.class_index``:
the statistics are per class (``class_index`` is part of the cache key and stored with them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from brgm_pyro.models.generators.base import Generator


@dataclass
class LatentStats:
    mu: Tensor  # (d,)
    sigma: Tensor  # (d,)
    sigma_scalar: float
    sigma_ref: float
    num_samples: int
    seed: int
    class_index: Optional[int] = None  # the class of a conditional generator (None: unconditional)

    def to(self, device) -> "LatentStats":
        return LatentStats(self.mu.to(device), self.sigma.to(device), self.sigma_scalar,
                           self.sigma_ref, self.num_samples, self.seed, self.class_index)

    def save(self, path: str | os.PathLike) -> None:
        from safetensors.torch import save_file

        meta = {"num_samples": str(self.num_samples), "seed": str(self.seed),
                "sigma_scalar": repr(self.sigma_scalar), "sigma_ref": repr(self.sigma_ref),
                "class_index": "" if self.class_index is None else str(self.class_index)}
        from brgm_pyro.io import atomic_path

        # a unique temporary name: several processes (dataset ranks) may fill the same cache at once
        with atomic_path(path) as tmp:
            save_file({"mu": self.mu.detach().cpu().contiguous(),
                       "sigma": self.sigma.detach().cpu().contiguous()}, tmp, metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LatentStats":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            mu, sigma = f.get_tensor("mu"), f.get_tensor("sigma")
        k = meta.get("class_index", "")
        return cls(mu, sigma, float(meta["sigma_scalar"]), float(meta["sigma_ref"]),
                   int(meta["num_samples"]), int(meta["seed"]), int(k) if k else None)


@torch.no_grad()
def compute_latent_stats(
    generator: Generator,
    num_samples: int = 10_000,
    seed: int = 0,
    batch_size: int = 1_000,
    cache_path: Optional[str | os.PathLike] = None,
) -> LatentStats:
    """Estimate W-space statistics from ``num_samples`` mapped Gaussian draws.

    Args:
        generator: any :class:`Generator`.
        num_samples: number of ``z ~ N(0, I)`` draws (10,000 as in the paper).
        seed: seed of the draws; same seed, same statistics.
        batch_size: draws per mapping call (memory only).
        cache_path: if given and the file exists with matching (num_samples, seed, class), load it;
            otherwise compute and write it there atomically.
    """
    class_index = getattr(generator, "class_index", None)
    key = (num_samples, seed, class_index)
    mem = getattr(generator, "_brgm_latent_stats", None)
    if mem is not None and key in mem:
        return mem[key]
    stats = None
    if cache_path is not None and Path(cache_path).is_file():
        try:
            cached = LatentStats.load(cache_path)
            same = (cached.num_samples, cached.seed, cached.class_index) == key
            if same and cached.mu.numel() == generator.w_dim:
                stats = cached
        except Exception:  # a corrupt cache is recomputed, never fatal
            stats = None
    if stats is None:
        device = generator.device()
        gen = torch.Generator(device="cpu").manual_seed(seed)
        total = torch.zeros(generator.w_dim, dtype=torch.float64)
        total_sq = torch.zeros(generator.w_dim, dtype=torch.float64)
        done = 0
        while done < num_samples:
            n = min(batch_size, num_samples - done)
            z = torch.randn(n, generator.z_dim, generator=gen).to(device)
            w = generator.mapping(z).double().cpu()
            total += w.sum(0)
            total_sq += (w * w).sum(0)
            done += n
        mu = total / num_samples
        var = (total_sq / num_samples - mu * mu).clamp_min(0.0) * num_samples / max(num_samples - 1, 1)
        stats = LatentStats(
            mu=mu.float(),
            sigma=var.sqrt().float(),
            sigma_scalar=float(var.mean().sqrt()),
            sigma_ref=float(var.sum().sqrt()),
            num_samples=num_samples,
            seed=seed,
            class_index=class_index,
        )
        if cache_path is not None:
            try:
                stats.save(cache_path)
            except OSError:
                pass  # read-only location: the in-memory cache still helps
    stats = stats.to(generator.device())
    if mem is None:
        mem = {}
        object.__setattr__(generator, "_brgm_latent_stats", mem)
    mem[key] = stats
    return stats
