"""The up-front MCMC time estimate and the time-left lines: numbers, the printed message, the CLI's NUTS defaults."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.inference.mcmc import run_mcmc
from brgm_pyro.inference.mcmc.estimate import (SAMPLER_OVERHEAD, budget_line, gradients_per_draw, mcmc_budget, time_gradient,
                                               time_left_line)
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import LinearGenerator

torch.set_num_threads(1)


def _model():
    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4, scale=2.0, seed=0)
    model = build_model(G, SuperResolution(2), prior="gaussian", sigma_pixel=0.3)
    return model, 0.1 * torch.ones(1, 1, 2, 2)


def test_gradients_per_draw():
    assert gradients_per_draw("nuts", max_tree_depth=5) == 31
    assert gradients_per_draw("nuts", max_tree_depth=8) == 255  # 1 + 2 + ... + 2^7 leapfrog steps
    assert gradients_per_draw("nuts", max_tree_depth=5, thin=2) == 62
    assert gradients_per_draw("hmc") == 10 and gradients_per_draw("hmc", num_steps=4) == 4
    assert gradients_per_draw("mala", thin=5) == 5
    with pytest.raises(ValueError):
        gradients_per_draw("nuts", max_tree_depth=0)


def test_budget_numbers():
    b = mcmc_budget(0.02, 31, num_chains=4, warmup=50, num_samples=16)
    assert b["max_gradients"] == 4 * 31 * 66 and b["rounds"] == 4
    assert b["max_seconds"] == pytest.approx(0.02 * 31 * 66 * 4)
    assert mcmc_budget(0.02, 31, 4, 50, 16, workers=2)["max_seconds"] == pytest.approx(0.02 * 31 * 66 * 2)
    assert mcmc_budget(0.02, 31, 4, 50, 16, workers=3)["rounds"] == 2  # 3 chains, then 1
    assert mcmc_budget(0.02, 31, 2, 50, 16, workers=8)["rounds"] == 1
    with pytest.raises(ValueError):
        mcmc_budget(0.02, 31, 0, 50, 16)


def test_budget_line_and_time_left():
    b = mcmc_budget(0.018, 31, 4, 50, 16)
    line = budget_line("nuts", b, 4, 50, 16, max_tree_depth=5)
    assert line.startswith("NUTS: ~31 gradients per draw at most (tree depth 5), ~0.018 s per gradient -> at most "
                           "~2.5 min for 4 chains x (50 warm-up + 16 draws); for a publication-grade run use")
    b = mcmc_budget(0.027, 31, 4, 30, 20, overhead=1.2)
    assert b["max_seconds"] == pytest.approx(0.027 * 31 * 50 * 4 * 1.2)
    assert "~0.027 s per gradient (+20 % sampler overhead) -> at most ~3.3 min" in budget_line("nuts", b, 4, 30, 20,
                                                                                                max_tree_depth=5)
    assert "2 at a time" in budget_line("nuts", mcmc_budget(0.018, 31, 4, 50, 16, 2), 4, 50, 16, 2, 5)
    assert time_left_line([30.0], 4) == "chain 1/4 done in 30 s; ~1.5 min left"
    assert time_left_line([30.0, 50.0], 4) == "chain 2/4 done in 50 s; ~1.3 min left"
    assert time_left_line([30.0] * 4, 4) == "chain 4/4 done in 30 s"
    assert time_left_line([30.0], 4, workers=2) == "chain 1/4 done in 30 s; at most ~1.0 min left"


def test_time_gradient_is_positive_and_leaves_the_rng_alone():
    model, y = _model()
    z = {"w": torch.zeros(1, 2, 3)}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    t = time_gradient(model, y, z)
    assert 0 < t < 1 and math.isfinite(t)
    assert torch.equal(torch.rand(3), expected)


def test_run_mcmc_prints_the_estimate_and_records_it(capsys):
    model, y = _model()
    res = run_mcmc(model, y, method="nuts", steps=3, num_samples=2, num_chains=2, init="prior", progress=True,
                   max_tree_depth=3)
    err = capsys.readouterr().err
    assert "NUTS: ~7 gradients per draw at most (tree depth 3)" in err and "2 chains x (3 warm-up + 2 draws)" in err
    assert "chain 1/2 done in" in err and "left" in err
    assert res.timing["seconds_per_gradient_at_start"] > 0
    assert res.timing["estimated_max_sampling_s"] == pytest.approx(res.timing["seconds_per_gradient_at_start"]
                                                                  * 7 * 5 * 2 * SAMPLER_OVERHEAD["nuts"])
    quiet = run_mcmc(model, y, method="nuts", steps=3, num_samples=2, num_chains=2, init="prior", progress=False,
                     max_tree_depth=3)
    assert capsys.readouterr().err == ""
    assert torch.equal(quiet.samples_w, res.samples_w)  # the timing changes no draw


def _recording_nuts_cli(monkeypatch, tmp_path, **brief):
    """(seen, runner, base args): ``brgm reconstruct`` whose NUTS records the keyword arguments the
    command passes, then samples briefly (``brief`` overrides them for the short run)."""
    import brgm_pyro.cli.reconstruct as rec
    from brgm_pyro.inference import METHODS
    from brgm_pyro.registry import Registry

    seen = {}

    def nuts(model, y, **kw):
        seen.update(kw)
        return METHODS.get("nuts")(model, y, **{**kw, "steps": 1, "num_chains": 1, "num_samples": 2,
                                                "init": "prior", **brief})

    reg = Registry("inference method")
    reg.register("nuts")(nuts)
    reg.register("vi")(METHODS.get("vi"))
    monkeypatch.setattr(rec, "methods_registry", lambda: reg)
    Image.new("RGB", (2, 2), (120, 60, 200)).save(tmp_path / "low.png")
    base = ["reconstruct", str(tmp_path / "low.png"), "--generator", "builtin:conv16", "-q", "--reliance-draws", "0"]
    return seen, CliRunner(), base


def test_cli_nuts_defaults_and_bad_depth(tmp_path, monkeypatch):
    import brgm_pyro.cli.reconstruct as rec
    from brgm_pyro.cli import app

    seen, runner, base = _recording_nuts_cli(monkeypatch, tmp_path)
    res = runner.invoke(app, [*base, "--method", "nuts", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    assert seen["steps"] == rec.CLI_NUTS_WARMUP == 50 and seen["max_tree_depth"] == rec.CLI_NUTS_MAX_TREE_DEPTH == 5
    seen.clear()
    res = runner.invoke(app, [*base, "--method", "nuts", "--steps", "7", "--max-tree-depth", "6", "--out",
                              str(tmp_path / "b")])
    assert res.exit_code == 0 and seen["steps"] == 7 and seen["max_tree_depth"] == 6
    for args, fragment in ((["--method", "vi", "--max-tree-depth", "5"], "--max-tree-depth is a NUTS option"),
                           (["--method", "nuts", "--max-tree-depth", "0"], "--max-tree-depth must be between 1")):
        res = runner.invoke(app, [*base, *args, "--out", str(tmp_path / "c")])
        err = res.stderr.strip()
        assert res.exit_code == 2 and err.startswith("error: ") and "\n" not in err and fragment in err, err


def test_cli_mass_option_reaches_the_sampler_and_is_checked(monkeypatch, tmp_path):
    """--mass laplace_warmup is passed to NUTS as mass=; other methods and unknown metrics are refused."""
    from brgm_pyro.cli import app

    seen, runner, base = _recording_nuts_cli(monkeypatch, tmp_path, mass="diag")  # the brief run: no MAP
    res = runner.invoke(app, [*base, "--method", "nuts", "--mass", "laplace_warmup", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    assert seen["mass"] == "laplace_warmup"
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["settings"]["mass"] == "laplace_warmup"
    for args, fragment in ((["--method", "vi", "--mass", "laplace"], "--mass is an HMC/NUTS option"),
                           (["--method", "nuts", "--mass", "identity"], "--mass must be one of")):
        res = runner.invoke(app, [*base, *args, "--out", str(tmp_path / "c")])
        err = res.stderr.strip()
        assert res.exit_code == 2 and err.startswith("error: ") and "\n" not in err and fragment in err, err
