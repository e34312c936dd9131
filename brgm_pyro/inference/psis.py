r"""Importance reweighting of a guide's draws with the true log joint: PSIS and its k-hat.

For draws :math:`w_s \sim q` of a variational guide, the importance ratio of draw s is

.. math::

    \log r_s = \log p(w_s, y) - \log q(w_s)

(the model's log joint, the discrepancy term integrated out, minus the guide's log density).
Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao & Gabry 2024) fits a
generalised Pareto distribution to the largest ratios, replaces them by its quantiles and gives
self-normalised weights; the fitted shape k-hat is the diagnostic (Yao, Vehtari, Simpson & Gelman
2018, "Yes, but did it work?"):

* k-hat < 0.5: q is close to the posterior; weighted or not, its moments are trustworthy;
* 0.5 - 0.7: the reweighted moments are usable, with slower convergence;
* > 0.7 (:data:`KHAT_WARN`): the ratios have (nearly) infinite variance: q misses posterior mass
  (typically it is too narrow), and even the reweighted moments are unreliable.

The images of a batch are independent in the model, and in every guide that factors over the
images plate (``normal``, ``lowrank``): the ratio then factors too, and each image gets its own
weights and k-hat. A guide that couples the images (``diagonal``, ``mvn``, ``lowrank_joint``:
one vector over the whole batch) or a model with a latent shared by the images gets one ratio per
draw for the whole batch (``joint``: the same weights and k-hat for every image).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from brgm_pyro import azcompat
from brgm_pyro.inference.engine import _particles
from brgm_pyro.models.density import natural_layout, plate_layout

#: k-hat above which the reweighted moments are unreliable (Vehtari et al. 2024)
KHAT_WARN = 0.7
#: fewest draws for which ArviZ fits k-hat on every supported version (0.23 takes the tail ceil(min(0.2 S,
#: 3 sqrt(S))) and needs 5 draws in it, so 21; arviz_stats (1.x) refuses below 25 and returns NaN below 30)
MIN_DRAWS = 30
#: ways the reported mean and intervals may use the weights (``brgm reconstruct --reweight``)
REWEIGHT_CHOICES = ("none", "psis")


def check_reweight(reweight: str) -> None:
    """A one-line error unless ``reweight`` is one of :data:`REWEIGHT_CHOICES`."""
    if reweight not in REWEIGHT_CHOICES:
        from brgm_pyro.errors import BRGMError

        raise BRGMError(f"reweight must be one of {', '.join(REWEIGHT_CHOICES)}; got {reweight!r}")


def _per_image(lp: Tensor, n: int, B: int) -> Optional[Tensor]:
    """A site's log density (n, ...) summed to (n, B); None when it does not carry the images dim."""
    if lp.ndim == 0:
        return None
    lp = lp.expand(n, *lp.shape[1:]) if lp.shape[0] == 1 else lp
    if lp.ndim < 2 or lp.shape[1] != B:
        return None
    return lp.reshape(n, B, -1).sum(-1)


def _sum_trace(trace, names, n: int, B: int) -> tuple[Tensor, bool]:
    """Sum of the log densities of ``names`` in ``trace``: ((n, B), whether it had to be joint)."""
    per, joint = [], False
    total = torch.zeros(n, dtype=torch.float64, device="cpu")
    for name in names:
        site = trace.nodes[name]
        lp = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
        lp = torch.as_tensor(lp, device="cpu").detach().double()
        if B > 1:
            p = _per_image(lp, n, B)
            if p is not None:
                per.append(p)
                continue
            joint = True
        total = total + (lp.reshape(n, -1).sum(-1) if lp.ndim else lp.expand(n))
    if B == 1:
        return total[:, None], False
    out = sum(per) if per else torch.zeros(n, B, dtype=torch.float64, device="cpu")
    if joint:  # a site without the images dim couples them: the batch total for every image
        return (out.sum(1) + total)[:, None].expand(n, B).clone(), True
    return out, False


def guide_draws(model, guide, y: Tensor, num: int, chunk: int = 32) -> tuple[dict[str, Tensor], Tensor, bool]:
    """``num`` draws of every latent site from ``guide`` with their log q.

    Returns (draws: site -> (num, *value shape), natural layout; log q (num, B) float64 on the CPU,
    the log density of each image's draw (the same batch total for every image when ``joint``);
    ``joint``). Draws are taken ``chunk`` at a time in a vectorised plate left of the images plate.
    """
    B = int(y.shape[0])
    out: dict[str, list] = {}
    logs, joint = [], False
    done = 0
    while done < num:
        n = min(chunk, num - done)
        with torch.no_grad():
            tr = poutine.trace(_particles(guide, n, always=True)).get_trace(y)
        names = [k for k, s in tr.nodes.items()
                 if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)]
        lq, j = _sum_trace(tr, names, n, B)
        joint |= j
        logs.append(lq)
        vals = {k: tr.nodes[k]["value"].detach() for k in model.latent_sites()}
        for k, v in natural_layout(model, vals, 1).items():
            out.setdefault(k, []).append(v)
        done += n
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(logs), joint


def log_joint_per_image(model, y: Tensor, draws: dict[str, Tensor], chunk: int = 32) -> tuple[Tensor, bool]:
    """log p(w_s, y) of every draw and image: ((S, B) float64 on the CPU, ``joint``), the draws going
    through G ``chunk`` at a time. ``draws``: site -> (S, *value shape), natural layout. With a latent
    shared by the images the batch total is given to every image (``joint`` True)."""
    B = int(y.shape[0])
    S = int(draws[model.image_site].shape[0])
    parts, joint = [], False
    for s in range(0, S, chunk):
        part = plate_layout(model, {k: v[s:s + chunk] for k, v in draws.items()}, 1)
        n = int(part[model.image_site].shape[0])
        with torch.no_grad(), poutine.block(hide_types=["param"]):
            tr = poutine.trace(_particles(poutine.condition(model, data=part), n, always=True)).get_trace(y)
        names = [k for k in model.site_terms() if k in tr.nodes and tr.nodes[k]["type"] == "sample"]
        lp, j = _sum_trace(tr, names, n, B)
        joint |= j
        parts.append(lp)
    return torch.cat(parts), joint


@dataclass
class PSISResult:
    """PSIS of S draws for B images.

    log_weights: (S, B) smoothed, normalised log weights (each image's weights sum to 1).
    khat: (B,) Pareto k-hat per image (the same value for every image when ``joint``).
    ess: (B,) effective sample size of the weights, 1 / sum w^2 (S for equal weights).
    joint: one ratio per draw for the whole batch (a guide or latent that couples the images).
    """

    log_weights: Tensor
    khat: Tensor
    ess: Tensor
    joint: bool = False

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    def summary(self) -> dict:
        """For metrics.json / run.json: k-hat and ESS per image, the worst k-hat, the threshold (k-hat
        None with a ``note`` when there were too few draws for its tail fit)."""
        S = int(self.log_weights.shape[0])
        note = {} if S >= MIN_DRAWS else {"note": f"k-hat needs {MIN_DRAWS}+ draws for its tail fit (ArviZ)"}
        return {**note, "khat": [_num(k) for k in self.khat], "khat_max": _num(self.khat.max()),
                "ess": [_num(e) for e in self.ess], "draws": int(self.log_weights.shape[0]),
                "joint": bool(self.joint), "threshold": KHAT_WARN}

    def warning(self) -> Optional[str]:
        """The warning (without its ``warning:`` prefix) when any image's k-hat exceeds :data:`KHAT_WARN`,
        else None (also when k-hat could not be fitted: fewer than :data:`MIN_DRAWS` draws; see ``summary``)."""
        k = [v for v in self.khat.tolist() if math.isfinite(v)]
        bad = [v for v in k if v > KHAT_WARN]
        if not bad:
            return None
        return (f"PSIS k-hat {max(k):.2f} > {KHAT_WARN} for {len(bad)} of {len(self.khat)} image(s): the guide is "
                f"far from the posterior over w (too narrow in some directions), so importance weights cannot "
                f"correct it (--reweight psis is unreliable here) and its intervals hold only where the calibration "
                f"table says they do (docs/calibration.md)")


def _num(x) -> Optional[float]:
    """A float for JSON (None for inf / NaN: k-hat from too few draws)."""
    v = float(x)
    return round(v, 4) if math.isfinite(v) else None


def psis(log_ratios: Tensor) -> PSISResult:
    """PSIS of log ratios (S, B) (one column per image): :class:`PSISResult`."""
    lr = log_ratios.detach().double().cpu().numpy()
    if lr.shape[0] < MIN_DRAWS:  # too few draws for the Pareto tail fit (ArviZ 1.x refuses, 0.23 gives inf):
        from scipy.special import logsumexp  # plain self-normalised weights, k-hat unknown on every version

        lw = (lr - logsumexp(lr, axis=0, keepdims=True)).T
        k = np.full(lr.shape[1], np.inf)
    else:
        lw, k = azcompat.psislw(lr.T)  # ArviZ smooths along the last axis
    lw_t = torch.from_numpy(np.ascontiguousarray(lw.T))
    ess = 1.0 / lw_t.exp().pow(2).sum(0)
    return PSISResult(log_weights=lw_t, khat=torch.from_numpy(np.atleast_1d(k)).double(), ess=ess)


def reweight(model, guide, y: Tensor, num: int, chunk: int = 32) -> tuple[dict[str, Tensor], PSISResult]:
    """``num`` guide draws and their PSIS weights against the model's log joint."""
    draws, log_q, jq = guide_draws(model, guide, y, num, chunk)
    log_p, jp = log_joint_per_image(model, y, draws, chunk)
    res = psis(log_p - log_q)
    res.joint = jq or jp
    return draws, res


def weighted_quantile(draws: Tensor, weights: Tensor, q: Tensor) -> Tensor:
    """Per-element weighted quantiles of ``draws`` (S, *shape) with normalised ``weights`` (S, *shape)
    (broadcastable): (len(q), *shape).

    Each sorted draw sits at the middle of its weight's step of the cumulative sum, C_s - w_s / 2,
    rescaled so that the smallest draw is at 0 and the largest at 1, and the quantiles are linearly
    interpolated between them: for equal weights the positions are s / (S - 1), torch.quantile's
    (and NumPy's default) definition, so the exact-sampler reference of
    :func:`~brgm_pyro.calibration.exact_sampler_coverage` still applies.
    """
    d = draws.double()
    w = weights.double().expand_as(d)
    v, idx = torch.sort(d, dim=0)
    ws = torch.gather(w, 0, idx)
    mid = torch.cumsum(ws, 0) - ws / 2 - ws[:1] / 2
    pos = mid / (1.0 - ws[:1] / 2 - ws[-1:] / 2).clamp_min(1e-300)
    qs = q.double().to(d.device).reshape(-1, *([1] * (d.ndim - 1))).expand(len(q), *d.shape[1:]).contiguous()
    posT = pos.movedim(0, -1).contiguous()
    hi = torch.searchsorted(posT, qs.movedim(0, -1).contiguous()).clamp(1, d.shape[0] - 1).movedim(-1, 0)
    lo = hi - 1
    p_lo, p_hi = torch.gather(pos, 0, lo), torch.gather(pos, 0, hi)
    v_lo, v_hi = torch.gather(v, 0, lo), torch.gather(v, 0, hi)
    t = ((qs - p_lo) / (p_hi - p_lo).clamp_min(1e-300)).clamp(0.0, 1.0)
    return v_lo + t * (v_hi - v_lo)


__all__ = ["KHAT_WARN", "REWEIGHT_CHOICES", "check_reweight", "PSISResult", "psis", "reweight", "guide_draws", "log_joint_per_image",
           "weighted_quantile"]
