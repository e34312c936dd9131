"""Corruption operators. Add one by writing a :class:`Corruption` subclass in a new file and
registering a factory with ``@CORRUPTIONS.register(name)`` here."""

from brgm_pyro.models.corruptions.base import Corruption
from brgm_pyro.models.corruptions.inpaint import Identity, Inpainting
import torch

from brgm_pyro.models.corruptions.superres import SuperResolution, blind_superres, blur_width_latent
from brgm_pyro.models.corruptions.colorization import Colorization
from brgm_pyro.models.corruptions.compressed_sensing import CompressedSensing
from brgm_pyro.models.corruptions.composition import Compose, compose
from brgm_pyro.models.corruptions.deblur import Blur, blind_deblur
from brgm_pyro.models.corruptions.denoising import Denoising
from brgm_pyro.registry import Registry

CORRUPTIONS: Registry[Corruption] = Registry("corruption")
# ``example(image_shape)``: a small instance for the contract tests (tests/test_contracts.py)
CORRUPTIONS.register("superres", example=lambda shape: SuperResolution(2, "bicubic"))(SuperResolution)
CORRUPTIONS.register("inpaint", example=lambda shape: Inpainting(
    torch.arange(shape[-1] * shape[-2]).reshape(shape[-2], shape[-1]) % 3 != 0))(Inpainting)
CORRUPTIONS.register("none", example=lambda shape: Identity())(Identity)
CORRUPTIONS.register("superres_blind", example=lambda shape: SuperResolution(
    2, "gauss", gauss_sigma=blur_width_latent(2)))(blind_superres)
CORRUPTIONS.register("colorize", example=lambda shape: Colorization() if shape[0] == 3 else Colorization(
    [1.0 / shape[0]] * shape[0]))(Colorization)
CORRUPTIONS.register("denoise", example=lambda shape: Denoising(0.2))(Denoising)
CORRUPTIONS.register("deblur", example=lambda shape: Blur("gauss", sigma=1.0))(Blur)
CORRUPTIONS.register("deblur_blind", example=lambda shape: blind_deblur(1.0))(blind_deblur)
CORRUPTIONS.register("cs", example=lambda shape: CompressedSensing(
    m=(shape[0] * shape[1] * shape[2]) // 2, img_shape=shape))(CompressedSensing)
CORRUPTIONS.register("compose", example=lambda shape: Compose([
    Blur("gauss", sigma=1.0), SuperResolution(2, "bicubic"),
    Inpainting(torch.arange((shape[-1] // 2) * (shape[-2] // 2)).reshape(shape[-2] // 2, shape[-1] // 2) % 3 != 0)]))(
    compose)


def make_corruption(name: str, **kwargs) -> Corruption:
    """Build a registered corruption by name, e.g. ``make_corruption("superres", factor=8)``."""
    return CORRUPTIONS.build(name, **kwargs)


__all__ = ["Corruption", "SuperResolution", "Inpainting", "Identity", "Colorization", "Denoising", "Blur",
           "CompressedSensing", "Compose", "CORRUPTIONS", "make_corruption"]
