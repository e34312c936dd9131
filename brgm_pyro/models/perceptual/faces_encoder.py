"""The perceptual network of ``builtin:faces64``: an encoder trained to recover a face's drawing code.

:class:`FacesEncoder` is a small fully convolutional network trained by this project
(``brgm train-percept``) to predict the latent code ``u`` (k = 40 numbers: face shape, skin,
hair, eyes, mouth, glasses, background, ...) of a procedural face from its image, including from
blurred (down- then up-sampled) versions of it. Its intermediate activations therefore encode
what the faces are made of; they play the role of the VGG features in the BRGM paper.

:class:`EncoderFeatures` (``phi``) turns it into the perceptual embedding the likelihood uses:
for each of the 4 stages ``l`` the activations ``f_l`` (B, C_l, H_l, W_l) are normalised to unit
length along channels (as in LPIPS) and scaled by ``1 / sqrt(H_l W_l)``; ``phi(x)`` is their
concatenation, flattened (B, D). Hence ``||phi(a) - phi(b)||^2 = sum_l mean_hw ||f_l(a) - f_l(b)||^2``
(an LPIPS-style distance with unit layer weights, between 0 and 16). Any input size H, W >= 8 is
accepted: images are resized to 64x64 first; a one-channel (grayscale) image is replicated to
three channels, i.e. seen as the gray RGB image it displays as. A smaller image (an 8x8 super-resolution observation,
and the prediction f(G(w)) compared with it) is enlarged by area resizing, which for an integer
factor replicates each pixel into a block, as the reference BRGM code feeds its VGG; a larger one
is shrunk bilinearly with anti-aliasing. ``FacesEncoder.upsample = "bilinear"`` restores the
bilinear enlargement used before (see docs/vs_reference.md for what the choice is worth).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError

ENCODER_DEFAULTS = dict(in_channels=3, channels=(32, 64, 128, 128), out_dim=40, resolution=64)
UPSAMPLE_MODES = ("area", "nearest", "bilinear", "bicubic")


class FacesEncoder(nn.Module):
    """Fully convolutional encoder: images (B, 3, H, W) in [-1, 1] -> code (B, out_dim).

    Four stages; stage ``l`` is conv3x3 + leaky ReLU at its resolution (its output is feature
    ``l``), then a stride-2 conv3x3 + leaky ReLU. A linear head on the 4x4 map predicts the code.

    ``upsample``: how :meth:`prepare` enlarges images smaller than ``resolution`` (one of
    ``UPSAMPLE_MODES``; default ``"area"``: pixel replication for integer factors). A usage option,
    not part of the saved config.
    """

    upsample = "area"

    def __init__(self, in_channels: int = 3, channels=(32, 64, 128, 128), out_dim: int = 40,
                 resolution: int = 64) -> None:
        super().__init__()
        self._cfg = dict(in_channels=in_channels, channels=list(channels), out_dim=out_dim,
                         resolution=resolution)
        self.resolution = resolution
        cin = in_channels
        self.feat = nn.ModuleList()
        self.down = nn.ModuleList()
        for c in channels:
            self.feat.append(nn.Conv2d(cin, c, 3, padding=1))
            self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
            cin = c
        r = resolution // 2 ** len(channels)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(cin * r * r, 256), nn.LeakyReLU(0.2),
                                  nn.Linear(256, out_dim))

    def config(self) -> dict:
        return dict(self._cfg)

    def prepare(self, x: Tensor) -> Tensor:
        """Resize (B, C, H, W) to the working resolution (``upsample`` when enlarging; bilinear,
        anti-aliased, when shrinking). One-channel images are replicated to three (gray RGB)."""
        if x.ndim == 4 and x.shape[1] == 1 and self._cfg["in_channels"] == 3:
            x = x.expand(-1, 3, -1, -1)  # a grayscale image (colorization) is shown as gray RGB
        if x.ndim != 4 or x.shape[1] != self._cfg["in_channels"]:
            raise BRGMError(f"perceptual network expects images (B, {self._cfg['in_channels']}, H, W), "
                            f"got {tuple(x.shape)}")
        if min(x.shape[-2:]) < 8:
            raise BRGMError(f"perceptual network needs images of at least 8x8 pixels, got "
                            f"{x.shape[-2]}x{x.shape[-1]}")
        r = self.resolution
        if tuple(x.shape[-2:]) == (r, r):
            return x
        if x.shape[-2] > r or x.shape[-1] > r:
            return F.interpolate(x, size=(r, r), mode="bilinear", align_corners=False, antialias=True)
        if self.upsample not in UPSAMPLE_MODES:
            raise BRGMError(f"FacesEncoder.upsample must be one of {', '.join(UPSAMPLE_MODES)}, "
                            f"got {self.upsample!r}")
        smooth = self.upsample in ("bilinear", "bicubic")
        return F.interpolate(x, size=(r, r), mode=self.upsample, **({"align_corners": False} if smooth else {}))

    def features(self, x: Tensor) -> list[Tensor]:
        """The 4 stage activations [(B, C_l, 64 / 2^l, 64 / 2^l)] and, last, the 4x4 map."""
        x = self.prepare(x)
        feats = []
        for conv, down in zip(self.feat, self.down):
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
            x = F.leaky_relu(down(x), 0.2)
        feats.append(x)
        return feats

    def forward(self, x: Tensor) -> Tensor:
        """Predicted code (B, out_dim)."""
        return self.head(self.features(x)[-1])


def _unit(f: Tensor, eps: float = 1e-8) -> Tensor:
    return f * torch.rsqrt(f.pow(2).sum(1, keepdim=True) + eps)


class EncoderFeatures(nn.Module):
    """``phi``: images (B, 3, H, W) in [-1, 1], H, W >= 8 -> features (B, D), D = sum_l C_l H_l W_l.

    ``||phi(a) - phi(b)||^2`` is the LPIPS-style distance described in the module docstring.
    Frozen (eval mode, no gradients for its parameters); gradients flow to the input.

    ``default_sigma`` (0.002, feature units) is the perceptual noise std that
    :func:`brgm_pyro.models.brgm.build_model` uses with this network: about the per-feature std that
    the default pixel noise (std 0.05) causes in ``phi`` of an 8x8 observation
    (``sqrt(E||phi(y + e) - phi(y)||^2 / D)`` = sqrt(0.53 / 237,568) = 0.0015 through the area
    path, 32 test faces; 0.0005 on a 64x64 observation), i.e. the noise phi(y) actually carries.
    Chosen among 0.05, 0.02, 0.01, 0.005 and 0.002 on validation faces (test split 64-79) with
    the reference-style comparison of ``benchmarks/vs_reference.py`` (``docs/vs_reference.md``).
    The former 0.05 balanced the two terms' total noise cost instead (0.42 / 0.05^2 against 192
    pixels), which left the perceptual term ~500x weaker, relative to the pixel term on x8
    super-resolution, than the reference BRGM loop weights it.
    The perceptual term then dominates the pixel term (as in the reference code), and posteriors
    (VI, MCMC) that use it are correspondingly narrower.
    """

    default_sigma = 0.002

    def __init__(self, encoder: FacesEncoder, default_sigma: float | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        if default_sigma is not None:  # another network's own scale (builtin:fashion32)
            self.default_sigma = float(default_sigma)
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder.features(x)[:-1]
        out = [(_unit(f) / (f.shape[-1] * f.shape[-2]) ** 0.5).flatten(1) for f in feats]
        return torch.cat(out, dim=1)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS-style distance (B,) between two image batches (B, 3, H, W) in [-1, 1]."""
        return (self(a) - self(b)).pow(2).sum(1)


def save_encoder(encoder: FacesEncoder, path: str | os.PathLike, metadata: dict | None = None) -> None:
    """Write the encoder's weights and config to a safetensors file (atomically)."""
    from safetensors.torch import save_file

    meta = {"config": json.dumps(encoder.config()), "kind": "faces_encoder"}
    for k, v in (metadata or {}).items():
        meta[str(k)] = v if isinstance(v, str) else json.dumps(v)
    from brgm_pyro.io import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}, tmp,
                  metadata=meta)


def load_encoder(path: str | os.PathLike, device="cpu") -> FacesEncoder:
    """Read a :class:`FacesEncoder` written by :func:`save_encoder` (no code is executed)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BRGMError(f"perceptual network file {str(path)!r} not found; train one with "
                        "`brgm train-percept --out DIR`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
        cfg = json.loads(meta["config"])
    except Exception as e:  # noqa: BLE001 - any parse problem is the user's file
        raise BRGMError(f"cannot read perceptual network {str(path)!r}: {type(e).__name__}: {e}") from None
    enc = FacesEncoder(**cfg)
    try:
        enc.load_state_dict(state)
    except RuntimeError as e:
        raise BRGMError(f"perceptual network {str(path)!r} does not match its config: "
                        f"{str(e).splitlines()[0]}") from None
    return enc.to(device).eval()


def encoder_metadata(path: str | os.PathLike) -> dict:
    """The metadata dict stored with a saved encoder (strings)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})
