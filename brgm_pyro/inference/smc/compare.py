r"""Model comparison by the evidence: log Z differences with standard errors, posterior model probabilities.

For models m = 1..M with log evidence estimates l_m (standard errors s_m, independent runs):

    Delta_m = l_m - l_best,      se(Delta_m) = sqrt(s_m^2 + s_best^2)
    P(m | y) = p(m) e^{l_m} / sum_k p(k) e^{l_k}      (uniform p(m) unless given)

The probabilities carry the estimates' Monte Carlo error; ``prob_range`` gives them at l_m -+ 2 s_m
against the others at their estimates, a quick sense of how firm the ranking is.

:func:`compare_models` runs :func:`~brgm_pyro.inference.smc.run_smc` on each of several models of
one observation and tabulates their evidence (``brgm compare`` is a thin adapter over it). The
standard error of each model's log Z is the spread of its independent runs, or, with one run, the
single-run (genealogy) estimate.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Mapping, Optional

from brgm_pyro.errors import BRGMError


def compare_evidence(evidence: dict[str, tuple[float, Optional[float]]],
                     prior: Optional[dict[str, float]] = None) -> list[dict]:
    """Rows sorted by evidence, best first: ``model``, ``log_evidence``, ``se``, ``delta``, ``delta_se``,
    ``prob``, ``prob_range`` ((low, high) or None without an SE).

    ``evidence``: model name -> (log evidence, its standard error or None); ``prior``: model -> p(m).
    """
    if len(evidence) < 2:
        raise BRGMError("model comparison needs at least two models")
    bad = [k for k, (l, _) in evidence.items() if not math.isfinite(l)]
    if bad:
        raise BRGMError(f"no finite log evidence for {', '.join(bad)} (did the SMC run stop early?)")
    logp = {k: math.log(prior[k]) if prior else 0.0 for k in evidence}
    post = {k: l + logp[k] for k, (l, _) in evidence.items()}

    def probs(vals: dict[str, float]) -> dict[str, float]:
        m = max(vals.values())
        z = sum(math.exp(v - m) for v in vals.values())
        return {k: math.exp(v - m) / z for k, v in vals.items()}

    p = probs(post)
    best = max(evidence, key=lambda k: evidence[k][0])
    l_best, s_best = evidence[best]
    rows = []
    for k, (l, s) in sorted(evidence.items(), key=lambda kv: -kv[1][0]):
        rng = None
        if s is not None:
            lo, hi = probs({**post, k: post[k] - 2 * s})[k], probs({**post, k: post[k] + 2 * s})[k]
            rng = (lo, hi)
        dse = None if s is None or s_best is None else (0.0 if k == best else math.hypot(s, s_best))
        rows.append({"model": k, "log_evidence": l, "se": s, "delta": l - l_best, "delta_se": dse,
                     "prob": p[k], "prob_range": rng})
    return rows


def evidence_se(extra: dict) -> Optional[float]:
    """A run's standard error of log Z: between its independent runs, else its single-run (genealogy) one."""
    se = extra.get("log_evidence_se")
    return extra.get("log_evidence_se_genealogy") if se is None else se


def compare_models(models: Mapping[str, object], y, *, prior: Optional[dict[str, float]] = None,
                   on_model: Optional[Callable[[str, dict], None]] = None, **smc_options) -> dict:
    """SMC's evidence for each model of one observation, and the comparison table.

    Args:
        models: name -> a :class:`~brgm_pyro.models.brgm.BRGMModel` (all of the same observation
            shape: e.g. other priors, noise models, corruptions).
        y: (B, *obs_shape) the observation every model explains.
        prior: name -> p(m) (uniform if None).
        on_model: called as ``on_model(name, record)`` after each model's runs (progress lines).
        smc_options: :func:`~brgm_pyro.inference.smc.run_smc`'s options (``num_particles``,
            ``num_chains``, ``steps``, ``seed``, ...), the same for every model.
    Returns:
        ``{"rows": compare_evidence's rows, "models": name -> record}``, a record holding
        ``log_evidence``, ``log_evidence_se`` (the one the table uses), ``log_evidence_se_between``,
        ``log_evidence_se_genealogy``, ``log_evidence_runs``, ``num_stages``, ``grad_evals``,
        ``seconds``, ``stopped``, ``warnings``.
    """
    from brgm_pyro.inference.smc.runner import run_smc

    if len(models) < 2:
        raise BRGMError("model comparison needs at least two models")
    if prior is not None and set(prior) != set(models):
        raise BRGMError(f"the prior over models must name exactly the models: {', '.join(models)}")
    shapes = {tuple(m.obs_shape) for m in models.values()}
    if len(shapes) > 1:
        raise BRGMError(f"the models observe different shapes {sorted(shapes)}; they must explain the same y")
    records = {}
    for name, model in models.items():
        t0 = time.perf_counter()
        res = run_smc(model, y, **smc_options)
        ex = res.extra
        records[name] = {"log_evidence": ex["log_evidence"], "log_evidence_se": evidence_se(ex),
                         "log_evidence_se_between": ex["log_evidence_se"],
                         "log_evidence_se_genealogy": ex["log_evidence_se_genealogy"],
                         "log_evidence_runs": ex["log_evidence_runs"], "num_stages": ex["num_stages"],
                         "grad_evals": ex["grad_evals"], "seconds": time.perf_counter() - t0,
                         "stopped": res.stopped, "warnings": ex["warnings"]}
        if on_model is not None:
            on_model(name, records[name])
    rows = compare_evidence({k: (r["log_evidence"], r["log_evidence_se"]) for k, r in records.items()}, prior)
    return {"rows": rows, "models": records}


def format_comparison(rows: list[dict]) -> str:
    """A plain-text table of :func:`compare_evidence`'s rows."""
    def f(v, fmt):
        return "-" if v is None else fmt.format(v)

    lines = [f"{'model':<28} {'log Z':>12} {'SE':>7} {'dlog Z':>10} {'SE(d)':>7} {'P(m|y)':>8}  2-SE range"]
    for r in rows:
        rng = "-" if r["prob_range"] is None else f"{r['prob_range'][0]:.3g}-{r['prob_range'][1]:.3g}"
        lines.append(f"{r['model']:<28} {r['log_evidence']:>12.3f} {f(r['se'], '{:.3f}'):>7} {r['delta']:>10.3f} "
                     f"{f(r['delta_se'], '{:.3f}'):>7} {r['prob']:>8.3g}  {rng}")
    return "\n".join(lines)


__all__ = ["compare_evidence", "compare_models", "evidence_se", "format_comparison"]
