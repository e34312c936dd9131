r"""The tempered targets of SMC over every latent site, batched over particles.

Particles live in the unconstrained coordinates z of every latent site (``w``; ``log sigma``
for a learned noise level, ...), as the MCMC runner's do, flattened to one row each: (N, D).
With x = T(z) the constrained values, the model's log density splits in two parts:

    ref(z)  = sum of the latent sites' own log densities + log|det dT/dz|   (the reference q0)
    rest(z) = the likelihood sites (y, y_percept) + the prior's factor sites (colinearity, ...)

The reference is the model's own prior program without its factor sites, so particles start as
exact draws of it (one trace of the model, every latent site sampled). The tempered target is

    log pi_beta(z) = ref(z) + beta * rest(z),      beta from 0 (q0) to 1 (the posterior),

and the normalising constant of pi_1 is p(y) for a prior without factors (with a factor, e.g. the
colinearity term, the evidence is that of the unnormalised prior: compare models sharing it).
All N particles go through the model in one trace, inside a ``particles`` plate at dim -2
(left of the images plate), so G renders the N (B images each) as one batch.
"""

from __future__ import annotations

import math
from typing import Optional

import pyro
import torch
from pyro import poutine
from torch import Tensor
from torch.distributions import biject_to

from brgm_pyro.models.density import log_density_terms, natural_layout

REF, REST = "ref", "rest"


class SMCTarget:
    """ref(z), rest(z) and their gradients for a population z (N, D) of one model and observation.

    Args:
        model: a :class:`~brgm_pyro.models.brgm.BRGMModel`.
        y: (B, C, h, w) observation.
        chunk: particles per trace (None: what the memory budget holds, ``model.max_memory`` or the
            device's default; all N when they fit).
    """

    def __init__(self, model, y: Tensor, chunk: Optional[int] = None) -> None:
        from brgm_pyro.inference.mcmc.runner import _supports

        self.model, self.y, self.chunk = model, y, chunk
        B = y.shape[0]
        self.sites = model.latent_sites()
        self.shapes = {k: tuple(s.value_shape(B)) for k, s in self.sites.items()}
        self.sizes = {k: math.prod(s) for k, s in self.shapes.items()}
        self.dim = sum(self.sizes.values())
        self.transforms = {k: biject_to(s) for k, s in _supports(model, y).items()}
        self.site_split = {k: (REF if k in self.sites else REST) for k in model.site_terms()}

    # --- layouts -----------------------------------------------------------------------------
    def unpack(self, z: Tensor) -> dict[str, Tensor]:
        """(N, D) -> site -> (N, *value shape), unconstrained, in the model's site order."""
        out, pos = {}, 0
        for k, shape in self.shapes.items():
            out[k] = z[:, pos:pos + self.sizes[k]].reshape(z.shape[0], *shape)
            pos += self.sizes[k]
        return out

    def pack(self, values: dict[str, Tensor]) -> Tensor:
        """site -> (N, *value shape) unconstrained -> (N, D)."""
        return torch.cat([values[k].reshape(values[k].shape[0], -1) for k in self.shapes], dim=1)

    def constrain(self, z: Tensor) -> dict[str, Tensor]:
        """(N, D) -> site -> constrained value (N, *value shape) (natural layout)."""
        return {k: self.transforms[k](v) for k, v in self.unpack(z).items()}

    def unconstrain(self, x: dict[str, Tensor]) -> Tensor:
        return self.pack({k: self.transforms[k].inv(v) for k, v in x.items()})

    # --- densities ---------------------------------------------------------------------------
    def _terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        zs = self.unpack(z)
        x = {k: self.transforms[k](v) for k, v in zs.items()}
        terms = log_density_terms(self.model, self.y, x, site_terms=self.site_split)
        logdet = sum(self.transforms[k].log_abs_det_jacobian(zs[k], x[k]).reshape(z.shape[0], -1).sum(1)
                     for k in zs)
        zero = z.new_zeros(z.shape[0])
        return terms.get(REF, zero) + logdet, terms.get(REST, zero)

    def terms(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(ref (N,), rest (N,)) without gradients."""
        with torch.no_grad():
            parts = [self._terms(c) for c in self._chunks(z)]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def terms_and_grads(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(ref, rest (N,), grad ref, grad rest (N, D)): one batched forward and two backwards.

        Particles are independent, so the gradient of the sum is every particle's gradient.
        """
        out = []
        for c in self._chunks(z):
            c = c.detach().requires_grad_(True)
            ref, rest = self._terms(c)
            g_ref, = torch.autograd.grad(ref.sum(), c, retain_graph=True)
            g_rest, = torch.autograd.grad(rest.sum(), c)
            out.append((ref.detach(), rest.detach(), g_ref, g_rest))
        return tuple(torch.cat([o[i] for o in out]) for i in range(4))  # type: ignore[return-value]

    def _chunks(self, z: Tensor):
        # None: as many particles per trace as the memory budget holds (brgm_pyro.memory), as VI's particles
        n = self.chunk or self._budget_chunk(z.shape[0])
        return [z[i:i + n] for i in range(0, z.shape[0], n)]

    def _budget_chunk(self, num: int) -> int:
        from brgm_pyro.memory import items_per_chunk

        if getattr(self, "_per_chunk", None) is None or self._per_chunk[0] != num:
            self._per_chunk = (num, items_per_chunk(self.model, num, self.y.shape[0]))
        return self._per_chunk[1]

    # --- the reference -----------------------------------------------------------------------
    def reference_draws(self, num: int) -> Tensor:
        """``num`` exact draws of q0 (the model's latent sites from their priors): (num, D).

        One trace of the model in a particles plate; the torch RNG must be seeded by the caller.
        """
        def fn(y):
            with pyro.plate("particles", num, dim=-2):
                return self.model(y)

        with torch.no_grad(), poutine.block():
            tr = poutine.trace(fn).get_trace(self.y)
        vals = natural_layout(self.model, {k: tr.nodes[k]["value"] for k in self.sites}, 1)
        return self.unconstrain({k: v.reshape(num, *self.shapes[k]) for k, v in vals.items()})


__all__ = ["SMCTarget", "REF", "REST"]
