"""The measured-coverage table stored with a generator, and the warnings ``brgm reconstruct`` prints from it.

A generator's table lives beside its weights as ``<weights>.calibration.json`` (for
``builtin:faces64``: ``brgm_pyro/assets/faces64/generator.safetensors.calibration.json``); rows are
written by ``benchmarks/calibration.py --table FILE``, each with the exact command that measured it.
A row says, for one combination of the run's settings (``match``: task, task options such as the
super-resolution factor, method, guide, pixel-noise model, perceptual term on/off, discrepancy term
on/off, prior) and one truth set (``faces``: held-out images, tests the model; ``model+e``: draws of
the model itself, tests the posterior approximation), the pooled 90 % interval coverage over
``all`` / ``observed`` / ``missing`` pixels, the number of draws per image and the exact-sampler
reference for that number (:func:`brgm_pyro.calibration.exact_sampler_coverage`).

A combination is *calibrated* when it has rows and every region of every row lies within
``TOLERANCE`` of its row's reference (0.85-0.95 around 0.90). Otherwise the run gets one warning line:
the worst measured figure beside its reference, or "never measured". ``--simulate`` runs also check
their own pooled coverage against the reference for their number of draws (:func:`simulate_warning`);
one run's coverage over a few images is noisy (pixels are correlated), so that line is a flag, not
a verdict.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

#: half-width of the calibrated band around the exact-sampler reference (0.85-0.95 around 0.90)
TOLERANCE = 0.05
LEVEL = 0.9
TABLE_SUFFIX = ".calibration.json"
REGIONS = ("all", "observed", "missing")


def table_path(generator) -> Optional[Path]:
    """``<weights>.calibration.json`` beside the generator's weights, or None (no weights file)."""
    from brgm_pyro.models.generators.loading import sidecar_path

    return sidecar_path(generator, TABLE_SUFFIX)


def load_table(path: Optional[Path]) -> dict:
    """The table at ``path`` (``{"rows": [...], ...}``); an empty table when there is none or it is unreadable."""
    if path is None or not Path(path).exists():
        return {"rows": []}
    try:
        tab = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {"rows": [], "error": f"{path} is not a calibration table"}
    tab.setdefault("rows", [])
    return tab


def run_combination(settings: dict) -> dict[str, Any]:
    """The table's ``match`` keys for a ``brgm reconstruct`` run, from run.json's ``settings``.

    Keys: task, method, guide (``--guide``, default ``normal``, for VI; None for other methods), noise,
    percept, discrepancy (bool: any term on), prior, and the task's ``factor`` and ``kernel`` when it has them.
    """
    choice = settings.get("model_choice") or {}
    disc = choice.get("discrepancy")
    guide = (settings.get("guide") or "normal") if settings.get("method") == "vi" else None
    combo = {"task": settings.get("task"), "method": settings.get("method"), "guide": guide,
             "noise": choice.get("noise", "gaussian"), "percept": bool(settings.get("percept")),
             "discrepancy": disc not in (None, "off"), "prior": choice.get("prior", "brgm")}
    for key in ("factor", "kernel"):  # super-resolution x8 with a box kernel is not x8 bicubic
        if settings.get(key) is not None:
            combo[key] = settings[key]
    return combo


def matching_rows(table: dict, combo: dict) -> list[dict]:
    """Rows whose every ``match`` key equals the run's (a key the run lacks does not match)."""
    return [r for r in table.get("rows", [])
            if all(k in combo and combo[k] == v for k, v in r.get("match", {}).items())]


def _worst(rows: list[dict]) -> Optional[tuple[float, float, dict, str]]:
    """(distance outside the band, measured, row, region) of the figure furthest from its reference, or
    None if every figure is inside."""
    worst = None
    for r in rows:
        ref = float(r["reference"])
        for reg in REGIONS:
            c = r.get("coverage", {}).get(reg)
            if c is None:
                continue
            off = abs(float(c) - ref) - TOLERANCE
            if off > 0 and (worst is None or off > worst[0]):
                worst = (off, float(c), r, reg)
    return worst


def describe(combo: dict) -> str:
    """A short name of a combination, e.g. ``superres x8, vi (normal guide), gaussian noise, perceptual on``."""
    task = combo.get("task", "?") + (f" x{combo['factor']}" if combo.get("factor") else "") \
        + (f" ({combo['kernel']} kernel)" if combo.get("kernel") else "")
    method = combo.get("method", "?") + (f" ({combo['guide']} guide)" if combo.get("guide") else "")
    return (f"{task}, {method}, {combo.get('noise')} noise, perceptual {'on' if combo.get('percept') else 'off'}, "
            f"discrepancy {'on' if combo.get('discrepancy') else 'off'}")


def calibration_warning(table: dict, combo: dict) -> Optional[str]:
    """One warning line when ``combo`` is not calibrated in ``table`` (or never measured); None when it is."""
    rows = matching_rows(table, combo)
    name = describe(combo)
    if not rows:
        return (f"the {100 * LEVEL:g}% intervals of this combination ({name}) have never been measured for "
                "calibration on this generator; treat them as unchecked (docs/calibration.md)")
    worst = _worst(rows)
    if worst is None:
        return None
    _, c, r, reg = worst
    where = "" if reg == "all" else f" on {reg} pixels"
    alt = calibrated_alternatives(table, combo)
    hint = f"; calibrated there: {', '.join(alt)}" if alt else ""
    return (f"this combination ({name}) is not calibrated: its {100 * LEVEL:g}% intervals covered {c:.2f}{where} "
            f"of {r.get('truth', '?')} truths ({r.get('images', '?')}), where an exact sampler with "
            f"{r.get('draws')} draws covers {float(r['reference']):.2f}{hint} (docs/calibration.md)")


def calibrated_alternatives(table: dict, combo: dict) -> list[str]:
    """The other methods (and guides) measured on the same combination otherwise (task and its options,
    noise, terms, prior) whose rows are all inside the band, as command-line options, e.g.
    ``--method vi --guide lowrank``."""
    same = {k: v for k, v in combo.items() if k not in ("method", "guide")}
    found: dict[tuple, list[dict]] = {}
    for r in table.get("rows", []):
        m = r.get("match", {})
        rest = {k: v for k, v in m.items() if k not in ("method", "guide")}
        if rest == same and (m.get("method"), m.get("guide")) != (combo.get("method"), combo.get("guide")):
            found.setdefault((m.get("method"), m.get("guide")), []).append(r)
    return [f"--method {meth}" + (f" --guide {g}" if g else "")
            for (meth, g), rows in found.items() if _worst(rows) is None]


def simulate_warning(report: Optional[dict]) -> Optional[str]:
    """For a ``--simulate`` run: one line when its pooled 90 % coverage (any region) is further than
    ``TOLERANCE`` from the exact-sampler reference for its number of draws; None otherwise.
    ``report``: metrics.json's ``coverage`` (:func:`brgm_pyro.pipeline.coverage.pooled_coverage`)."""
    from brgm_pyro.calibration import exact_sampler_coverage

    if not report or "all_images" not in report:
        return None
    S = int(report.get("num_draws", 0))
    ref = exact_sampler_coverage(LEVEL, S)
    key = f"{LEVEL:g}"
    outside = [(reg, report["all_images"][reg][key]["coverage"]) for reg in REGIONS
               if reg in report["all_images"]
               and abs(report["all_images"][reg][key]["coverage"] - ref) > TOLERANCE]
    if not outside:
        return None
    figs = ", ".join(f"{reg} {c:.2f}" for reg, c in outside)
    return (f"this run's {100 * LEVEL:g}% intervals are off the exact-sampler reference for {S} draws "
            f"(~{ref:.2f} +- {TOLERANCE:g}): {figs}")


def run_warnings(generator, settings: dict, coverage: Optional[dict] = None) -> list[str]:
    """The calibration lines of a run with posterior draws (none for MAP): the table's verdict on its
    combination, and with ``coverage`` (a ``--simulate`` run) its own figure against the reference."""
    if settings.get("method") == "map" or int(settings.get("num_samples") or 0) < 2:
        return []
    lines = []
    line = calibration_warning(load_table(table_path(generator)), run_combination(settings))
    if line:
        lines.append(line)
    line = simulate_warning(coverage)
    if line:
        lines.append(line)
    return lines


__all__ = ["TOLERANCE", "table_path", "load_table", "run_combination", "matching_rows", "describe",
           "calibration_warning", "calibrated_alternatives", "simulate_warning", "run_warnings"]
