"""Corruption operators f: clean image -> observation, on one base class.

Every operator is a differentiable, batched torch module mapping ``x`` of shape (..., C, H, W)
to the observation (..., C, h, w). Leading dims are free (images, Pyro particles, samples).
``mask`` says which output pixels are observed (True) and therefore enter the likelihood;
``None`` means all. Missing pixels are *not observed*: they are dropped from the likelihood,
never compared with a fill value.

A corruption with an unknown parameter (blind reconstruction, e.g. the width of a blur kernel)
owns a :class:`~brgm_pyro.models.latents.ScalarLatent` (:meth:`Corruption.latents`) and reads
its value from ``params`` in :meth:`Corruption.forward`.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn


class Corruption(nn.Module):
    """Base class. Subclasses implement :meth:`apply` on (N, C, H, W) and :meth:`out_shape`.

    deepinv's names are kept where they mean the same thing (docs/corruptions.md): :meth:`A` is
    the noise-free operator (our ``forward``) and, for a linear operator (``linear = True``),
    :meth:`A_adjoint` its transpose, with ``<A x, y> = <x, A^T y>``. The default adjoint is the
    exact vector-Jacobian product of ``forward`` at 0 (it needs :meth:`in_shape`); operators
    with a closed form override it.
    """

    name: str = "corruption"
    linear: bool = False
    # False when observations are not images (compressed sensing): no PNG, no perceptual term
    image_observation: bool = True
    # the noise std the task simulates by default ([-1, 1] units), or None (noise-free)
    noise_sigma: Optional[float] = None
    # True when A acts on each pixel location on its own (masks, channel mixing, identity): then
    # diag(A R A^T) = diag(A A^T) for any R with unit diagonal that does not mix channels
    pixelwise: bool = False

    def obs_channels(self, in_shape: tuple[int, int, int] = (3, 64, 64)) -> int:
        """Channels of the observation of clean images of ``in_shape`` (C, H, W)."""
        return int(self.out_shape(tuple(in_shape))[0])

    def in_shape(self, obs_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Clean-image shape (C, H, W) whose observation has ``obs_shape`` (for the adjoint)."""
        from brgm_pyro.errors import BRGMError

        raise BRGMError(f"the corruption {self.name!r} does not state its input shape")

    def A(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        """deepinv's name for the noise-free operator: ``forward(x, params)``."""
        return self(x, params)

    def A_adjoint(self, y: Tensor, params: Optional[dict] = None) -> Tensor:
        """A^T y: (..., *obs_shape) -> (..., *in_shape) for a linear operator."""
        from brgm_pyro.errors import BRGMError

        if not self.linear:
            raise BRGMError(f"the corruption {self.name!r} is not linear: it has no adjoint")
        shape = self.in_shape(tuple(y.shape[-3:]))
        with torch.enable_grad():
            x0 = torch.zeros(*y.shape[:-3], *shape, dtype=y.dtype, device=y.device, requires_grad=True)
            (g,) = torch.autograd.grad(self(x0, params), x0, grad_outputs=y)
        return g

    def gram_diagonal(self, in_shape: tuple[int, int, int], params: Optional[dict] = None,
                      dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """diag(A A^T) on the observation grid, (*obs_shape): sum_j A_ij^2 for every output element i.

        The variance a clean-image perturbation e ~ N(0, tau^2 I) adds to observation i is
        tau^2 diag(A A^T)_i (:mod:`brgm_pyro.models.discrepancy`). The default is exact for any
        linear operator without latents: ||A^T u_i||^2 for every unit vector u_i of the
        observation (:meth:`_probed_row_norms`). Operators with a closed form (masks, block means,
        separable kernels) override it.
        """
        self._check_probe(params, "diag(A A^T)")
        return self._probed_row_norms(("gram",), in_shape, params, dtype, device, lambda v: v)

    def smoothed_gram_diagonal(self, in_shape: tuple[int, int, int], smoother, params: Optional[dict] = None,
                               dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """diag(A K K^T A^T) on the observation grid for a spatial smoother K (coloured discrepancy).

        ``smoother`` has ``apply``/``adjoint`` over the last two dims, ``diag(K K^T) = 1`` and a
        hashable ``key`` (:class:`~brgm_pyro.models.discrepancy.StationarySmoother`). A pixelwise
        operator's answer is its :meth:`gram_diagonal`; the default is exact for any linear operator
        without latents: ||K^T A^T u_i||^2 for every unit vector u_i of the observation. Operators
        with a closed form (separable kernels) override it.
        """
        if self.pixelwise:
            return self.gram_diagonal(in_shape, params, dtype, device)
        self._check_probe(params, "diag(A R A^T) for a coloured discrepancy")
        return self._probed_row_norms(("smoothed_gram", smoother.key), in_shape, params, dtype, device,
                                      smoother.adjoint)

    def _check_probe(self, params: Optional[dict], what: str) -> None:
        from brgm_pyro.errors import BRGMError

        if not self.linear:
            raise BRGMError(f"the corruption {self.name!r} is not linear: {what} is not defined")
        if self.latents() and params is not None:
            raise BRGMError(f"the corruption {self.name!r} has inferred parameters and does not state {what} "
                            "as a function of them; drop the discrepancy term (--discrepancy off, or "
                            "discrepancy=None in build_model) or fix the parameters")

    def _probed_row_norms(self, tag: tuple, in_shape, params, dtype, device, post) -> Tensor:
        """||post(A^T u_i)||^2 for every unit vector u_i of the observation: (*obs_shape), in chunks of
        256 (one adjoint each), cached per ``tag``, shape, dtype and device."""
        key = (*tag, tuple(in_shape), dtype, str(device))
        cache = self.__dict__.setdefault("_gram_cache", {})
        if key not in cache:
            obs = tuple(self.out_shape(tuple(in_shape)))
            m = int(torch.tensor(obs).prod())
            out = torch.empty(m, dtype=dtype, device=device)
            with torch.no_grad():
                for s in range(0, m, 256):
                    idx = torch.arange(s, min(s + 256, m), device=device)
                    u = torch.zeros(idx.numel(), m, dtype=dtype, device=device)
                    u[torch.arange(idx.numel(), device=device), idx] = 1.0
                    at = post(self.A_adjoint(u.reshape(-1, *obs), params))
                    out[s:s + idx.numel()] = at.reshape(idx.numel(), -1).pow(2).sum(-1)
            cache[key] = out.reshape(obs)
        return cache[key]

    def simulate(self, x: Tensor, generator: Optional[torch.Generator] = None,
                 params: Optional[dict] = None) -> Tensor:
        """An observation of x: A x plus, when :attr:`noise_sigma` is set, seeded Gaussian noise."""
        y = self(x, params)
        if self.noise_sigma:
            y = y + self.noise_sigma * torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
        return y

    def out_shape(self, in_shape: tuple[int, int, int]) -> tuple[int, int, int]:
        """Observation shape (C, h, w) for a clean image of shape (C, H, W)."""
        return tuple(in_shape)  # type: ignore[return-value]

    @property
    def mask(self) -> Optional[Tensor]:
        """Bool tensor broadcastable to the observation, True = observed; None = all observed."""
        return None

    def apply(self, x: Tensor) -> Tensor:  # (N, C, H, W) -> (N, C, h, w)
        raise NotImplementedError

    def latents(self) -> list:
        """The scalar latents this operator owns (none by default)."""
        return []

    def forward(self, x: Tensor, params: Optional[dict] = None) -> Tensor:
        """f(x): (..., C, H, W) -> (..., C, h, w); ``params`` holds the values of :meth:`latents`."""
        lead = x.shape[:-3]
        out = self.apply(x.reshape(-1, *x.shape[-3:]))
        return out.reshape(*lead, *out.shape[-3:])

    def check_input(self, in_shape: tuple[int, int, int]) -> None:
        """Raise BRGMError if this operator cannot act on images of ``in_shape``."""

    def config(self) -> dict:
        return {"name": self.name}
