"""Corruption operators. Add one by writing a :class:`Corruption` subclass in a new file and
registering a factory with ``@CORRUPTIONS.register(name)`` here."""

from brgm_pyro.models.corruptions.base import Corruption
from brgm_pyro.models.corruptions.inpaint import Identity, Inpainting
from brgm_pyro.models.corruptions.superres import SuperResolution
from brgm_pyro.registry import Registry

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
CORRUPTIONS.register("superres")(SuperResolution)
CORRUPTIONS.register("inpaint")(Inpainting)
CORRUPTIONS.register("none")(Identity)


def make_corruption(name: str, **kwargs) -> Corruption:
    """Build a registered corruption by name, e.g. ``make_corruption("superres", factor=8)``."""
    return CORRUPTIONS.build(name, **kwargs)


__all__ = ["Corruption", "SuperResolution", "Inpainting", "Identity", "CORRUPTIONS", "make_corruption"]
