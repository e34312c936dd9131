"""Reading users' images and masks (one-line errors for every mistake), and the conversions
between files and the models' tensors.

Reading (:func:`read_image`) accepts every mode Pillow opens and converts odd but valid ones
instead of refusing them:

* 16-bit grayscale (``I;16``, ``I;16B``, ``I``) is scaled by 1/65535, 32-bit float (``F``) is
  taken as [0, 1] (or [0, 255] when its values exceed 1);
* palette (``P``, ``PA``) is expanded to RGB(A); bilevel (``1``) to gray; CMYK, YCbCr, LAB, HSV
  to RGB; JPEG EXIF orientation is applied; multi-frame files give their first frame;
* alpha (``LA``, ``RGBA``, ``PA``, ``RGBa``) is **composited onto white**, the colour most
  viewers show behind transparent pixels. The alpha itself is kept in :attr:`LoadedImage.alpha`:
  for in-painting without ``--mask``, fully transparent pixels are read as the missing region.
  For a *mask* file transparency means "missing" (composited onto black).

Pixel arrays are float32 ``(H, W, C)`` in [0, 1]; :func:`to_model` / :func:`from_model` convert to
and from the models' tensors ``(C, H, W)`` in [-1, 1]. Channel counts are matched to the generator
with :func:`match_channels` (gray -> RGB by repetition, RGB -> gray by ITU-R 601 luma).

Every user mistake raises :class:`~brgm_pyro.errors.BRGMError` with one line saying what is wrong
and what would be right.
"""


from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from brgm_pyro.errors import BRGMError

IMAGE_HINT = "give a PNG or JPEG image file"
MASK_HINT = "a mask is an image of the same size as the observation, white = observed, black = missing"

_TO_RGB_MODES = {"CMYK", "YCbCr", "LAB", "HSV", "RGBX"}
_ALPHA_MODES = {"LA", "La", "RGBA", "RGBa", "PA"}


@dataclass
class LoadedImage:
    """An image read from disk.

    Attributes:
        path: the file it came from.
        array: float32 (H, W, C) in [0, 1], C = 1 (gray) or 3 (RGB), alpha already composited.
        mode: the Pillow mode of the file (e.g. ``"I;16"``, ``"P"``, ``"RGBA"``).
        format: the file format Pillow detected (``"PNG"``, ``"JPEG"``, ...).
        alpha: (H, W) in [0, 1] if the file had transparency, else None.
        conversions: human-readable notes on what was converted (recorded in run.json).
    """

    path: str
    array: np.ndarray
    mode: str
    format: str
    alpha: Optional[np.ndarray] = None
    conversions: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return int(self.array.shape[0]), int(self.array.shape[1])

    def info(self) -> dict:
        h, w = self.size
        return {"path": self.path, "format": self.format, "mode": self.mode, "height": h, "width": w,
                "conversions": list(self.conversions)}


def _describe(path: str | os.PathLike, what: str) -> str:
    return f"{what} {str(path)!r}"


def _open_checked(path: str | os.PathLike, what: str):
    """Open with Pillow and decode fully, turning every failure into a BRGMError."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    name = _describe(path, what)
    if not p.exists():
        raise BRGMError(f"{name} does not exist; check the path ({IMAGE_HINT})")
    if p.is_dir():
        raise BRGMError(f"{name} is a directory, not an image; {IMAGE_HINT}")
    if p.stat().st_size == 0:
        raise BRGMError(f"{name} is an empty file; {IMAGE_HINT}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning etc.: size is checked later
            im = Image.open(p)
            fmt = im.format or p.suffix.lstrip(".").upper() or "unknown"
            n_frames = getattr(im, "n_frames", 1)
            im.seek(0)
            im.load()
    except UnidentifiedImageError:
        raise BRGMError(f"cannot read {name}: not a recognised image format; {IMAGE_HINT}") from None
    except Image.DecompressionBombError:
        raise BRGMError(f"{name} is too large to decode safely; give an image under 89 megapixels") from None
    except PermissionError:
        raise BRGMError(f"cannot read {name}: permission denied; make the file readable") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BRGMError(f"cannot decode {name} ({reason}); the file is damaged or truncated, {IMAGE_HINT}") from None
    return im, fmt, n_frames


def _normalised_mode(im, notes: list[str]):
    """Pillow image -> one of L, LA, RGB, RGBA, I;16*, I, F or another mode, noting conversions."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        notes.append(f"palette expanded to {im.mode}")
    elif mode == "PA":
        im = im.convert("RGBA")
        notes.append("palette expanded to RGBA")
    elif mode == "RGBa":
        im = im.convert("RGBA")
    elif mode == "La":
        im = im.convert("LA")
    elif mode == "1":
        im = im.convert("L")
        notes.append("bilevel converted to gray")
    elif mode in _TO_RGB_MODES:
        im = im.convert("RGB")
        notes.append(f"{mode} converted to RGB")
    elif mode == "L" and "transparency" in im.info:
        im = im.convert("LA")
    return im


def _to_unit_array(im, notes: list[str], path, what: str) -> tuple[np.ndarray, str]:
    """(float64 array in [0, 1]-ish scale, its Pillow mode) of a normalised image."""
    m = im.mode
    if m in ("I;16", "I;16L", "I;16B", "I;16N"):
        notes.append("16-bit scaled to [0, 1]")
        return np.asarray(im).astype(np.float64) / 65535.0, m
    if m == "I":
        raw = np.asarray(im).astype(np.float64)
        top = 65535.0 if raw.max(initial=0) <= 65535 else float(2 ** 31 - 1)
        notes.append(f"integer image scaled by 1/{int(top)}")
        return raw / top, m
    if m == "F":
        raw = np.asarray(im).astype(np.float64)
        _check_finite(raw, path, what)
        if raw.min() >= 0.0 and raw.max() <= 1.0:
            return raw, m
        if raw.min() >= 0.0 and raw.max() <= 255.0:
            notes.append("float image scaled by 1/255")
            return raw / 255.0, m
        raise BRGMError(
            f"{_describe(path, what)} holds float values in [{raw.min():.3g}, {raw.max():.3g}]; "
            f"give values in [0, 1] or [0, 255], or an 8-bit PNG"
        )
    if m in ("L", "LA", "RGB", "RGBA"):
        return np.asarray(im).astype(np.float64) / 255.0, m
    try:  # any other mode Pillow knows: let it convert
        im = im.convert("RGBA" if "A" in m else "RGB")
    except Exception:
        raise BRGMError(f"cannot convert {_describe(path, what)} (mode {m}) to RGB; {IMAGE_HINT}") from None
    notes.append(f"{m} converted to {im.mode}")
    return np.asarray(im).astype(np.float64) / 255.0, im.mode


def read_image(path: str | os.PathLike, what: str = "image", alpha_background: float = 1.0) -> LoadedImage:
    """Read any image Pillow can open as float32 (H, W, C) in [0, 1], C in {1, 3}.

    Args:
        path: the file.
        what: how to call it in error messages ("input image", "mask", ...).
        alpha_background: gray level that transparent pixels are composited onto (1 = white).
    """
    from PIL import ImageOps

    im, fmt, n_frames = _open_checked(path, what)
    notes: list[str] = []
    if n_frames > 1:
        notes.append(f"first of {n_frames} frames")
    try:
        if _exif_rotated(im):
            oriented = ImageOps.exif_transpose(im)
            if oriented is not None:
                im = oriented
                notes.append("EXIF orientation applied")
    except Exception:  # broken EXIF is not the user's problem
        pass
    mode = im.mode
    arr, m = _to_unit_array(_normalised_mode(im, notes), notes, path, what)
    alpha = None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if m in ("LA", "RGBA"):
        alpha = arr[:, :, -1].copy()
        arr = arr[:, :, :-1]
        if alpha.min() < 1.0:
            arr = arr * alpha[:, :, None] + alpha_background * (1.0 - alpha[:, :, None])
            bg = "white" if alpha_background == 1.0 else ("black" if alpha_background == 0.0 else str(alpha_background))
            notes.append(f"alpha composited onto {bg}")
        else:
            alpha = None  # fully opaque: no information in alpha
    _check_finite(arr, path, what)
    return LoadedImage(path=str(path), array=np.clip(arr, 0.0, 1.0).astype(np.float32), mode=mode,
                       format=str(fmt), alpha=None if alpha is None else alpha.astype(np.float32),
                       conversions=notes)


def _exif_rotated(im) -> bool:
    try:
        return int(im.getexif().get(0x0112, 1)) not in (0, 1)
    except Exception:
        return False


def _check_finite(arr: np.ndarray, path, what: str) -> None:
    if not np.all(np.isfinite(arr)):
        raise BRGMError(f"{_describe(path, what)} contains NaN or infinite pixel values; "
                        f"give an image with finite values")


def check_not_constant(arr: np.ndarray, path, what: str = "image", mask: Optional[np.ndarray] = None) -> None:
    """Refuse an image whose (observed) pixels all have the same value."""
    vals = arr if mask is None else arr[mask.astype(bool)]
    if vals.size == 0:
        return
    if float(vals.max() - vals.min()) < 1e-6:
        where = "observed pixel" if mask is not None else "pixel"
        raise BRGMError(
            f"{_describe(path, what)} is constant (every {where} is {float(vals.flat[0]):.3g}), so there is "
            f"nothing to reconstruct from; give a real photo"
        )


def match_channels(arr: np.ndarray, channels: int) -> tuple[np.ndarray, Optional[str]]:
    """Convert (H, W, C) to ``channels`` channels; returns the array and a note (or None)."""
    c = arr.shape[-1]
    if c == channels:
        return arr, None
    if c == 1 and channels == 3:
        return np.repeat(arr, 3, axis=-1), "gray repeated to RGB"
    if c == 3 and channels == 1:
        luma = arr @ np.array([0.299, 0.587, 0.114], dtype=arr.dtype)
        return luma[:, :, None].astype(arr.dtype), "RGB converted to gray (ITU-R 601 luma)"
    raise BRGMError(f"cannot convert a {c}-channel image to the generator's {channels} channels")


def center_crop_resize(arr: np.ndarray, resolution: int) -> tuple[np.ndarray, list[str]]:
    """Centre-crop (H, W, C) to a square and resize to ``resolution`` (bicubic, antialiased)."""
    import torch
    import torch.nn.functional as F

    notes = []
    h, w = arr.shape[:2]
    s = min(h, w)
    if h != w:
        top, left = (h - s) // 2, (w - s) // 2
        arr = arr[top:top + s, left:left + s]
        notes.append(f"centre-cropped {h}x{w} to {s}x{s}")
    if s != resolution:
        x = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))[None].double()
        y = F.interpolate(x, size=(resolution, resolution), mode="bicubic", antialias=s > resolution,
                          align_corners=False)
        arr = y[0].clamp(0, 1).numpy().transpose(1, 2, 0).astype(np.float32)
        aa = ", antialiased" if s > resolution else ""
        notes.append(f"resized {s}x{s} to {resolution}x{resolution} (bicubic{aa})")
    return np.ascontiguousarray(arr, dtype=np.float32), notes


def read_mask(path: str | os.PathLike, size: Optional[tuple[int, int]] = None,
              size_of: str = "the observation") -> tuple[np.ndarray, LoadedImage]:
    """Read a mask: bool (H, W), True = observed (white), False = missing (black).

    Gray levels are thresholded at 0.5 (colour masks by their luma); transparent pixels count as
    missing. ``size`` (H, W), if given, must match.
    """
    img = read_image(path, what="mask", alpha_background=0.0)
    gray, _ = match_channels(img.array, 1)
    mask = gray[:, :, 0] >= 0.5
    if size is not None and tuple(mask.shape) != tuple(size):
        raise BRGMError(
            f"mask {str(path)!r} is {mask.shape[0]}x{mask.shape[1]} but {size_of} is {size[0]}x{size[1]}; "
            f"{MASK_HINT}"
        )
    n_missing = int((~mask).sum())
    if n_missing == 0:
        raise BRGMError(
            f"mask {str(path)!r} has no missing pixel (it is all white), so there is nothing to in-paint; "
            f"paint the region to fill in black ({MASK_HINT})"
        )
    if n_missing == mask.size:
        raise BRGMError(
            f"mask {str(path)!r} has no observed pixel (it is all black); paint the pixels you trust white "
            f"({MASK_HINT})"
        )
    return mask, img


def alpha_mask(img: LoadedImage) -> Optional[np.ndarray]:
    """The missing region implied by transparency (alpha < 0.5 = missing), or None if none."""
    if img.alpha is None:
        return None
    mask = img.alpha >= 0.5
    if mask.all() or not mask.any():
        return None
    return mask


def default_mask(resolution: int) -> np.ndarray:
    """The mask used by ``--simulate`` in-painting without ``--mask``: a centred square hole of
    half the side (the middle quarter of the image is missing). True = observed."""
    m = np.ones((resolution, resolution), dtype=bool)
    a, b = resolution // 4, resolution - resolution // 4
    m[a:b, a:b] = False
    return m


# --- conversions between files and model tensors -------------------------------------------------

def to_model(arr: np.ndarray):
    """(H, W, C) in [0, 1] -> torch (C, H, W) float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32)) * 2.0 - 1.0


def from_model(x) -> np.ndarray:
    """torch or numpy (C, H, W) in [-1, 1] -> numpy (H, W, C) in [0, 1] (clipped)."""
    a = x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)
    return np.clip((a.transpose(1, 2, 0) + 1.0) / 2.0, 0.0, 1.0)


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) float in [0, 1] -> uint8 (H, W) or (H, W, 3)."""
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[:, :, 0]
    a = np.nan_to_num(a, nan=0.0)
    return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def sha256(path: str | os.PathLike) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
