"""brgm diagnose: R-hat/ESS of image-level summaries flag bad mixing, and the command's outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.diagnostics import diagnose, scalar_summaries
from brgm_pyro.inference import METHODS, InferenceResult
from brgm_pyro.inference.arviz_io import to_inference_data, write_inference_data
from brgm_pyro.inference.vi import render_samples
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.generators import ConvGenerator


@pytest.fixture(scope="module")
def problem():
    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=4, channels=4, seed=3)
    model = build_model(G, SuperResolution(2, "box"), sigma_pixel=0.1)
    with torch.no_grad():
        y = model.predict(model.init_latents(1))
    return model, y


def _result(model, y, offsets, S=150, seed=0):
    """Chains of iid Gaussian draws around the prior mean, chain c shifted by offsets[c]."""
    C = len(offsets)
    g = torch.Generator().manual_seed(seed)
    base = model.init_latents(1)
    sw = torch.cat([base + off + 0.2 * torch.randn(S, 1, *base.shape[1:], generator=g) for off in offsets])
    samples = render_samples(model, sw)
    return InferenceResult(method="sgld", latents={"w": sw.mean(0)}, image=samples.mean(0), draws={"w": sw}, samples=samples,
                           extra={"num_chains": C, "num_draws": S,
                                  "sample_stats": {"accept_prob": np.ones((C, S)), "diverging": np.zeros((C, S))}})


def test_mixed_chains_pass_and_stuck_chains_fail(problem):
    model, y = problem
    good = diagnose(to_inference_data(_result(model, y, [0.0] * 4), model, y), all_coords=True)
    assert good["max_r_hat"] < 1.02
    assert good["min_ess_bulk"] > 300  # 600 iid draws
    names = {r["name"] for r in good["rows"]}
    assert {"lp", "log_lik", "mean_intensity", "pc1", "pc2", "pc3"} <= names
    assert good["w_max_r_hat"] < 1.05 and good["divergences"] == 0
    bad = diagnose(to_inference_data(_result(model, y, [0.0, 0.0, 0.0, 0.3]), model, y))
    assert bad["max_r_hat"] > 1.1
    flagged = {r["name"] for r in bad["rows"] if r["r_hat"] > 1.1}
    assert "lp" in flagged and "pc1" in flagged, flagged  # the stuck chain shows in lp and in w


def test_pc_projection_is_the_leading_direction(problem):
    """With variance concentrated on one latent coordinate, pc1 is (+-) that coordinate."""
    model, y = problem
    res = _result(model, y, [0.0, 0.0])
    sw = res.samples_w.clone()
    sw[:, 0, 1, 2] += 3.0 * torch.linspace(-1, 1, sw.shape[0])[torch.randperm(sw.shape[0])]
    res.draws = {"w": sw}
    ds = scalar_summaries(to_inference_data(res, model, y), num_components=2)
    pc1 = ds["pc1"].values.reshape(-1)
    coord = sw[:, 0, 1, 2].numpy()
    assert abs(np.corrcoef(pc1, coord)[0, 1]) > 0.98


def test_cli_diagnose_writes_plots_and_json(problem, tmp_path):
    model, y = problem
    path = write_inference_data(to_inference_data(_result(model, y, [0.0] * 2, S=60), model, y),
                                tmp_path / "posterior.nc")
    r = CliRunner().invoke(app, ["diagnose", str(path), "--components", "2"])
    assert r.exit_code == 0, r.output
    assert "r_hat" in r.output and "ess_bulk" in r.output and "pc2" in r.output
    for name in ("trace.png", "rank.png", "diagnostics.json"):
        assert (tmp_path / name).is_file()
    rep = json.loads((tmp_path / "diagnostics.json").read_text())
    assert rep["num_chains"] == 2 and rep["num_draws"] == 60


def test_cli_diagnose_bad_inputs(problem, tmp_path):
    model, y = problem
    r = CliRunner().invoke(app, ["diagnose", str(tmp_path / "nope.nc")])
    assert r.exit_code == 2 and "no such file" in r.output
    res = METHODS.get("map")(model, y, steps=3, progress=False)
    path = write_inference_data(to_inference_data(res, model, y), tmp_path / "map.nc")
    r = CliRunner().invoke(app, ["diagnose", str(path), "--no-plots"])
    assert r.exit_code == 2 and "nothing to diagnose" in r.output
    assert len([l for l in r.output.splitlines() if l.startswith("error")]) == 1


def test_plots_survive_a_frozen_chain(problem, tmp_path):
    """A chain that never moved (a sampler that rejected every move: its summaries equal up to the
    last bit of float64 rounding, values seen in a real 3-draw NUTS run) makes ArviZ's KDE fail
    ("too many bins for data range"); the plots fall back to plain traces and histograms instead
    of crashing `brgm diagnose`."""
    import xarray as xr

    from brgm_pyro.diagnostics import write_plots

    model, y = problem
    idata = to_inference_data(_result(model, y, [0.0, 0.0], S=3), model, y)
    rng = np.random.default_rng(0)
    stuck = [3.055833750640801, 3.055833750640804, 3.055833750640801]
    pc1 = np.stack([[-7.084122150090175, -7.084122150090178, 5.000743048257956], stuck])
    ds = xr.Dataset({"lp": (("chain", "draw"), rng.normal(size=(2, 3))),
                     "pc1": (("chain", "draw"), pc1)}, coords={"chain": [0, 1], "draw": [0, 1, 2]})
    paths = write_plots(idata, tmp_path / "plots", summaries=ds)
    assert [p.name for p in paths] == ["trace.png", "rank.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left


def test_warnings_say_what_failed_and_nothing_when_all_pass(problem):
    """R-hat, ESS, divergences and tree-depth saturation each give one warning line; mixed iid
    chains give none."""
    from brgm_pyro.diagnostics import format_report

    model, y = problem
    good = diagnose(to_inference_data(_result(model, y, [0.0] * 4, S=400), model, y))
    assert good["warnings"] == [], good["warnings"]  # 1,600 iid draws
    bad = diagnose(to_inference_data(_result(model, y, [0.0, 0.0, 0.0, 0.3]), model, y))
    assert any(w.startswith("R-hat") and "> 1.01" in w for w in bad["warnings"]), bad["warnings"]
    assert any(line.startswith("warning: R-hat") for line in format_report(bad))
    few = diagnose(to_inference_data(_result(model, y, [0.0] * 2, S=40), model, y))
    assert any(w.startswith("effective sample size") for w in few["warnings"]), few["warnings"]
    one = diagnose(to_inference_data(_result(model, y, [0.0]), model, y))
    assert any(w.startswith("one chain") for w in one["warnings"])


@pytest.mark.parametrize("depth, saturated", [(5, True), (3, False)])
def test_tree_depth_saturation_is_flagged_against_the_recorded_cap(problem, depth, saturated):
    model, y = problem
    res = _result(model, y, [0.0] * 4)
    C, S = 4, 150
    res.extra["sample_stats"].update(tree_depth=np.full((C, S), float(depth)), diverging=np.zeros((C, S)))
    res.extra["sample_stats"]["diverging"][0, :3] = 1
    res.extra["kernel"] = {"method": "nuts", "max_tree_depth": 5}
    rep = diagnose(to_inference_data(res, model, y))
    assert rep["max_tree_depth"] == 5 and rep["tree_depth_saturated"] == (1.0 if saturated else 0.0)
    assert any("maximum tree depth 5" in w for w in rep["warnings"]) == saturated
    assert any(w.startswith("3 divergent transitions") for w in rep["warnings"])


def test_reconstruct_reports_convergence_of_its_chains(tmp_path):
    """brgm reconstruct with several MCMC chains says at once whether they agree: run.json's
    diagnostics and one warning line per failed check (a tiny run fails the ESS check)."""
    from PIL import Image

    Image.new("RGB", (2, 2), (120, 60, 200)).save(tmp_path / "low.png")
    args = ["reconstruct", str(tmp_path / "low.png"), "--generator", "builtin:conv16", "-q", "--reliance-draws", "0",
            "--method", "sgld", "--chains", "2", "--steps", "3", "--num-samples", "6", "--out", str(tmp_path / "o")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    d = run["diagnostics"]
    assert d["max_r_hat"] > 0 and d["min_ess_bulk"] > 0
    conv = [w for w in run["warnings"] if w.startswith("convergence: ")]
    assert any("effective sample size" in w for w in conv), run["warnings"]
    assert any("effective sample size" in line for line in (res.output + res.stderr).splitlines())
