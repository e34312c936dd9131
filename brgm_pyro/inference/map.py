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

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference.engine import LogJointTerms, optimise, save_checkpoint
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
# Blind reconstruction: the corruption's own latents (a blur width) are held at their starting
# values for this fraction of the steps while w fits, then everything moves. From the start, the
# joint MAP of x4 SR with the discrepancy term fell into the no-blur corner on real faces (width
# 0.35-0.39 for a true 3 px on 5 of 8 test faces): an unfitted w leaves large residuals, which a
# narrow kernel explains by letting more of the discrepancy through. Measured on test faces 0-7
# (faces within 20 % of the true width, from the start -> held): docs/latent_sites.md, "The joint
# MAP of a blur width".
DEFAULT_HOLD_CORRUPTION = 0.5  # 2 px: 1/8 -> 6/8 faces within 20 %, 3 px: 2/8 -> 4/8


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
    hold_corruption: float = DEFAULT_HOLD_CORRUPTION,
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
        hold_corruption: for a model whose corruption has latents (a blur width), the fraction of
            ``steps`` during which they stay at their starting values while the other latents fit
            (then all move, with the learning-rate schedule restarted). 0: all move from the start.
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
        elbo = LogJointTerms(model, guide)  # -log p(latents, y): one model trace per step

        def current() -> dict[str, Tensor]:
            return guide.median(y)

        ckpt = None
        if checkpoint_path is not None:
            ckpt = lambda step: save_checkpoint(checkpoint_path, current(), {"step": step, "method": "map"})
        out = None
        for offset, n, params in _phases(guide, model, steps, hold_corruption):
            o = optimise(lambda: params, lambda: elbo(y), elbo.names, steps=n, lr=lr, lr_decay=lr_decay,
                         lr_rampdown=lr_rampdown, desc="MAP" if offset == 0 else "MAP (all latents)",
                         progress=progress, callback=_shifted(callback, offset),
                         checkpoint=_shifted(ckpt, offset), checkpoint_every=checkpoint_every,
                         after=lambda t: (t / 3, "rendering the image"))  # a forward: ~1/3 of a step
            out = o if out is None else _joined(out, o)
            if o["stopped"]:
                break
        with torch.no_grad():
            latents = {k: v.detach().clone() for k, v in current().items()}
            image = model.point_image(latents, y)
    return InferenceResult(method="map", latents=latents, image=image, history=out["history"],
                           timing=out["timing"], stopped=out["stopped"], image_site=model.image_site,
                           extra={"lr": lr, "lr_decay": lr_decay, "lr_rampdown": lr_rampdown, "seed": seed,
                                  "hold_corruption": hold_corruption})


def _phases(guide, model, steps: int, hold: float) -> list[tuple[int, int, list]]:
    """[(first step, steps, parameters to move)]: one phase, or two when the corruption has
    latents and ``hold`` > 0 (the first moves every parameter but those of the corruption's sites)."""
    if not 0.0 <= hold < 1.0:
        raise BRGMError(f"hold_corruption must be in [0, 1), got {hold}")
    everything = list(guide.parameters())
    held_sites = {lat.name for lat in model.corruption.latents()}
    n_hold = int(round(hold * steps)) if held_sites else 0
    if n_hold == 0:
        return [(0, steps, everything)]
    from brgm_pyro.inference.pyro_internals import param_site

    free = [p for name, p in guide.named_parameters() if param_site(name) not in held_sites]
    if len(free) == len(everything):  # a guide whose parameters are not named by site: say so, never ignore
        raise BRGMError(f"run_map cannot find the guide parameters of {sorted(held_sites)} to hold them; "
                        "use hold_corruption=0")
    return [(0, n_hold, free), (n_hold, steps - n_hold, everything)]


def _shifted(fn: Optional[Callable], offset: int) -> Optional[Callable]:
    """``fn`` with its first argument (a step number) counted from the run's start."""
    if fn is None or offset == 0:
        return fn
    return lambda step, *rest: fn(step + offset, *rest)


def _joined(a: dict, b: dict) -> dict:
    """Two consecutive :func:`optimise` results as one (history appended, times added)."""
    na, nb = a["timing"]["steps"], b["timing"]["steps"]
    per = (a["timing"]["per_step_s"] * na + b["timing"]["per_step_s"] * nb) / max(na + nb, 1)
    return {"history": {k: a["history"][k] + b["history"][k] for k in a["history"]},
            "timing": {"total_s": a["timing"]["total_s"] + b["timing"]["total_s"], "per_step_s": per,
                       "steps": na + nb},
            "stopped": b["stopped"]}
