"""Starting values of every latent site, as Pyro's ``init_loc_fn`` wants them.

The components state their starting values (:meth:`BRGMModel.init_values`); a user may override
any of them. A site nobody gives a value for is an error naming it, never a silent draw.
"""

from __future__ import annotations

from typing import Optional

from pyro.infer.autoguide.initialization import init_to_value
from torch import Tensor

from brgm_pyro.errors import BRGMError


def initial_values(model, y: Tensor, init: Optional[dict] = None, init_w: Optional[Tensor] = None) -> dict:
    """site -> starting value (natural layout, on y's device): the model's, updated by ``init``/``init_w``."""
    given = dict(init or {})
    if init_w is not None:
        given[model.image_site] = init_w
    sites = model.latent_sites()
    unknown = sorted(set(given) - set(sites))
    if unknown:
        raise BRGMError(f"init names unknown latent site(s) {unknown}; the model's are {sorted(sites)}")
    values = model.init_values(y.shape[0], device=y.device, skip=list(given))
    for k, v in given.items():
        values[k] = _checked(k, v, sites[k].value_shape(y.shape[0])).to(y)
    return {k: values[k] for k in sites}


def _checked(name: str, v, shape: tuple) -> Tensor:
    import torch

    v = torch.as_tensor(v).detach().clone()
    if tuple(v.shape) != tuple(shape):
        raise BRGMError(f"the starting value of {name!r} must have shape {tuple(shape)}; got {tuple(v.shape)}")
    return v


def _refuse(site):
    raise BRGMError(f"no starting value for the latent site {site['name']!r}: its component must state one "
                    "(init_value) or pass it in init=")


def init_loc_fn(values: dict):
    """Pyro ``init_loc_fn`` returning ``values[site]`` for every site, refusing unknown ones."""
    return init_to_value(values=values, fallback=_refuse)


__all__ = ["initial_values", "init_loc_fn"]
