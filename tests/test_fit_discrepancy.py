"""``brgm fit-discrepancy`` on a small generator file: the scale lands beside the weights, where
``--discrepancy auto`` finds it; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import SuperResolution
from brgm_pyro.models.discrepancy import discrepancy_path
from brgm_pyro.models.generators import ConvGenerator
from brgm_pyro.models.generators.loading import load_generator, save_generator

runner = CliRunner()


def _gen(tmp_path):
    G = ConvGenerator(img_resolution=8, img_channels=3, w_dim=8, z_dim=8, channels=8, seed=1)
    return save_generator(G, tmp_path / "g.safetensors")


def _images(folder, n=3, size=8):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_fit_discrepancy_writes_beside_weights_and_auto_reads_it(tmp_path):
    gen = _gen(tmp_path)
    imgs = _images(tmp_path / "clean")
    res = runner.invoke(app, ["fit-discrepancy", "--generator", str(gen), "--images", str(imgs), "--steps", "5",
                              "--coloured"])
    assert res.exit_code == 0, res.output
    G = load_generator(str(gen))
    p = discrepancy_path(G)
    rec = json.loads(p.read_text())
    assert rec["images"] == 3 and rec["tau"] > rec["residual_rms"] > 0  # the dof correction widens it
    model = build_model(G, SuperResolution(2, "box"), discrepancy="auto")
    assert abs(model.discrepancy.tau - rec["tau"]) < 1e-12
    assert model.discrepancy.smoother.config() == rec["spectrum"] and len(rec["lag_correlations"]) == 3
    res = runner.invoke(app, ["fit-discrepancy", "--generator", str(gen), "--images", str(imgs), "--steps", "5"])
    assert res.exit_code == 0 and "spectrum" not in json.loads(p.read_text())  # white unless --coloured
    # random-noise "faces" are far from anything G draws: tau is of the order of their spread
    assert 0.2 < rec["tau"] < 1.5


def test_fit_discrepancy_bad_input_one_line(tmp_path):
    gen = _gen(tmp_path)
    imgs = _images(tmp_path / "big", size=16)
    res = runner.invoke(app, ["fit-discrepancy", "--generator", str(gen), "--images", str(imgs), "--steps", "2"])
    assert res.exit_code == 2 and "16x16" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not discrepancy_path(load_generator(str(gen))).exists()
    res = runner.invoke(app, ["fit-discrepancy", "--generator", str(gen), "--images", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "not a folder" in res.stderr
    res = runner.invoke(app, ["fit-discrepancy", "--generator", str(gen)])  # no faces for an 8x8 generator
    assert res.exit_code == 2 and "--images" in res.stderr


def test_reconstruct_discrepancy_option(tmp_path):
    """--discrepancy TAU reaches the model (run.json) and widens the VI intervals; bad values are one line."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "clean.png")
    base = ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "clean.png"), "--simulate",
            "--task", "superres", "--factor", "2", "--method", "vi", "--steps", "3", "--num-samples", "8",
            "--reliance-draws", "0"]
    widths = {}
    for tau in ("off", "0.3"):
        out = tmp_path / f"res_{tau}"
        res = runner.invoke(app, base + ["--discrepancy", tau, "--out", str(out)])
        assert res.exit_code == 0, res.output
        run = json.loads((out / "run.json").read_text())
        text = json.dumps(run)
        assert ('"tau": 0.3' in text) == (tau == "0.3")
        widths[tau] = json.loads((out / "metrics.json").read_text())["coverage"]["all_images"]["all"]["0.9"]["width"]
    assert widths["0.3"] > widths["off"]
    for bad, msg in (("-1", "positive"), ("wide", "off, auto or a positive number"), ("auto", "no discrepancy scale")):
        out = tmp_path / f"bad{bad}"
        res = runner.invoke(app, base + ["--discrepancy", bad, "--out", str(out)])
        assert res.exit_code == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not out.exists()


def test_reconstruct_prior_options(tmp_path):
    """--prior-option KEY=VALUE reaches the prior factory (run.json's model config); unknown keys and bad
    forms are one line, exit 2, nothing written."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "low.png")
    base = ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "low.png"), "--task", "superres",
            "--factor", "2", "--steps", "2", "--prior", "studentt"]
    out = tmp_path / "ok"
    res = runner.invoke(app, base + ["--prior-option", "df=5", "--prior-option", "colinearity=false", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["model_choice"]["prior_options"] == ["df=5", "colinearity=false"]
    assert run["model"]["prior"]["df"] == 5.0 and run["model"]["prior"]["class"] == "StudentTPrior"
    for bad, msg in (("nu=5", "takes df, colinearity"), ("df", "KEY=VALUE")):
        o = tmp_path / f"bad_{bad}"
        res = runner.invoke(app, base + ["--prior-option", bad, "--out", str(o)])
        assert res.exit_code == 2 and msg in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not o.exists()


def test_reconstruct_discrepancy_default(tmp_path):
    """Default: auto for every method (MAP included: its image is the joint MAP of G(w) + e) when the
    generator has a stored scale; off for non-Gaussian noise and for generators without one (recorded
    in run.json)."""
    gen = _gen(tmp_path)
    G = load_generator(str(gen))
    discrepancy_path(G).write_text(json.dumps({"tau": 0.11}))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(tmp_path / "low.png")
    cases = [(str(gen), "vi", "gaussian", 0.11), (str(gen), "map", "gaussian", 0.11),
             (str(gen), "vi", "laplace", None), ("builtin:conv16", "vi", "gaussian", None)]
    for i, (spec, method, noise, tau) in enumerate(cases):
        out = tmp_path / f"r{i}"
        res = runner.invoke(app, ["reconstruct", "--generator", spec, "-q", str(tmp_path / "low.png"), "--task",
                                  "superres", "--factor", "2" if spec == str(gen) else "4", "--method", method,
                                  "--steps", "2", "--num-samples", "4", "--noise", noise, "--reliance-draws", "0",
                                  "--out", str(out)])
        assert res.exit_code == 0, res.output
        run = json.loads((out / "run.json").read_text())
        assert run["settings"]["model_choice"]["discrepancy"] == ("auto" if tau else "off"), (spec, method, noise)
        assert (run["model"]["discrepancy"] or {}).get("tau") == tau


def test_dataset_run_applies_the_discrepancy_default(tmp_path):
    """A folder run with VI gets the same default as a single run (the batch NetCDF's model config has tau)."""
    gen = _gen(tmp_path)
    discrepancy_path(load_generator(str(gen))).write_text(json.dumps({"tau": 0.11}))
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).save(imgs / f"{i}.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(imgs), "--generator", str(gen), "--task", "superres", "--factor", "2",
                              "--method", "vi", "--steps", "2", "--num-samples", "4", "-q", "--out", str(out)])
    assert res.exit_code == 0, res.output
    ncs = list((out / "posteriors").glob("*.nc"))
    assert ncs and all(b'"tau": 0.11' in p.read_bytes() for p in ncs)
