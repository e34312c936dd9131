"""Every method states its time before the work when the run will take over a minute, inference and writing.

The one-minute rule is lowered to 0 s here (the engine's ``estimate_line`` threshold), so that a tiny
run shows every line a long one would; the lines must come before the results are written."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.inference import engine

torch.set_num_threads(1)

# what each method's lines say (besides the CLI's "then writing the outputs" for methods with draws)
EXPECTED = {
    "map": ["MAP: about", "rendering"],
    "vi": ["VI (normal): about", "rendering"],
    "sgld": ["gradients per draw at most", "Laplace metric: about", "then writing the outputs"],
    "mala": ["gradients per draw at most", "Laplace metric: about", "then writing the outputs"],
    "psgld": ["gradients per draw at most", "Laplace metric: about", "then writing the outputs"],
    "nuts": ["gradients per draw at most", "Laplace metric: about", "then writing the outputs"],
    "hmc": ["gradients per draw at most", "Laplace metric: about", "then writing the outputs"],
    "smc": ["SMC: ~", "per stage", "then writing the outputs"],
    "inla": ["INLA: MAP of w: about", "INLA: Jacobian of f(G): about", "then writing the outputs"],
}
OPTIONS = {"sgld": ["--chains", "1"], "psgld": ["--chains", "1"], "mala": ["--chains", "1"], "nuts": ["--chains", "1", "--max-tree-depth", "2"],
           "hmc": ["--chains", "1"], "smc": ["--chains", "1", "--particles", "4"], "inla": ["--factor", "2"]}


@pytest.fixture
def always_estimate(monkeypatch):
    real = engine.estimate_line
    monkeypatch.setattr(engine, "estimate_line", lambda *a, **kw: real(*a, **{**kw, "threshold_s": -1.0}))


def test_every_registered_method_is_checked():
    from brgm_pyro.pipeline.core import methods_registry

    assert set(EXPECTED) == set(methods_registry().names())


@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_every_method_states_its_time_first(method, tmp_path, always_estimate):
    from brgm_pyro.cli import app

    Image.new("RGB", (16, 16), (120, 60, 200)).save(tmp_path / "clean.png")
    args = ["reconstruct", str(tmp_path / "clean.png"), "--simulate", "--generator", "builtin:conv16", "--method",
            method, "--steps", "2", "--num-samples", "2", "--reliance-draws", "0", "--no-percept",
            "--out", str(tmp_path / "out"), *OPTIONS.get(method, [])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    err = res.output  # stdout and stderr as the user sees them, in order
    done = err.index("results written")
    for fragment in EXPECTED[method]:
        assert fragment in err[:done], (fragment, err)
