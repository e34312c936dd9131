"""``brgm fit-discrepancy``: learn what the generator cannot draw (``--discrepancy auto``).

Inverts clean validation images and writes ``<weights>.discrepancy.json`` beside the weights
(docs/discrepancy.md). For ``builtin:faces64`` the default images are validation faces 64-79 of
the test split (never the reported faces 0-63); for ``builtin:fashion32`` validation images
55,000.. of the Fashion-MNIST training file (shipped), never test images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brgm_pyro.cli.app import app, user_errors


def _is_fashion32(G) -> bool:
    from brgm_pyro.models.generators.builtin_fashion32 import FASHION32_WEIGHTS

    return str(getattr(G, "source_path", "")) == str(FASHION32_WEIGHTS)


def _clean_images(images: Optional[Path], G, limit: int):
    """(B, C, H, W) in [-1, 1]: PNG/JPEG files of a folder at G's resolution, or faces 64.. of the test split."""
    import numpy as np

    from brgm_pyro.errors import BRGMError
    from brgm_pyro.io import match_channels, read_image, to_model

    if images is None and _is_fashion32(G):
        from brgm_pyro.data.fashion_mnist import shipped_subset, to_tensor

        x, _, idx = shipped_subset("val")
        return to_tensor(x[:limit]), (f"Fashion-MNIST validation images {int(idx[0])}..{int(idx[0]) + min(limit, len(x)) - 1} "
                                      "(training file; never test images)")
    if images is None:
        from brgm_pyro.data.faces import face_batch

        if tuple(G.image_shape) != (3, 64, 64):
            raise BRGMError("give --images DIR: clean images at this generator's resolution (the built-in faces "
                            "are 64x64 RGB)")
        return face_batch(range(64, 64 + limit), "test")[1], "procedural faces 64.. of the test split (validation)"
    if not images.is_dir():
        raise BRGMError(f"--images {images}: not a folder of clean images")
    files = sorted(p for p in images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:limit]
    if not files:
        raise BRGMError(f"--images {images}: no .png/.jpg files")
    arrs = []
    for p in files:
        arr, _ = match_channels(read_image(p).array, G.image_shape[0])
        if arr.shape[:2] != tuple(G.image_shape[1:]):
            raise BRGMError(f"{p.name} is {arr.shape[1]}x{arr.shape[0]}; the generator draws "
                            f"{G.image_shape[2]}x{G.image_shape[1]} images")
        arrs.append(to_model(arr)[None])
    import torch

    return torch.cat(arrs), f"{len(files)} images from {images}"


@app.command("fit-discrepancy")
@user_errors
def fit_discrepancy_cmd(
    generator: str = typer.Option("builtin:faces64", "--generator", help="Generator spec (file or builtin:NAME)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Folder of clean validation images at the "
                                          "generator's resolution (default for builtin:faces64: faces 64-79)."),
    num_images: int = typer.Option(16, "--num-images", help="How many images to invert (at most)."),
    steps: int = typer.Option(1000, "--steps", help="Adam steps of each inversion."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output JSON (default: <weights>.discrepancy.json)."),
    seed: int = typer.Option(0, "--seed"),
    coloured: bool = typer.Option(False, "--coloured", help="Also store the residuals' power spectrum: coloured e "
                                  "(docs/discrepancy.md, 'Coloured e'; not the bundled default)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch.set_num_threads)."),
) -> None:
    """Estimate the discrepancy scale tau (and the colour of what G misses) from W+ inversions of clean images and
    store it beside the weights."""
    from brgm_pyro.errors import BRGMError
    from brgm_pyro.models.discrepancy import discrepancy_path
    from brgm_pyro.models.generators.loading import load_generator
    from brgm_pyro.training.common import setup_device
    from brgm_pyro.training.fit_discrepancy import fit_discrepancy

    if steps < 1 or num_images < 1:
        raise BRGMError("--steps and --num-images must be positive")
    dev = setup_device(device, threads)
    G = load_generator(generator, device=dev)
    out = out or discrepancy_path(G)
    if out is None:
        raise BRGMError("this generator has no weights file to put the scale beside; give --out FILE")
    x, source = _clean_images(images, G, num_images)
    fit_discrepancy(G, x.to(dev), out=out, steps=steps, seed=seed, source=source, log=typer.echo, white=not coloured)
