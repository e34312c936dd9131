"""``builtin:fashion32``: a StyleGAN2 trained adversarially on real photographs (Fashion-MNIST).

A 32x32 one-channel StyleGAN2 (mapping 64 -> 128, 4 layers; synthesis channels
min(1024 / r, 128), 8 W+ vectors of 128) trained by ``brgm train-generator --data fashion-mnist``
on the 55,000 Fashion-MNIST training photographs (Zalando, MIT licence; padded to 32x32), the
exponential moving average of G shipped. Its perceptual network is a classifier trained on the
same split (``percept.safetensors``); a second, independently trained classifier
(``judge.safetensors``) is the evaluation network of the model card
(``docs/model_card_fashion32.md``), never part of the likelihood.
"""

from __future__ import annotations

import json
from pathlib import Path

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.base import Generator
from brgm_pyro.models.generators.loading import BUILTIN_GENERATORS, load_generator

FASHION32_DIR = Path(__file__).resolve().parents[2] / "assets" / "fashion32"
FASHION32_WEIGHTS = FASHION32_DIR / "generator.safetensors"


def _asset(name: str) -> Path:
    p = FASHION32_DIR / name
    if not p.is_file():
        raise BRGMError(f"the bundled fashion32 file {p} is missing; reinstall brgm-pyro")
    return p


def percept_sigma() -> float | None:
    """The perceptual noise std stored with the network (``percept.json``), or None."""
    p = FASHION32_DIR / "percept.json"
    return float(json.loads(p.read_text())["default_sigma"]) if p.is_file() else None


def load_fashion32_network(role: str = "percept", device="cpu"):
    """``phi`` of the ``percept`` (likelihood) or ``judge`` (evaluation) classifier: (B, 1, H, W) -> (B, D)."""
    from brgm_pyro.models.perceptual.faces_encoder import EncoderFeatures, load_encoder

    if role not in ("percept", "judge"):
        raise BRGMError(f"fashion32 networks are 'percept' and 'judge', got {role!r}")
    enc = load_encoder(_asset(f"{role}.safetensors"), device=device)
    return EncoderFeatures(enc, default_sigma=percept_sigma() if role == "percept" else None).to(device)


@BUILTIN_GENERATORS.register("fashion32")
def builtin_fashion32() -> Generator:
    """The bundled 32x32 Fashion-MNIST StyleGAN2 (eval mode), with ``default_phi`` and ``source_path``."""
    G = load_generator(_asset("generator.safetensors"))
    G.source_path = str(FASHION32_WEIGHTS)
    G.default_phi = lambda: load_fashion32_network("percept", device=str(G.device()))
    return G
