"""Helpers shared by the training commands: seeding, atomic checkpoints, logging, data cache."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Optional

import torch

from brgm_pyro.errors import BRGMError


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save atomically (:func:`brgm_pyro.io.atomic_path`): a killed run never leaves a half-written file."""
    from brgm_pyro.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a training checkpoint written by this project (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BRGMError(f"cannot read checkpoint {str(path)!r}: {type(e).__name__}: {e}") from None


def hardware_string(device: str) -> str:
    """A short description of where the training ran."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} thread(s)"


class Logger:
    """Print and append lines to ``DIR/log.txt``."""

    def __init__(self, out_dir: Path, quiet: bool = False) -> None:
        self.path = out_dir / "log.txt"
        self.quiet = quiet

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        if not self.quiet:
            print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


def write_json(path: Path, obj: dict) -> None:
    from brgm_pyro.io import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2))


def setup_device(device: str, threads: Optional[int]) -> torch.device:
    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BRGMError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return torch.device(device)


def face_training_data(num: int, cache_dir: Optional[str | os.PathLike], log=None):
    """Latents (n, k) float32 tensor and images (n, 64, 64, 3) uint8 tensor of the training split."""
    from brgm_pyro.data.faces import make_face_dataset

    t0 = time.time()
    u, imgs = make_face_dataset(num, "train", cache_dir=cache_dir)
    if log is not None:
        log(f"training data: {num} faces of the train split ready in {time.time() - t0:.1f} s")
    return torch.from_numpy(u), torch.from_numpy(imgs)


def images_from_uint8(batch: torch.Tensor, device) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1] on ``device``."""
    return batch.to(device).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
