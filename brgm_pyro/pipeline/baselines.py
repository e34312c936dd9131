"""Classical baselines scored beside the reconstructions (one implementation each)."""

from __future__ import annotations

import numpy as np


def bicubic_upsample(y, size: int):
    """Pillow's bicubic resize of (B, C, h, w) in [-1, 1] to (B, C, size, size), float32 in [-1, 1].

    The baseline "anyone could do" for super-resolution: ``Image.resize(..., BICUBIC)`` (Keys
    cubic, a = -0.5), run on float32 pixels (mode ``F``, channel by channel) so that no 8-bit
    rounding enters the score; clipped to [-1, 1]. Used by ``brgm reconstruct --simulate``, the
    demo and benchmarks/eval_faces64.py.
    """
    import torch
    from PIL import Image

    a = y.detach().cpu().float().numpy()
    out = np.empty((*a.shape[:2], size, size), dtype=np.float32)
    for b in range(a.shape[0]):
        for c in range(a.shape[1]):
            im = Image.fromarray(np.ascontiguousarray(a[b, c]), mode="F")
            out[b, c] = np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))
    return torch.from_numpy(np.clip(out, -1.0, 1.0))


__all__ = ["bicubic_upsample"]
