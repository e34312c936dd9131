"""Figures: the demo's summary grid and display helpers.

Images handed to these functions are numpy (H, W, C) or (H, W) in [0, 1] (see :mod:`brgm_pyro.io`).
Figures are written atomically (temporary file + rename) with matplotlib's Agg backend.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

SUMMARY_ROWS = ("truth", "observation", "MAP", "posterior mean", "sample 1", "sample 2", "sample 3", "std")


def upsample_nearest(arr: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour upsampling of (h, w[, C]) to (size, size[, C]) (integer factors)."""
    h, w = arr.shape[:2]
    fy, fx = max(size // h, 1), max(size // w, 1)
    return np.repeat(np.repeat(arr, fy, axis=0), fx, axis=1)


def observation_display(y: np.ndarray, resolution: int, mask: Optional[np.ndarray] = None) -> np.ndarray:
    """How an observation is shown next to full-size images: a low-resolution image is enlarged
    with visible pixels (nearest neighbour); missing pixels of an in-painting observation are
    drawn as a gray checkerboard."""
    out = upsample_nearest(y, resolution) if y.shape[0] != resolution else y.copy()
    if mask is not None:
        m = np.asarray(mask, dtype=bool)
        if m.ndim == 3:
            m = m[..., 0] if m.shape[-1] in (1, 3) else m[0]
        yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
        cell = max(m.shape[0] // 16, 1)
        checker = np.where(((yy // cell + xx // cell) % 2) == 0, 0.45, 0.6)
        out = out.astype(np.float64)
        if out.ndim == 2:
            out = np.where(m, out, checker)
        else:
            out = np.where(m[:, :, None], out, checker[:, :, None])
    return out


def composite(observed: np.ndarray, recon: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Observed pixels kept, missing ones (mask False) from the reconstruction."""
    m = np.asarray(mask, dtype=bool)
    if m.ndim == 2 and recon.ndim == 3:
        m = m[:, :, None]
    return np.where(m, observed, recon)


def std_map(samples: np.ndarray, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-pixel posterior standard deviation, averaged over channels: samples (S, H, W, C) -> (H, W).
    ``weights``: (S,) normalised importance weights of the draws (PSIS), or None (equal)."""
    s = np.asarray(samples, dtype=np.float64)
    if s.shape[0] < 2:
        return np.zeros(s.shape[1:3])
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(-1, 1, 1, 1)
        m = (w * s).sum(0)
        return np.sqrt(np.clip((w * (s - m) ** 2).sum(0), 0, None)).mean(axis=-1)
    return s.std(axis=0, ddof=1).mean(axis=-1)


def interval_width_map(samples: np.ndarray, level: float = 0.9, weights: Optional[np.ndarray] = None) -> np.ndarray:
    """Per-pixel width of the central ``level`` interval of the draws (:func:`brgm_pyro.calibration.interval_width`),
    averaged over channels: samples (S, H, W, C) in [0, 1] -> (H, W) in the same units (zeros for one draw).
    ``weights``: (S,) normalised importance weights (weighted quantiles), or None."""
    import torch

    from brgm_pyro.calibration import interval_bounds, interval_width

    s = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float64))
    if weights is None:
        return interval_width(s, level).numpy().mean(axis=-1)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64)).reshape(-1, 1, 1, 1)
    lo, hi = interval_bounds(s, level, w)
    return (hi - lo).numpy().mean(axis=-1)


def _show(ax, img, cmap=None, vmin=None, vmax=None):
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_visible(False)
    if img is None:
        ax.set_facecolor("white")
        return None
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[:, :, 0]
    if a.ndim == 2 and cmap is None:
        cmap = "gray"
        vmin, vmax = 0.0, 1.0
    return ax.imshow(np.clip(a, 0, 1) if a.ndim == 3 else a, cmap=cmap, vmin=vmin, vmax=vmax,
                     interpolation="nearest")


def summary_figure(path: str | os.PathLike, columns: Sequence[dict], title: Optional[str] = None,
                   rows: Sequence[str] = SUMMARY_ROWS, cell_inches: float = 1.25, dpi: int = 100) -> Path:
    """A grid with one column per (task, image) and the rows of :data:`SUMMARY_ROWS`.

    Each column is a dict with ``"title"`` and optionally ``"truth"``, ``"observation"``,
    ``"MAP"``, ``"posterior mean"``, ``"samples"`` (list) and ``"std"`` ((H, W) map). Missing
    entries are left blank. ``"notes"`` maps a row name to a short text drawn in that panel (e.g.
    its PSNR). Standard deviation maps share one colour scale, 0 to the largest value
    over all columns, unless a column gives its own ``"std_vmax"``; the scale is written in each panel.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    stds = [np.asarray(c["std"]) for c in columns if c.get("std") is not None]
    vmax = max([float(s.max()) for s in stds] + [1e-6])
    n_r, n_c = len(rows), len(columns)
    fig, axes = plt.subplots(n_r, n_c, figsize=(cell_inches * n_c + 1.2, cell_inches * n_r + (0.5 if title else 0.2)),
                             squeeze=False)
    for j, col in enumerate(columns):
        samples = list(col.get("samples") or [])
        for i, row in enumerate(rows):
            ax = axes[i, j]
            if row.startswith("sample "):
                k = int(row.split()[1]) - 1
                img = samples[k] if k < len(samples) else None
                _show(ax, img)
            elif row == "std":
                top = float(col.get("std_vmax") or vmax)
                _show(ax, col.get("std"), cmap="magma", vmin=0.0, vmax=top)
                if col.get("std") is not None:
                    ax.text(0.03, 0.03, f"0-{top:.2g}", transform=ax.transAxes, fontsize=6, color="white",
                            va="bottom", ha="left")
            else:
                _show(ax, col.get(row))
                note = (col.get("notes") or {}).get(row)
                if note and col.get(row) is not None:
                    ax.text(0.03, 0.03, note, transform=ax.transAxes, fontsize=6, color="white", va="bottom",
                            ha="left", bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
            if i == 0:
                ax.set_title(col.get("title", ""), fontsize=7)
            if j == 0:
                label = "posterior std" if row == "std" else row
                ax.set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    top = 1.0 - (0.35 / (cell_inches * n_r + 0.5)) if title else 1.0
    fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=0.2, rect=(0.0, 0.0, 1.0, top))
    from brgm_pyro.io import atomic_path

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def std_png(std: np.ndarray) -> tuple[np.ndarray, float]:
    """Gray image of a std map scaled so its maximum is white; returns (image in [0, 1], the max)."""
    s = np.asarray(std, dtype=np.float64)
    top = float(s.max()) if s.size else 0.0
    return (s / top if top > 0 else np.zeros_like(s)), top


__all__ = ["summary_figure", "observation_display", "composite", "std_map", "std_png", "interval_width_map",
           "upsample_nearest",
           "SUMMARY_ROWS"]
