"""MAP estimation with an AutoDelta guide (paper Eq. 5-6).

    w* = argmax_w  log p(w) + log p(y | w)   =   argmin_w  L(w) / 2   (L the paper's Eq. 6 loss)

Adam on the latent, initialised at the prior mean (mu repeated over W+) or at ``init_w``.
"""

from __future__ import annotations

from typing import Callable, Optional

import pyro
import torch
from pyro.infer.autoguide import AutoDelta
from torch import Tensor

from brgm_pyro.inference.engine import ELBOTerms, optimise, save_checkpoint
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.sites import init_loc_fn, initial_values
from brgm_pyro.models.brgm import BRGMModel

DEFAULT_MAP_STEPS = 250
# Adam learning rate of MAP, in latent units per step, constant (lr_decay 1): the reference BRGM
# loop's schedule. Chosen on validation faces (test split 64-79) of the shipped builtin:faces64 with
# its perceptual network (benchmarks/vs_reference.py; docs/vs_reference.md): with lr 0.1 constant
# both x8 super-resolution and in-painting gain over the former 0.05 -> 0.005 geometric decay, which
# had been chosen on the stage-1 weights. See docs/defaults.md, "Optimiser settings".
DEFAULT_MAP_LR = 0.1
DEFAULT_MAP_LR_DECAY = 1.0
# W+ inversion (nothing missing, no noise to overfit): a constant lr 0.2 reached +1.0 dB over the
# default in 300 steps on the same validation faces; ``brgm reconstruct --task none`` and
# benchmarks/eval_faces64.py use these options (one place, so the two cannot drift apart).
INVERSION_MAP_LR = 0.2
INVERSION_MAP_OPTIONS = {"lr": INVERSION_MAP_LR, "lr_decay": 1.0}


def run_map(
    model: BRGMModel,
    y: Tensor,
    *,
    steps: Optional[int] = None,
    lr: float = DEFAULT_MAP_LR,
    lr_decay: float = DEFAULT_MAP_LR_DECAY,
    lr_rampdown: float = 0.0,
    seed: int = 0,
    init_w: Optional[Tensor] = None,
    init: Optional[dict] = None,
    num_samples: int = 0,
    progress: bool = True,
    callback: Optional[Callable] = None,
    checkpoint_path: Optional[str] = None,
    checkpoint_every: int = 100,
) -> InferenceResult:
    """MAP estimate of every latent site (w and any learned scalars) for a batch of observations.

    Args:
        model: a :class:`BRGMModel`. y: (B, C, h, w) observations in [-1, 1].
        steps: Adam steps (default ``DEFAULT_MAP_STEPS``, 250). lr: learning rate (latent units per step; scalar latents
            move in their unconstrained coordinates, e.g. log sigma).
        lr_decay: the learning rate ends at ``lr * lr_decay`` at the last step.
        lr_rampdown: how it gets there: geometrically over the whole run (0), or, for r in (0, 1],
            constant for the first 1 - r of the steps, then along a half cosine (see :func:`optimise`).
        seed: Pyro/torch seed (MAP is deterministic given the seed).
        init_w: (B, L, d) starting latents (default: the prior's initial value for each image).
        init: starting values of any latent sites by name (overrides the components' own).
        num_samples: accepted for a common method signature; a MAP has no draws.
        progress: show a progress bar with the loss terms.
        callback: ``callback(step, terms) -> False`` to stop early.
        checkpoint_path: save the current latents there (safetensors) every ``checkpoint_every`` steps.
    Returns:
        :class:`InferenceResult` with ``latents`` (every site; ``.w`` (B, L, d)) and ``image`` =
        G(w) (B, C, H, W), plus E[e | w, y] when the model has a discrepancy term (the joint MAP of
        the clean image, :meth:`BRGMModel.point_image`; ``model.render(result.w)`` is G(w) alone).
    """
    steps = DEFAULT_MAP_STEPS if steps is None else int(steps)
    model.check_observation(y)
    pyro.set_rng_seed(seed)
    values = initial_values(model, y, init, init_w)
    with pyro.get_param_store().scope():
        guide = AutoDelta(model, init_loc_fn=init_loc_fn(values))
        guide(y)  # creates the parameters
        elbo = ELBOTerms(model, guide, num_particles=1, entropy=False)

        def current() -> dict[str, Tensor]:
            return guide.median(y)

        ckpt = None
        if checkpoint_path is not None:
            ckpt = lambda step: save_checkpoint(checkpoint_path, current(), {"step": step, "method": "map"})
        out = optimise(lambda: list(guide.parameters()), lambda: elbo(y), elbo.names, steps=steps, lr=lr,
                       lr_decay=lr_decay, lr_rampdown=lr_rampdown, desc="MAP", progress=progress, callback=callback,
                       checkpoint=ckpt, checkpoint_every=checkpoint_every)
        with torch.no_grad():
            latents = {k: v.detach().clone() for k, v in current().items()}
            image = model.point_image(latents, y)
    return InferenceResult(method="map", latents=latents, image=image, history=out["history"],
                           timing=out["timing"], stopped=out["stopped"], image_site=model.image_site,
                           extra={"lr": lr, "lr_decay": lr_decay, "lr_rampdown": lr_rampdown, "seed": seed})
