"""The example and the evaluation script run end to end (tiny budgets), so they cannot rot unnoticed.

The measured tables come from the same scripts with real budgets (examples/README.md,
docs/model_card_faces64.md); here only the plumbing and the output files are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(args, timeout=300):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def test_compare_inference_runs_with_every_method(tmp_path):
    out = tmp_path / "cmp"
    _run(["examples/compare_inference.py", "--generator", "builtin:faces64", "--out", str(out), "--tasks",
          "superres", "--chains", "2", "--warmup", "2", "--draws", "3", "--map-steps", "5", "--max-tree-depth", "2",
          "--workers", "2"])
    res = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in res[0]["rows"]]
    assert methods == ["MAP", "NUTS", "SGLD", "pSGLD", "VI"]
    assert all(r["grad_evals"] > 0 for r in res[0]["rows"])
    for name in ("results.md", "compare.png", "posterior_superres.nc", "diagnostics_superres/rank.png"):
        assert (out / name).is_file(), name


def test_eval_faces64_runs_every_task(tmp_path):
    out = tmp_path / "ev"
    _run(["benchmarks/eval_faces64.py", "--faces", "2", "--first-face", "64", "--steps", "2", "--batch", "2",
          "--threads", "1", "--rungs", "pixel,+percept", "--inversion-rungs", "pixel", "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"inversion", "sr8", "inpaint"}
    assert {"bicubic", "pixel", "+percept"} <= set(res["tasks"]["sr8"])
    assert res["tasks"]["inversion"]["pixel"]["n"] == 2
    assert (out / "examples.png").is_file() and (out / "results.md").is_file()


def test_smc_examples_run(tmp_path):
    _run(["examples/compare_models.py", "--generator", "builtin:conv16", "--particles", "8", "--runs", "2",
          "--moves", "1", "--threads", "1", "--out", str(tmp_path / "cm")])
    rows = json.loads((tmp_path / "cm" / "results.json").read_text())["rows"]
    assert len(rows) == 3 and abs(sum(r["prob"] for r in rows) - 1.0) < 1e-9
    _run(["examples/smc_faces64.py", "--particles", "4", "--moves", "1", "--runs", "2", "--max-stages", "3",
          "--out", str(tmp_path / "f64")])
    res = json.loads((tmp_path / "f64" / "results.json").read_text())
    assert len(res["log_evidence_runs"]) == 2 and (tmp_path / "f64" / "posterior.nc").is_file()
