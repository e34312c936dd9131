"""Model comparison by the evidence: ``compare_models`` against closed forms, ``brgm compare`` end to end."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.inference.smc import compare as compare_mod
from brgm_pyro.inference.smc.compare import compare_models
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Identity
from tests.test_smc import _log_marginal, _problem


def test_compare_models_probabilities_match_the_closed_form():
    """Linear generator, Gaussian prior, two pixel-noise levels (0.25, 0.4): both evidences are Gaussian
    marginals in closed form, so the posterior model probabilities are exact (0.30, 0.70)."""
    base, y = _problem()
    G = base.generator
    sig = {"s025": 0.25, "s040": 0.4}
    models = {k: build_model(G, Identity(), prior="gaussian", sigma_pixel=s) for k, s in sig.items()}
    exact = {k: _log_marginal(m, y, sig[k]) for k, m in models.items()}
    m = max(exact.values())
    z = {k: math.exp(v - m) for k, v in exact.items()}
    p_exact = {k: v / sum(z.values()) for k, v in z.items()}
    assert 0.2 < p_exact["s025"] < 0.4  # a comparison that is not already decided
    seen = []
    out = compare_models(models, y, num_particles=400, num_chains=4, num_samples=4, steps=5, seed=2, progress=False,
                         on_model=lambda name, rec: seen.append(name))
    assert seen == list(models)
    rows = {r["model"]: r for r in out["rows"]}
    assert out["rows"][0]["model"] == "s040"
    for k in models:
        assert abs(rows[k]["prob"] - p_exact[k]) < 0.05, (rows, p_exact)
        assert abs(rows[k]["log_evidence"] - exact[k]) < 3 * rows[k]["se"] + 0.02
    d_exact = exact["s025"] - exact["s040"]
    assert abs(rows["s025"]["delta"] - d_exact) < 3 * rows["s025"]["delta_se"] + 0.02
    assert sum(r["prob"] for r in out["rows"]) == pytest.approx(1.0)
    rec = out["models"]["s025"]
    assert rec["log_evidence_se"] == rec["log_evidence_se_between"] and rec["log_evidence_se_genealogy"] > 0
    one = compare_models(models, y, num_particles=100, num_chains=1, num_samples=4, steps=2, seed=0, progress=False)
    assert all(r["se"] is not None and r["se"] > 0 for r in one["rows"])  # one run: the genealogy SE


def _image(tmp_path):
    img = (np.random.default_rng(0).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    return str(tmp_path / "x.png")


SMALL = ["--generator", "builtin:conv16", "--particles", "8", "--chains", "2", "--steps", "1", "-q", "--threads", "1"]


def test_cli_compare_end_to_end(tmp_path):
    """Blur present or absent x two noise models: 4 models, a table, compare.json written atomically."""
    x = _image(tmp_path)
    out = tmp_path / "compare.json"
    res = CliRunner().invoke(app, ["compare", x, "--simulate", "--task", "deblur:sigma=1", "--task", "none",
                                   "--prior", "gaussian", "--noise", "gaussian,laplace", *SMALL, "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.exception)
    assert "P(m|y)" in res.output and f"wrote {out}" in res.output
    rec = json.loads(out.read_text())
    names = {"gaussian/gaussian/deblur:sigma=1", "gaussian/laplace/deblur:sigma=1", "gaussian/gaussian/none",
             "gaussian/laplace/none"}
    assert set(rec["models"]) == names and {r["model"] for r in rec["rows"]} == names
    assert sum(r["prob"] for r in rec["rows"]) == pytest.approx(1.0)
    assert rec["models"]["gaussian/laplace/none"]["task"] == "none"
    assert rec["models"]["gaussian/gaussian/deblur:sigma=1"]["task_options"]["sigma"] == 1.0
    assert all(len(m["log_evidence_runs"]) == 2 and m["log_evidence_se"] is not None for m in rec["models"].values())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left
    again = CliRunner().invoke(app, ["compare", x, "--simulate", "--noise", "gaussian,laplace", *SMALL,
                                     "--task", "none", "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.stderr


@pytest.mark.parametrize("args,match", [
    (["--noise", "gaussian,cauchy"], "--noise"),
    (["--prior", "gaussian,nope"], "--prior"),
    (["--noise", "gaussian,gaussian"], "twice"),
    (["--noise", "gaussian"], "at least two models"),
    (["--noise", "gaussian,laplace", "--task", "superres:factor=4", "--task", "none"], "same data"),
    (["--noise", "gaussian,laplace", "--task", "superres:zoom=4"], "zoom"),
    (["--noise", "gaussian,laplace", "--particles", "1"], "--particles"),
    (["--noise", "gaussian,laplace", "--mask", "m.png"], "--mask"),
])
def test_cli_compare_bad_input_is_one_line_before_any_smc(tmp_path, monkeypatch, args, match):
    def boom(*a, **k):
        raise AssertionError("SMC ran on bad input")

    monkeypatch.setattr(compare_mod, "compare_models", boom)
    x = _image(tmp_path)
    argv = ["compare", x, "--simulate", "--prior", "gaussian", *SMALL, "--out", str(tmp_path / "c.json"), *args]
    if "--task" not in args:
        argv += ["--task", "none"]
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2, (res.output, res.exception)
    assert match in res.stderr and len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    assert not (tmp_path / "c.json").exists()
