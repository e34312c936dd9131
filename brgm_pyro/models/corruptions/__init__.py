"""Corruption operators. Add one by writing a :class:`Corruption` subclass in a new file and
registering a factory with ``@CORRUPTIONS.register(name)`` here."""

from brgm_pyro.models.corruptions.base import Corruption
from brgm_pyro.models.corruptions.inpaint import Identity, Inpainting
import torch

from brgm_pyro.models.corruptions.superres import SuperResolution, blind_superres, blur_width_latent
from brgm_pyro.registry import Registry

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
# ``example(image_shape)``: a small instance for the contract tests (tests/test_contracts.py)
CORRUPTIONS.register("superres", example=lambda shape: SuperResolution(2, "bicubic"))(SuperResolution)
CORRUPTIONS.register("inpaint", example=lambda shape: Inpainting(
    torch.arange(shape[-1] * shape[-2]).reshape(shape[-2], shape[-1]) % 3 != 0))(Inpainting)
CORRUPTIONS.register("none", example=lambda shape: Identity())(Identity)
CORRUPTIONS.register("superres_blind", example=lambda shape: SuperResolution(
    2, "gauss", gauss_sigma=blur_width_latent(2)))(blind_superres)


def make_corruption(name: str, **kwargs) -> Corruption:
    """Build a registered corruption by name, e.g. ``make_corruption("superres", factor=8)``."""
    return CORRUPTIONS.build(name, **kwargs)


__all__ = ["Corruption", "SuperResolution", "Inpainting", "Identity", "CORRUPTIONS", "make_corruption"]
