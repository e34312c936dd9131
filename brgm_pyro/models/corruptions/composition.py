"""Composition of corruptions, applied in the order given: f = f_k o ... o f_1.

``Compose([Blur("gauss", 1.0), SuperResolution(2), Inpainting(mask)])`` blurs, then down-samples,
then in-paints (the mask at the low resolution). Parts may be given as built corruptions or as
specs ``{"name": <registered corruption>, **options}`` (built through the registry, so the CLI can
take a composition as JSON). Shapes chain: each part sees the previous part's output shape.

* Latents pass through: the composition owns every latent of its parts (site names must differ)
  and hands ``params`` to each part.
* Only the *last* part may have a mask: a mask marks which pixels of the observation are not
  observed, and a later part would mix missing and observed pixels (refused).
* Linear when every part is; the adjoint is the parts' adjoints in reverse order.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.corruptions.base import Corruption


class Compose(Corruption):
    """f(x) = parts[-1](... parts[0](x)); see the module docstring.

    Args:
        parts: two or more corruptions, or specs ``{"name": ..., **options}``.
    """

    name = "compose"

    def __init__(self, parts: Sequence[Union[Corruption, dict]]) -> None:
        super().__init__()
        built = [_build(p) for p in parts]
        if len(built) < 1:
            raise BRGMError("a composition needs at least one corruption")
        for p in built[:-1]:
            if p.mask is not None:
                raise BRGMError(f"only the last step of a composition may have a mask; {p.name!r} is step "
                                f"{built.index(p) + 1} of {len(built)}")
        names = [lat.name for p in built for lat in p.latents()]
        if len(set(names)) != len(names):
            raise BRGMError(f"two steps of the composition use the same latent site name: {names}")
        self.parts = nn.ModuleList(built)
        self.linear = all(p.linear for p in built)
        self.image_observation = built[-1].image_observation
        sig = [p.noise_sigma for p in built if p.noise_sigma]
        self.noise_sigma = sig[-1] if sig else None

    @property
    def mask(self) -> Optional[Tensor]:
        return self.parts[-1].mask

    def latents(self) -> list:
        return [lat for p in self.parts for lat in p.latents()]

    def shapes(self, in_shape) -> list[tuple[int, int, int]]:
        """The shape after each step, starting with ``in_shape``."""
        out = [tuple(in_shape)]
        for p in self.parts:
            p.check_input(out[-1])
            out.append(tuple(p.out_shape(out[-1])))
        return out

    def out_shape(self, in_shape):
        return self.shapes(in_shape)[-1]

    def in_shape(self, obs_shape):
        shape = tuple(obs_shape)
        for p in reversed(self.parts):
            shape = tuple(p.in_shape(shape))
        return shape

    def check_input(self, in_shape) -> None:
        self.shapes(in_shape)

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        for p in self.parts:
            x = p(x, params)
        return x

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        if not self.linear:
            raise BRGMError("this composition has a non-linear step: it has no adjoint")
        for p in reversed(self.parts):
            y = p.A_adjoint(y, params)
        return y

    def config(self) -> dict:
        return {"name": self.name, "parts": [p.config() for p in self.parts]}


def _build(part: Union[Corruption, dict]) -> Corruption:
    if isinstance(part, Corruption):
        return part
    if isinstance(part, dict) and "name" in part:
        from brgm_pyro.models.corruptions import make_corruption

        opts = {k: v for k, v in part.items() if k != "name"}
        try:
            return make_corruption(part["name"], **opts)
        except TypeError as e:
            raise BRGMError(f"bad options for the composition step {part['name']!r}: {e}") from None
    raise BRGMError(f"a composition step must be a corruption or a dict with a 'name'; got {part!r}")


def compose(*parts: Union[Corruption, dict], steps: Optional[Sequence] = None) -> Compose:
    """Registry factory: ``compose(f1, f2, ...)`` or ``compose(steps=[...])``."""
    return Compose(list(steps) if steps is not None else list(parts))


compose.cli_task = "brgm_pyro.pipeline.corruption_tasks:ComposeTask"  # brgm reconstruct --task compose --parts ...
