"""The result of any inference method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class InferenceResult:
    """What an inference run returns, for every latent site of the model.

    Attributes:
        method: ``"map"``, ``"vi"``, ``"sgld"``, ...
        latents: site -> point estimate (the MAP, or the posterior mean), natural layout
            (w: (B, L, d); a shared scalar: (); a per-image scalar: (B,)).
        image: (B, C, H, W) reconstruction in [-1, 1]: G(w_MAP) (plus E[e | w_MAP, y] with a
            discrepancy term: :meth:`BRGMModel.point_image`), or the posterior mean of the
            predictive images when samples exist.
        draws: site -> (S, *value shape) posterior draws (flattened over chains), or None.
        samples: (S, B, C, H, W) images of the draws, or None.
        history: loss-term name -> one float per step (log densities are reported as their
            negatives, i.e. as losses; ``loss`` is the total minimised).
        timing: ``{"total_s", "per_step_s" (median), "steps", ...}``.
        stopped: None if the run finished; otherwise why it stopped early (NaN, Ctrl-C, ...).
        extra: method-specific data (guide parameters, chain structure, sample stats).
        image_site: the site G renders (the prior's, ``w``); ``.w`` and ``.samples_w`` read it.
        weights: (S, B) normalised importance weights of the draws per image (each column sums to
            1; VI with ``reweight="psis"``), or None for equally weighted draws. The mean, std and
            intervals of a weighted result use them.
    """

    method: str
    latents: dict[str, Tensor]
    image: Tensor
    draws: Optional[dict[str, Tensor]] = None
    samples: Optional[Tensor] = None
    history: dict[str, list[float]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)
    image_site: str = "w"
    weights: Optional[Tensor] = None

    @property
    def w(self) -> Tensor:
        """The point estimate of the rendered latent: (B, L, d)."""
        return self.latents[self.image_site]

    @property
    def samples_w(self) -> Optional[Tensor]:
        """Draws of the rendered latent (S, B, L, d), or None."""
        return None if self.draws is None else self.draws[self.image_site]

    def mean_image(self) -> Tensor:
        """Posterior mean of the image (B, C, H, W); the reconstruction for point estimates."""
        if self.samples is None:
            return self.image
        if self.weights is None:
            return self.samples.mean(0)
        return (self._w() * self.samples).sum(0)

    def _w(self) -> Tensor:
        """The weights broadcast against the samples: (S, B, 1, 1, 1)."""
        w = self.weights.to(self.samples)
        return w.reshape(*w.shape, *([1] * (self.samples.ndim - 2)))

    def std_image(self) -> Tensor:
        """Per-pixel posterior standard deviation (B, C, H, W); zeros without samples."""
        if self.samples is None or self.samples.shape[0] < 2:
            return torch.zeros_like(self.image)
        if self.weights is None:
            return self.samples.std(0)
        w = self._w()
        m = (w * self.samples).sum(0)
        return ((w * (self.samples - m) ** 2).sum(0)).clamp_min(0).sqrt()

    def scalar_summary(self) -> dict[str, dict]:
        """For every latent other than the rendered one: the point estimate and, with draws,
        mean, sd and 5 / 50 / 95 % quantiles (per image for per-image latents), as floats/lists."""
        out = {}
        for name, v in self.latents.items():
            if name == self.image_site:
                continue
            row: dict[str, Any] = {"estimate": v.detach().cpu().tolist()}
            if self.draws is not None and name in self.draws:
                d = self.draws[name].detach().double().cpu()
                q = torch.quantile(d, torch.tensor([0.05, 0.5, 0.95], dtype=d.dtype), dim=0)
                row.update({"mean": d.mean(0).tolist(), "sd": d.std(0).tolist() if d.shape[0] > 1 else None,
                            "q05": q[0].tolist(), "q50": q[1].tolist(), "q95": q[2].tolist()})
            out[name] = row
        return out

    def summary(self) -> dict[str, Any]:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return {"method": self.method, "final_terms": last, "timing": self.timing, "stopped": self.stopped,
                "latents": self.scalar_summary()}
