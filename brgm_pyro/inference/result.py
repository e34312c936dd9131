"""The result of any inference method."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass
class InferenceResult:
    """What an inference run returns.

    Attributes:
        method: ``"map"``, ``"vi"``, ``"sgld"``, ...
        w: (B, L, d) point estimate: the MAP, or the posterior mean of w.
        image: (B, C, H, W) reconstruction in [-1, 1]: G(w_MAP), or the posterior mean of G(w)
            when samples exist.
        samples_w: (S, B, L, d) posterior draws (flattened over chains), or None.
        samples: (S, B, C, H, W) images of the draws, or None.
        history: loss-term name -> one float per step (log densities are reported as their
            negatives, i.e. as losses; ``loss`` is the total minimised).
        timing: ``{"total_s", "per_step_s" (median), "steps", ...}``.
        stopped: None if the run finished; otherwise why it stopped early (NaN, Ctrl-C, ...).
        extra: method-specific data (guide parameters, chain structure, sample stats).
    """

    method: str
    w: Tensor
    image: Tensor
    samples_w: Optional[Tensor] = None
    samples: Optional[Tensor] = None
    history: dict[str, list[float]] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    stopped: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)

    def mean_image(self) -> Tensor:
        """Posterior mean of the image (B, C, H, W); the reconstruction for point estimates."""
        return self.samples.mean(0) if self.samples is not None else self.image

    def std_image(self) -> Tensor:
        """Per-pixel posterior standard deviation (B, C, H, W); zeros without samples."""
        if self.samples is None or self.samples.shape[0] < 2:
            return torch.zeros_like(self.image)
        return self.samples.std(0)

    def summary(self) -> dict[str, Any]:
        last = {k: v[-1] for k, v in self.history.items() if v}
        return {"method": self.method, "final_terms": last, "timing": self.timing, "stopped": self.stopped}
