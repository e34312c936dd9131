"""Fashion-MNIST (Zalando Research, MIT licence): real grayscale photographs of clothing.

Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST: a Novel Image Dataset for Benchmarking Machine
Learning Algorithms", arXiv:1708.07747. Copyright (c) 2017 Zalando SE, MIT licence (the full
text is in ``brgm_pyro/assets/fashion32/LICENSE-fashion-mnist.txt``).

The four gzip idx files come with Debian's package ``dataset-fashion-mnist``
(``apt-get install dataset-fashion-mnist`` puts them under :data:`DEFAULT_DIR`), or from any
folder given as ``root``. A fixed subset of the official test split (test images 0-999, and
200 validation images) is shipped with the package (``fashion32/subset.npz``) so that the demo
and the tests run without the Debian package.

Splits (indices into the official files, fixed; never shuffled):

* ``"train"``: training images 0 .. 54,999 (the generator and the perceptual networks learn here);
* ``"val"``: training images 55,000 .. 59,999 (every choice of settings is made here);
* ``"test"``: the official 10,000 test images. Images 0-999 are where figures are reported;
  1,000 and up are reserved for independent checks (never tuned or reported on).

Images are **padded** from 28x28 to 32x32 with two pixels of background (0, the photographs'
own black) on each side, not resized: padding keeps every original pixel value exactly (a
resize would low-pass the photographs before any corruption), and 32 is the power of two a
StyleGAN2 synthesis network needs. Shapes and units: uint8 arrays (N, 32, 32) in 0..255;
float tensors (N, 1, 32, 32) in [-1, 1] (the library's convention).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from brgm_pyro.errors import BRGMError

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
SIZES = {"train": 60_000, "test": 10_000}
VAL_START = 55_000
"""Training images from this index on form the validation split."""
REPORT_TEST = range(0, 1000)
"""Test images on which figures are reported; 1,000 and up are reserved for independent checks."""
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
           "Bag", "Ankle boot")
RESOLUTION = 32
PAD = (RESOLUTION - 28) // 2
SUBSET_NAME = "subset.npz"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


def _read_idx(path: Path, magic: int, ndim: int, expect: int) -> np.ndarray:
    """One gzip idx file: magic number (0x0803 images, 0x0801 labels) and sizes checked."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise BRGMError(f"cannot read {path}: {e}; reinstall with `{INSTALL_HINT}`") from None
    header = 4 + 4 * ndim
    if len(raw) < header or int.from_bytes(raw[:4], "big") != magic:
        raise BRGMError(f"{path} is not an idx file with magic 0x{magic:04x}; reinstall with `{INSTALL_HINT}`")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] != expect or len(raw) != header + int(np.prod(dims)):
        raise BRGMError(f"{path} holds {dims} items in {len(raw)} bytes, expected {expect} items; "
                        f"the file is truncated or from another dataset")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def data_dir(root: Optional[str | os.PathLike] = None) -> Path:
    """The folder holding the four idx files; a one-line error naming the Debian package if absent."""
    d = Path(root) if root is not None else Path(os.environ.get("BRGM_FASHION_MNIST", DEFAULT_DIR))
    missing = [n for pair in FILES.values() for n in pair if not (d / n).is_file()]
    if missing:
        raise BRGMError(f"Fashion-MNIST not found in {d} (missing {missing[0]}); install it with "
                        f"`{INSTALL_HINT}` or give the folder of the idx files")
    return d


def pad32(images: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 32, 32) uint8, two pixels of 0 on each side."""
    return np.pad(images, ((0, 0), (PAD, PAD), (PAD, PAD)))


def load_split(split: str, root: Optional[str | os.PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32) uint8 and labels (N,) int64 of ``"train"``, ``"val"`` or ``"test"``."""
    if split not in ("train", "val", "test"):
        raise BRGMError(f"unknown Fashion-MNIST split {split!r}; use train, val or test")
    d = data_dir(root)
    src = "test" if split == "test" else "train"
    img_f, lab_f = FILES[src]
    imgs = _read_idx(d / img_f, 0x0803, 3, SIZES[src])
    labs = _read_idx(d / lab_f, 0x0801, 1, SIZES[src]).astype(np.int64)
    if split == "train":
        imgs, labs = imgs[:VAL_START], labs[:VAL_START]
    elif split == "val":
        imgs, labs = imgs[VAL_START:], labs[VAL_START:]
    return pad32(imgs), labs


ASSET_DIR = Path(__file__).resolve().parents[1] / "assets" / "fashion32"


def subset_path() -> Path:
    return ASSET_DIR / SUBSET_NAME


def shipped_subset(split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The subset shipped with the package: (images (N, 32, 32) uint8, labels (N,), indices (N,)).

    ``"test"``: official test images 0-999; ``"val"``: 200 validation images (training 55,000-55,199).
    """
    p = subset_path()
    if not p.is_file():
        raise BRGMError(f"the shipped Fashion-MNIST subset {p} is missing; reinstall brgm-pyro")
    with np.load(p) as z:
        return z[f"{split}_images"], z[f"{split}_labels"].astype(np.int64), z[f"{split}_index"]


def load_images(split: str, indices, root: Optional[str | os.PathLike] = None) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of ``split`` at ``indices`` (split-relative), from the shipped subset when
    it holds them all, otherwise from the Debian package's files."""
    idx = np.asarray(list(indices), dtype=np.int64)
    if root is None and split in ("test", "val"):
        imgs, labs, have = shipped_subset(split)
        offset = VAL_START if split == "val" else 0
        pos = {int(i) - offset: k for k, i in enumerate(have)}
        if all(int(i) in pos for i in idx):
            sel = [pos[int(i)] for i in idx]
            return imgs[sel], labs[sel]
    imgs, labs = load_split(split, root)
    return imgs[idx], labs[idx]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 32, 32) -> float32 (N, 1, 32, 32) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).float().div(127.5).sub(1.0).unsqueeze(1)


def make_subset(out: str | os.PathLike, root: Optional[str | os.PathLike] = None) -> Path:
    """Write the shipped subset (test 0-999 and validation 55,000-55,199) from the idx files."""
    te, tl = load_split("test", root)
    va, vl = load_split("val", root)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, test_images=te[:1000], test_labels=tl[:1000].astype(np.uint8),
                        test_index=np.arange(1000), val_images=va[:200],
                        val_labels=vl[:200].astype(np.uint8), val_index=np.arange(VAL_START, VAL_START + 200))
    return out
