"""``builtin:faces64``: the generator bundled with brgm-pyro, trained by this project.

A 64x64 RGB StyleGAN2 (mapping 40 -> 128, 4 layers; synthesis channels min(1024 / r, 128), 10
W+ vectors) trained by ``brgm train-generator`` on the procedural cartoon faces of
:mod:`brgm_pyro.data.faces`. Weights: ``brgm_pyro/assets/faces64/generator.safetensors``; latent
statistics beside them; training details and measured quality in ``docs/model_card_faces64.md``.

The generator brings its own perceptual network: ``G.default_phi()`` returns
:func:`brgm_pyro.models.perceptual.load_faces64_percept` (an encoder trained on the same faces),
so the paper's full likelihood (pixel + perceptual) runs offline.
"""

from __future__ import annotations

from pathlib import Path

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.base import Generator
from brgm_pyro.models.generators.loading import BUILTIN_GENERATORS, load_generator

FACES64_DIR = Path(__file__).resolve().parents[2] / "assets" / "faces64"
FACES64_WEIGHTS = FACES64_DIR / "generator.safetensors"


def _faces64_phi():
    from brgm_pyro.models.perceptual import load_faces64_percept

    return load_faces64_percept()


@BUILTIN_GENERATORS.register("faces64")
def builtin_faces64() -> Generator:
    """The bundled 64x64 faces StyleGAN2 (eval mode), with ``default_phi`` and ``source_path``."""
    if not FACES64_WEIGHTS.is_file():
        raise BRGMError(f"the bundled faces64 weights are missing ({FACES64_WEIGHTS}); reinstall brgm-pyro "
                        "or train them with `brgm train-generator --out DIR` and load DIR/generator.safetensors")
    G = load_generator(FACES64_WEIGHTS)
    G.source_path = str(FACES64_WEIGHTS)
    G.default_phi = _faces64_phi
    return G
