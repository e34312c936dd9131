"""``builtin:faces64``: the generator bundled with brgm-pyro, trained by this project.

A 64x64 RGB StyleGAN2 (mapping 40 -> 128, 4 layers; synthesis channels min(1024 / r, 128), 10
W+ vectors) trained by ``brgm train-generator`` on the procedural cartoon faces of
:mod:`brgm_pyro.data.faces`. Weights: ``brgm_pyro/assets/faces64/generator.safetensors``; latent
statistics beside them; training details and measured quality in ``docs/model_card_faces64.md``.

``builtin:faces64-l1`` is the same network after the first training stage only (L1 regression,
44,000 steps): blurrier, without eyes, but closer to the drawings in PSNR on ill-posed tasks (it
predicts an average face where the observation is ambiguous). Shipped so that the two can be
compared on the same problem; the model card has both sets of figures.

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
FACES64_L1_WEIGHTS = FACES64_DIR.parent / "faces64_l1" / "generator.safetensors"


def _faces64_phi():
    from brgm_pyro.models.perceptual import load_faces64_percept

    return load_faces64_percept()


def _bundled(path: Path) -> Generator:
    if not path.is_file():
        raise BRGMError(f"the bundled faces64 weights are missing ({path}); reinstall brgm-pyro "
                        "or train them with `brgm train-generator --out DIR` and load DIR/generator.safetensors")
    G = load_generator(path)
    G.source_path = str(path)
    G.default_phi = _faces64_phi
    return G


@BUILTIN_GENERATORS.register("faces64")
def builtin_faces64() -> Generator:
    """The bundled 64x64 faces StyleGAN2 (eval mode), with ``default_phi`` and ``source_path``."""
    return _bundled(FACES64_WEIGHTS)


@BUILTIN_GENERATORS.register("faces64-l1")
def builtin_faces64_l1() -> Generator:
    """The stage-1 (regression-only, faceless) weights of the same network, for comparison."""
    return _bundled(FACES64_L1_WEIGHTS)
