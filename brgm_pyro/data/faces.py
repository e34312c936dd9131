"""Procedural cartoon faces: the dataset the bundled ``builtin:faces64`` generator is trained on.

Every face is drawn by code from a latent code ``u ~ N(0, I_k)`` with ``k = FACE_LATENT_DIM``
(40). Every drawing parameter is a deterministic function of ``u``: continuous parameters are
``lo + (hi - lo) * Phi(u_j)`` (Phi = standard normal CDF, so each is uniform on ``[lo, hi]``);
categorical ones are the argmax of a few coordinates (equally likely classes) or a threshold on
one coordinate (a chosen probability). Image ``i`` of a split is ``draw_face(face_latent(i, split))``
where ``face_latent`` draws ``u`` from a NumPy generator seeded with ``(split seed, i)``, so any
image can be produced on its own, in any order, on any machine.

Splits (disjoint seeds): ``"train"`` uses :data:`TRAIN_SEED`, ``"test"`` uses :data:`TEST_SEED`.
The seeds differ, so the two splits are independent draws; no test face is a training face.

Layout of ``u`` (index: parameter, range or classes):

====  ======================================================================
0-2   face width (0.46-0.62 of the image), height (0.58-0.74), jaw squareness (0-1)
3-6   pose: face centre shift x, y (+-0.045), yaw and pitch (features shift inside the face)
7-8   skin tone (light to dark palette) and warmth
9-10  hair colour (black, browns, auburn, blonde, grey palette) and hair volume
11-15 hair style, argmax of 5: short, long, bob with fringe, buzz cut, spiky
16-19 eye spacing, eye size, iris colour (brown, hazel, green, blue, grey), eye height
20-22 eyebrow thickness, tilt, height above the eye
23-26 nose size; nose style, argmax of 3: line, triangle, nostrils
27-30 mouth width, curvature (frown to smile), open if u_29 > 0.8 (21 %), lip colour
31-32 glasses if u_31 > 0.9 (18 %); frame colour and shape (round / square)
33-36 background hue, brightness, gradient if u_35 > 0 (50 %), second hue of the gradient
37-38 shirt hue and brightness
39    ear size
====  ======================================================================

Images are drawn at ``supersample`` times the output size with PIL ImageDraw and downsampled
with a box filter (area averaging), so edges are antialiased. Drawing a 64x64 face takes about
a millisecond.

Shapes and units: latents are float arrays (k,) or tensors (B, k); images are uint8 arrays
(H, W, 3) in 0..255 or float tensors (B, 3, H, W) in [-1, 1] (the library's convention).
"""

from __future__ import annotations

import colorsys
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from brgm_pyro.errors import BRGMError

FACE_LATENT_DIM = 40
"""k, the size of the latent code ``u`` of a face."""
TRAIN_SEED = 20_251_001
"""Seed of the training split: ``u_i = N(0, I_k)`` drawn from ``np.random.default_rng((TRAIN_SEED, i))``."""
TEST_SEED = 20_251_002
"""Seed of the test split (disjoint from :data:`TRAIN_SEED`)."""
SPLITS = {"train": TRAIN_SEED, "test": TEST_SEED}
FACE_RESOLUTION = 64

HAIR_STYLES = ("short", "long", "bob", "buzz", "spiky")
NOSE_STYLES = ("line", "triangle", "nostrils")

_SKIN = np.array([[255, 226, 204], [241, 194, 160], [214, 160, 120], [172, 118, 80],
                  [128, 84, 56], [92, 60, 40]], dtype=np.float64)
_HAIR = np.array([[24, 20, 20], [60, 40, 28], [110, 70, 40], [150, 70, 35],
                  [200, 160, 90], [235, 215, 150], [170, 170, 170]], dtype=np.float64)
_IRIS = np.array([[90, 55, 30], [130, 100, 45], [60, 130, 70], [60, 110, 190],
                  [120, 130, 140]], dtype=np.float64)
_LIPS = np.array([[200, 90, 90], [170, 70, 80], [140, 60, 55], [220, 120, 120]], dtype=np.float64)


def _phi(x: float) -> float:
    """Standard normal CDF."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _rng(x: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _phi(x)


def _palette(pal: np.ndarray, t: float) -> tuple[int, int, int]:
    """Piecewise-linear colour along a palette, t in [0, 1]."""
    s = min(max(t, 0.0), 1.0) * (len(pal) - 1)
    i = min(int(s), len(pal) - 2)
    f = s - i
    c = (1 - f) * pal[i] + f * pal[i + 1]
    return tuple(int(round(v)) for v in c)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (int(r * 255), int(g * 255), int(b * 255))


def _scale(c: Sequence[float], f: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, round(v * f)))) for v in c)  # type: ignore[return-value]


@dataclass
class FaceParams:
    """The drawing parameters of one face (all lengths as fractions of the image side)."""

    face_w: float
    face_h: float
    jaw: float
    cx: float
    cy: float
    yaw: float
    pitch: float
    skin: tuple
    hair_color: tuple
    hair_volume: float
    hair_style: str
    eye_spacing: float
    eye_size: float
    iris: tuple
    eye_y: float
    brow_thick: float
    brow_tilt: float
    brow_gap: float
    nose_size: float
    nose_style: str
    mouth_w: float
    mouth_curve: float
    mouth_open: bool
    lips: tuple
    glasses: bool
    glasses_color: tuple
    glasses_round: bool
    bg1: tuple
    bg2: tuple
    bg_gradient: bool
    shirt: tuple
    ear_size: float

    def to_dict(self) -> dict:
        return asdict(self)


def face_params(u: np.ndarray | Sequence[float]) -> FaceParams:
    """Map a latent code ``u`` (k,) to the drawing parameters (deterministic)."""
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    if u.shape[0] != FACE_LATENT_DIM:
        raise BRGMError(f"a face latent has {FACE_LATENT_DIM} numbers, got {u.shape[0]}")
    u = u.tolist()
    warm = _rng(u[8], -0.06, 0.06)
    skin = _palette(_SKIN, _phi(u[7]))
    skin = (skin[0] * (1 + warm), skin[1], skin[2] * (1 - warm))
    bg_h = _phi(u[33])
    bg_v = _rng(u[34], 0.45, 0.97)
    bg1 = _hsv(bg_h, 0.45, bg_v)
    bg2 = _hsv(bg_h + _rng(u[36], 0.1, 0.5), 0.5, max(0.3, bg_v - 0.25))
    return FaceParams(
        face_w=_rng(u[0], 0.46, 0.62),
        face_h=_rng(u[1], 0.58, 0.74),
        jaw=_phi(u[2]),
        cx=0.5 + _rng(u[3], -0.045, 0.045),
        cy=0.52 + _rng(u[4], -0.045, 0.045),
        yaw=_rng(u[5], -1.0, 1.0),
        pitch=_rng(u[6], -1.0, 1.0),
        skin=_scale(skin, 1.0),
        hair_color=_palette(_HAIR, _phi(u[9])),
        hair_volume=_phi(u[10]),
        hair_style=HAIR_STYLES[int(np.argmax(u[11:16]))],
        eye_spacing=_rng(u[16], 0.18, 0.26),
        eye_size=_rng(u[17], 0.045, 0.075),
        iris=_palette(_IRIS, _phi(u[18])),
        eye_y=_rng(u[19], 0.43, 0.49),
        brow_thick=_rng(u[20], 0.012, 0.03),
        brow_tilt=_rng(u[21], -0.035, 0.035),
        brow_gap=_rng(u[22], 0.045, 0.075),
        nose_size=_rng(u[23], 0.05, 0.09),
        nose_style=NOSE_STYLES[int(np.argmax(u[24:27]))],
        mouth_w=_rng(u[27], 0.12, 0.24),
        mouth_curve=_rng(u[28], -0.6, 1.0),
        mouth_open=u[29] > 0.8,
        lips=_palette(_LIPS, _phi(u[30])),
        glasses=u[31] > 0.9,
        glasses_color=_palette(np.array([[20, 20, 20], [120, 70, 30], [180, 180, 190], [40, 40, 140]],
                                        dtype=np.float64), _phi(u[32])),
        glasses_round=u[32] > 0.0,
        bg1=bg1,
        bg2=bg2,
        bg_gradient=u[35] > 0.0,
        shirt=_hsv(_phi(u[37]), 0.55, _rng(u[38], 0.25, 0.9)),
        ear_size=_rng(u[39], 0.05, 0.08),
    )


_RAMP_CACHE: dict[int, np.ndarray] = {}


def _background(p: FaceParams, S: int) -> Image.Image:
    if not p.bg_gradient:
        return Image.new("RGB", (S, S), p.bg1)
    ramp = _RAMP_CACHE.get(S)
    if ramp is None:
        ramp = np.linspace(0.0, 1.0, S, dtype=np.float32)[:, None, None]
        _RAMP_CACHE[S] = ramp
    c1 = np.asarray(p.bg1, dtype=np.float32)
    c2 = np.asarray(p.bg2, dtype=np.float32)
    col = (1 - ramp) * c1 + ramp * c2  # (S, 1, 3), vertical gradient
    arr = np.broadcast_to(col, (S, S, 3)).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def draw_face_params(p: FaceParams, size: int = FACE_RESOLUTION, supersample: int = 3,
                     features: bool = True) -> np.ndarray:
    """Draw a face from its parameters: uint8 array (size, size, 3).

    ``features=False`` leaves out the eyes, eyebrows, glasses, nose and mouth (the rest of the
    drawing is identical): :func:`feature_mask` compares the two to find the feature pixels.
    """
    S = size * supersample
    img = _background(p, S)
    d = ImageDraw.Draw(img)

    def px(v: float) -> float:
        return v * S

    def ell(x0, y0, x1, y1, fill, outline=None, width=1):
        d.ellipse([px(x0), px(y0), px(x1), px(y1)], fill=fill, outline=outline, width=width)

    cx, cy, fw, fh = p.cx, p.cy, p.face_w, p.face_h
    top, bot = cy - fh / 2, cy + fh / 2
    left, right = cx - fw / 2, cx + fw / 2
    dark_skin = _scale(p.skin, 0.82)
    hair = p.hair_color
    vol = 0.015 + 0.03 * p.hair_volume

    # shirt and neck
    ell(cx - 0.42, bot + 0.02, cx + 0.42, bot + 0.5, fill=p.shirt)
    d.rectangle([px(cx - fw * 0.2), px(cy), px(cx + fw * 0.2), px(bot + 0.08)], fill=dark_skin)
    # hair behind the head
    if p.hair_style == "long":
        d.rounded_rectangle([px(left - vol - 0.02), px(top - vol), px(right + vol + 0.02),
                             px(bot + 0.06 + 0.08 * p.hair_volume)], radius=px(fw * 0.45), fill=hair)
    elif p.hair_style == "bob":
        d.rounded_rectangle([px(left - vol), px(top - vol), px(right + vol), px(cy + fh * 0.18)],
                            radius=px(fw * 0.4), fill=hair)
    # ears
    es = p.ear_size
    ey_ear = cy + 0.02
    ell(left - es * 0.45, ey_ear - es, left + es * 0.55, ey_ear + es, fill=dark_skin)
    ell(right - es * 0.55, ey_ear - es, right + es * 0.45, ey_ear + es, fill=dark_skin)
    # face: ellipse plus a rounded jaw of variable squareness
    ell(left, top, right, bot, fill=p.skin)
    r = fw * (0.5 - 0.3 * p.jaw)
    jaw_inset = fw * 0.12 * (1 - p.jaw)
    d.rounded_rectangle([px(left + jaw_inset * 0.3), px(cy), px(right - jaw_inset * 0.3), px(bot)],
                        radius=px(r), fill=p.skin)
    # hair on top
    if p.hair_style in ("short", "long", "bob"):
        d.chord([px(left - vol), px(top - vol), px(right + vol), px(top + fh * 0.62)],
                start=180, end=360, fill=hair)
        if p.hair_style == "bob":  # fringe
            d.rectangle([px(left + fw * 0.08), px(top + fh * 0.14), px(right - fw * 0.08),
                         px(top + fh * 0.24)], fill=hair)
        else:  # parting
            side = 1 if p.yaw > 0 else -1
            d.pieslice([px(cx - fw * 0.55 + side * 0.05), px(top + fh * 0.05),
                        px(cx + fw * 0.55 + side * 0.05), px(top + fh * 0.5)],
                       start=190, end=350, fill=hair)
    elif p.hair_style == "buzz":
        d.chord([px(left + 0.005), px(top - 0.005), px(right - 0.005), px(top + fh * 0.45)],
                start=185, end=355, fill=_scale(hair, 1.0) if hair[0] > 100 else hair)
    else:  # spiky
        n = 7
        pts = [(px(left - 0.01), px(top + fh * 0.22))]
        for k in range(n + 1):
            x = left - 0.01 + (fw + 0.02) * k / n
            pts.append((px(x), px(top + fh * 0.12)))
            if k < n:
                pts.append((px(x + (fw + 0.02) / (2 * n)), px(top - vol - 0.04)))
        pts.append((px(right + 0.01), px(top + fh * 0.22)))
        d.polygon(pts, fill=hair)
        d.chord([px(left - 0.01), px(top - 0.01), px(right + 0.01), px(top + fh * 0.5)],
                start=180, end=360, fill=hair)

    if features:
        _draw_features(d, p, px, ell, S)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.uint8)


def _draw_features(d: ImageDraw.ImageDraw, p: FaceParams, px, ell, S: int) -> None:
    """Eyes, eyebrows, glasses, nose and mouth (the part ``features=False`` leaves out)."""
    cx, cy, fw, fh = p.cx, p.cy, p.face_w, p.face_h
    bot = cy + fh / 2
    hair = p.hair_color
    # features, shifted by yaw and pitch
    fx = cx + p.yaw * fw * 0.09
    fy = p.pitch * fh * 0.04
    ey = cy - fh * 0.05 + (p.eye_y - 0.46) * fh + fy
    esz = p.eye_size
    for sgn in (-1, 1):
        ex = fx + sgn * p.eye_spacing / 2 * (1 + 0.12 * sgn * p.yaw)
        ell(ex - esz, ey - esz * 0.62, ex + esz, ey + esz * 0.62, fill=(250, 250, 250),
            outline=_scale(p.skin, 0.55), width=max(1, int(S * 0.006)))
        ir = esz * 0.55
        ix = ex + p.yaw * esz * 0.3
        ell(ix - ir, ey - ir, ix + ir, ey + ir, fill=p.iris)
        pr = ir * 0.5
        ell(ix - pr, ey - pr, ix + pr, ey + pr, fill=(15, 10, 10))
        hr = ir * 0.28
        ell(ix + pr * 0.3, ey - pr * 1.1, ix + pr * 0.3 + hr * 2, ey - pr * 1.1 + hr * 2,
            fill=(255, 255, 255))
        # eyebrow
        by = ey - esz * 0.62 - p.brow_gap
        x_in, x_out = ex - sgn * esz * 1.0, ex + sgn * esz * 1.15
        d.line([(px(x_in), px(by + p.brow_tilt)), (px(ex), px(by - 0.006)),
                (px(x_out), px(by - p.brow_tilt * 0.3))],
               fill=_scale(hair, 0.8), width=max(1, int(round(px(p.brow_thick)))), joint="curve")
        if p.glasses:
            gr = esz * 1.45
            box = [px(ex - gr), px(ey - gr * 0.85), px(ex + gr), px(ey + gr * 0.85)]
            w = max(2, int(S * 0.014))
            if p.glasses_round:
                d.ellipse(box, outline=p.glasses_color, width=w)
            else:
                d.rounded_rectangle(box, radius=px(gr * 0.3), outline=p.glasses_color, width=w)
    if p.glasses:
        gr = esz * 1.45
        xl = fx - p.eye_spacing / 2 * (1 - 0.12 * p.yaw) + gr
        xr = fx + p.eye_spacing / 2 * (1 + 0.12 * p.yaw) - gr
        d.line([(px(xl), px(ey - esz * 0.3)), (px(xr), px(ey - esz * 0.3))],
               fill=p.glasses_color, width=max(2, int(S * 0.014)))

    # nose
    ns = p.nose_size
    nx = fx + p.yaw * fw * 0.05
    ny = ey + esz + ns * 0.9
    nose_col = _scale(p.skin, 0.7)
    if p.nose_style == "line":
        d.line([(px(nx), px(ny - ns)), (px(nx - ns * 0.3), px(ny)), (px(nx + ns * 0.15), px(ny + 0.006))],
               fill=nose_col, width=max(1, int(S * 0.012)), joint="curve")
    elif p.nose_style == "triangle":
        d.polygon([(px(nx), px(ny - ns)), (px(nx - ns * 0.45), px(ny + ns * 0.15)),
                   (px(nx + ns * 0.45), px(ny + ns * 0.15))], fill=_scale(p.skin, 0.88))
    else:
        rr = ns * 0.16
        for sgn in (-1, 1):
            ell(nx + sgn * ns * 0.3 - rr, ny - rr, nx + sgn * ns * 0.3 + rr, ny + rr, fill=nose_col)

    # mouth
    mx = fx + p.yaw * fw * 0.04
    my = ny + ns * 0.35 + (bot - ny) * 0.38
    mw, c = p.mouth_w, p.mouth_curve
    n = 9
    xs = np.linspace(-1.0, 1.0, n)
    bend = c * 0.035  # how far the centre sits below the corners
    upper = [(px(mx + x * mw / 2), px(my + bend * (1 - x * x))) for x in xs]
    lw = max(1, int(S * 0.016))
    if p.mouth_open:
        open_h = 0.03 + 0.02 * max(c, 0.0)
        lower = [(px(mx + x * mw / 2), px(my + (bend + open_h) * (1 - x * x))) for x in xs[::-1]]
        d.polygon(upper + lower, fill=(90, 25, 30), outline=p.lips)
        # teeth
        tw = mw * 0.3
        d.rectangle([px(mx - tw), px(my + bend * 0.9), px(mx + tw), px(my + bend * 0.9 + 0.012)],
                    fill=(245, 245, 240))
        d.line(upper, fill=p.lips, width=lw, joint="curve")
    else:
        d.line(upper, fill=p.lips, width=lw + 1, joint="curve")


def draw_face(u: np.ndarray | Sequence[float], size: int = FACE_RESOLUTION, supersample: int = 3) -> np.ndarray:
    """Draw the face of latent code ``u`` (k,): uint8 array (size, size, 3) in 0..255."""
    return draw_face_params(face_params(u), size=size, supersample=supersample)


def feature_mask(u: np.ndarray | Sequence[float], size: int = FACE_RESOLUTION,
                 image: Optional[np.ndarray] = None) -> np.ndarray:
    """Where the facial features of face ``u`` are: bool array (size, size).

    True where the full drawing differs from the same drawing without eyes, eyebrows, glasses,
    nose and mouth. ``image`` (the full drawing, if the caller has it) saves one draw. The
    generator's training loss weighs these pixels more (see
    :mod:`brgm_pyro.training.train_generator`): they are ~5 % of the image, and an unweighted
    pixel loss is lowest for a smooth face without them.
    """
    p = face_params(u)
    full = draw_face_params(p, size=size) if image is None else image
    bare = draw_face_params(p, size=size, features=False)
    return np.abs(full.astype(np.int16) - bare.astype(np.int16)).max(-1) > 8


def _split_seed(split: str) -> int:
    try:
        return SPLITS[split]
    except KeyError:
        raise BRGMError(f"unknown face split {split!r}; use 'train' or 'test'") from None


def face_latent(i: int, split: str = "train") -> np.ndarray:
    """Latent code ``u_i`` (k,) float64 of image ``i`` of a split (seeded by ``(split seed, i)``)."""
    if i < 0:
        raise BRGMError(f"face index must be >= 0, got {i}")
    return np.random.default_rng((_split_seed(split), int(i))).standard_normal(FACE_LATENT_DIM)


def face_latents(indices: Sequence[int] | range, split: str = "train") -> np.ndarray:
    """Latent codes (N, k) float64 of several images."""
    return np.stack([face_latent(i, split) for i in indices]) if len(indices) else \
        np.zeros((0, FACE_LATENT_DIM))


def face_image_uint8(i: int, split: str = "train") -> np.ndarray:
    """Image ``i`` of a split as uint8 (64, 64, 3)."""
    return draw_face(face_latent(i, split))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (..., H, W, 3) in 0..255 -> float32 tensor (..., 3, H, W) in [-1, 1]."""
    # torch.tensor copies, so read-only arrays (e.g. from an npz cache) work without a warning
    t = torch.tensor(np.asarray(images), dtype=torch.float32)
    return (t.movedim(-1, -3) / 127.5) - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """Float tensor (..., 3, H, W) in [-1, 1] -> uint8 (..., H, W, 3) (values clipped)."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def face_image(i: int, split: str = "train") -> torch.Tensor:
    """Image ``i`` of a split: float tensor (3, 64, 64) in [-1, 1]."""
    return to_tensor(face_image_uint8(i, split))


def face_batch(indices: Sequence[int] | range, split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """Latents (B, k) float32 and images (B, 3, 64, 64) in [-1, 1] for the given indices."""
    u = face_latents(indices, split)
    imgs = np.stack([draw_face(x) for x in u])
    return torch.from_numpy(u).float(), to_tensor(imgs)


def make_face_dataset(n: int, split: str = "train", start: int = 0,
                      cache_dir: Optional[str | os.PathLike] = None,
                      progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start+n-1`` of a split: latents (n, k) float32, images (n, 64, 64, 3) uint8.

    With ``cache_dir`` the arrays are stored in ``faces_{split}_{start}_{n}.npz`` there and loaded
    from it next time (drawing 50,000 faces takes about a minute).
    """
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"faces_{split}_{start}_{n}.npz"
        if path.is_file():
            with np.load(path) as f:
                return f["u"], f["images"]
    _split_seed(split)
    u = np.zeros((n, FACE_LATENT_DIM), dtype=np.float32)
    images = np.zeros((n, FACE_RESOLUTION, FACE_RESOLUTION, 3), dtype=np.uint8)
    for j in range(n):
        z = face_latent(start + j, split)
        u[j] = z
        images[j] = draw_face(z)
        if progress and (j + 1) % 5000 == 0:
            print(f"drew {j + 1}/{n} faces", flush=True)
    if path is not None:
        from brgm_pyro.io import atomic_path

        with atomic_path(path) as tmp:  # ends in .npz, so np.savez adds nothing
            np.savez(tmp, u=u, images=images)
    return u, images


class FacesDataset(torch.utils.data.Dataset):
    """Map-style dataset: item ``i`` is ``(u (k,), image (3, 64, 64) in [-1, 1])`` of a split."""

    def __init__(self, n: int, split: str = "train", start: int = 0) -> None:
        _split_seed(split)
        self.n, self.split, self.start = n, split, start

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        if not 0 <= i < self.n:
            raise IndexError(i)
        z = face_latent(self.start + i, self.split)
        return torch.from_numpy(z).float(), to_tensor(draw_face(z))


def face_grid(images: np.ndarray | torch.Tensor, nrow: int = 8, pad: int = 2,
              pad_value: int = 255) -> np.ndarray:
    """Tile images (N, H, W, 3) uint8 or (N, 3, H, W) in [-1, 1] into one uint8 grid image."""
    if isinstance(images, torch.Tensor):
        images = to_uint8(images)
    n, h, w, c = images.shape
    ncol = nrow
    nr = (n + ncol - 1) // ncol
    grid = np.full((nr * (h + pad) + pad, ncol * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for k in range(n):
        r, q = divmod(k, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = images[k]
    return grid
