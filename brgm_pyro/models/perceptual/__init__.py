"""Perceptual networks ``phi`` for the BRGM perceptual likelihood, and an LPIPS-style metric.

* :func:`load_faces64_percept`: the bundled network of ``builtin:faces64`` (an encoder trained
  by this project on the procedural faces; see ``docs/model_card_faces64.md``).
* :func:`load_vgg16_perceptual`: a user's own VGG16 file (NVIDIA's TorchScript ``vgg16.pt`` or a
  torchvision-layout state dict), read without executing anything.

Every ``phi`` maps images (B, 3, H, W) in [-1, 1] to features (B, D) such that
``||phi(a) - phi(b)||^2`` is an LPIPS-style distance; it is frozen (eval, no parameter grads).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from brgm_pyro.models.perceptual.faces_encoder import (EncoderFeatures, FacesEncoder, load_encoder,
                                                       save_encoder)
from brgm_pyro.models.perceptual.vgg import (VGG16LPIPS, VGGPerceptual, load_vgg16,
                                             load_vgg16_perceptual, read_torchscript_tensors)

FACES64_PERCEPT_PATH = Path(__file__).resolve().parents[2] / "assets" / "faces64" / "percept.safetensors"


def load_faces64_percept(device="cpu") -> EncoderFeatures:
    """The bundled perceptual network of ``builtin:faces64``: ``phi`` (B, 3, H>=8, W>=8) -> (B, D)."""
    return EncoderFeatures(load_encoder(FACES64_PERCEPT_PATH, device=device)).to(device)


@torch.no_grad()
def lpips_distance(a: Tensor, b: Tensor, phi: nn.Module | None = None) -> Tensor:
    """LPIPS-style distance (B,) between image batches (B, 3, H, W) in [-1, 1].

    ``phi`` defaults to the bundled faces network; pass ``load_vgg16_perceptual(path)`` to get
    the LPIPS of Zhang et al. from your own VGG16 file.
    """
    if phi is None:
        phi = load_faces64_percept(device=a.device)
    if a.shape != b.shape:
        raise ValueError(f"lpips_distance needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    return (phi(a) - phi(b)).pow(2).sum(1)


__all__ = ["FacesEncoder", "EncoderFeatures", "save_encoder", "load_encoder", "load_faces64_percept",
           "FACES64_PERCEPT_PATH", "VGG16LPIPS", "VGGPerceptual", "load_vgg16", "load_vgg16_perceptual",
           "read_torchscript_tensors", "lpips_distance"]
