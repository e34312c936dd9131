"""Issue 26: one run, one place. The library's RunSpec builds the same model for an image whichever
path it takes (``brgm reconstruct FILE``, ``brgm reconstruct DIR``, ``brgm.build_model``); what a
method can do is declared once, at registration (a method registered here gets its CLI options,
checks and discrepancy default without an edit elsewhere); the help lists every registry."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import brgm_pyro as brgm
from brgm_pyro.cli import app
from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import GUIDES, METHODS, MethodTraits, run_map
from brgm_pyro.pipeline import core
from brgm_pyro.pipeline.tasks import tasks

torch.set_num_threads(1)
runner = CliRunner()
GEN = "builtin:faces64"  # it stores a discrepancy scale: the default term is exercised


class _Built(Exception):
    """Raised instead of inference, once the model is built."""


def _face(path, res=64, seed=0):
    y, x = np.mgrid[0:res, 0:res] / res
    img = np.stack([0.5 + 0.4 * np.sin((3 + seed) * x), 0.5 + 0.4 * np.cos(2 * y), 0.4 + 0.2 * x * y], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def _mask(path, res=64):
    m = np.full((res, res), 255, np.uint8)
    m[20:40, 20:40] = 0
    Image.fromarray(m).save(path)
    return path


def _task_args(task: str, tmp_path) -> tuple[list, dict]:
    """(CLI flags, observe() options) of a small instance of every registered task."""
    table = {"superres": (["--factor", "4"], {"factor": 4}),
             "superres_blind": (["--factor", "4"], {"factor": 4}),
             "compose": (["--parts", "deblur:sigma=1+superres:factor=2"], {"parts": "deblur:sigma=1+superres:factor=2"}),
             "cs": (["--measurements", "64"], {"measurements": 64})}
    if task == "inpaint":
        m = _mask(tmp_path / "mask.png")
        return [], {"mask": [m]}
    return table.get(task, ([], {}))


def _record_models(monkeypatch) -> list:
    seen: list = []

    def record(model, *a, **k):
        seen.append(json.loads(json.dumps(model.config(), default=str)))
        raise _Built

    monkeypatch.setattr(core, "reconstruct", record)
    return seen


@pytest.mark.parametrize("task", list(tasks()))
def test_every_task_builds_the_same_model_on_every_path(task, tmp_path, monkeypatch):
    flags, opts = _task_args(task, tmp_path)
    img = _face(tmp_path / "face.png")
    seen = _record_models(monkeypatch)
    base = ["reconstruct", "--generator", GEN, "--simulate", "--task", task, "-q", "--threads", "1", *flags]
    mask_flags = ["--mask", str(opts["mask"][0])] if "mask" in opts else []
    res = runner.invoke(app, [*base, str(img), *mask_flags, "--out", str(tmp_path / "one")])
    assert isinstance(res.exception, _Built), (res.output, res.stderr, res.exception)
    manifest = tmp_path / "items.csv"
    manifest.write_text("image,mask\n" + f"{img},{opts['mask'][0] if 'mask' in opts else ''}\n")
    res = runner.invoke(app, [*base, str(manifest), "--out", str(tmp_path / "ds")])
    assert isinstance(res.exception, _Built), (res.output, res.stderr, res.exception)
    G = brgm.load_generator(GEN)
    obs = brgm.observe([img], G, task, simulate=True, **opts)
    seen.append(json.loads(json.dumps(brgm.build_model(G, obs).config(), default=str)))
    single, dataset, library = seen
    assert single == dataset == library
    if task == "denoise":  # the task's noise rule, on every path (was the single-file path only)
        assert library["likelihoods"][0]["sigma_pixel"] == pytest.approx(0.2)
    if task in ("superres", "inpaint"):  # the discrepancy default, on every path (build_model had none)
        assert library["discrepancy"] is not None


def _toy_runner(seen: dict):
    def run_toy(model, y, **kw):
        seen.update(kw)
        kw.pop("num_chains", None)
        return run_map(model, y, **{k: v for k, v in kw.items() if k in ("steps", "seed", "progress")})

    return run_toy


@pytest.fixture
def toy_method():
    """A method registered here, in one line, with its traits (as the SMC sampler would be)."""
    seen: dict = {}
    METHODS.register("toy_smc", traits=MethodTraits(draws=True, chains=True))(_toy_runner(seen))
    try:
        yield seen
    finally:
        METHODS.unregister("toy_smc")


def test_a_method_registered_with_traits_gets_its_options_checks_and_discrepancy_default(toy_method, tmp_path):
    img = tmp_path / "low.png"
    Image.fromarray((np.random.default_rng(0).random((2, 2, 3)) * 255).astype(np.uint8)).save(img)
    base = ["reconstruct", str(img), "--generator", "builtin:conv16", "-q", "--threads", "1", "--method", "toy_smc",
            "--steps", "2", "--reliance-draws", "0"]
    for extra, fragment in ((["--lr", "0.1"], "--method toy_smc has none"),
                            (["--num-samples", "0"], "--num-samples must be at least 1"),
                            (["--max-tree-depth", "3"], "has no trees"),
                            (["--mass", "diag"], "has no mass matrix"),
                            (["--guide", "normal"], "has none (drop --guide)")):
        res = runner.invoke(app, [*base, *extra, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and fragment in res.stderr, (extra, res.stderr)
    res = runner.invoke(app, [*base, "--chains", "3", "--out", str(tmp_path / "ok")])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    assert toy_method["num_chains"] == 3  # chains reach the method
    G = brgm.load_generator(GEN)
    assert core.default_discrepancy("toy_smc", G, "gaussian") == "auto"
    METHODS.unregister("toy_smc")
    METHODS.register("toy_smc", traits=MethodTraits(discrepancy_default=False))(_toy_runner({}))
    assert core.default_discrepancy("toy_smc", G, "gaussian") == "off"
    res = runner.invoke(app, [*base[:-6], "--method", "toy_smc", "--chains", "2", "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "has no chains" in res.stderr


def test_library_methods_declare_their_traits():
    t = {name: METHODS.traits(name) for name in METHODS.names()}
    assert not t["map"].draws and t["map"].learning_rate
    assert t["vi"].guide and t["vi"].draws
    assert t["nuts"].tree_depth and t["nuts"].mass_matrix and t["hmc"].mass_matrix and not t["hmc"].tree_depth
    assert all(t[m].mcmc and t[m].chains for m in ("sgld", "psgld", "mala", "hmc", "nuts"))
    assert all(t[m].langevin for m in ("sgld", "psgld", "mala"))


@pytest.mark.parametrize("guide", GUIDES.names())
def test_guide_reaches_every_registered_guide(guide, tmp_path):
    img = tmp_path / "low.png"
    Image.fromarray((np.random.default_rng(1).random((2, 2, 3)) * 255).astype(np.uint8)).save(img)
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(img), "--generator", "builtin:conv16", "-q", "--threads", "1",
                              "--method", "vi", "--guide", guide, "--steps", "2", "--num-samples", "2",
                              "--reliance-draws", "0", "--out", str(out)])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    assert json.loads((out / "run.json").read_text())["settings"]["guide"] == guide


def test_bad_method_options_are_one_line(tmp_path):
    img = tmp_path / "low.png"
    Image.fromarray((np.random.default_rng(1).random((2, 2, 3)) * 255).astype(np.uint8)).save(img)
    base = ["reconstruct", str(img), "--generator", "builtin:conv16", "-q", "--out", str(tmp_path / "o")]
    for extra, fragment in ((["--method", "vi", "--num-samples", "0"], "--num-samples must be at least 1"),
                            (["--method", "vi", "--guide", "nope"], "--guide 'nope' is not one of"),
                            (["--method", "map", "--guide", "normal"], "--method map has none")):
        res = runner.invoke(app, [*base, *extra])
        assert res.exit_code == 2 and fragment in res.stderr and res.stderr.count("\n") == 1, (extra, res.stderr)
    assert not (tmp_path / "o").exists()


def test_inla_error_names_an_option_that_exists(tmp_path):
    # INLA has draws, so the perceptual term is off by default; asked for explicitly it is refused
    img = _face(tmp_path / "face.png")
    res = runner.invoke(app, ["reconstruct", str(img), "--simulate", "--generator", GEN, "--method", "inla",
                              "--percept", "--sigma-pixel", "auto", "--task", "superres", "--factor", "4", "-q",
                              "--threads", "1", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--no-percept" in res.stderr and "--percept off" not in res.stderr, res.stderr


def _help() -> str:
    res = runner.invoke(app, ["reconstruct", "--help"], env={"COLUMNS": "400"}, terminal_width=400)
    assert res.exit_code == 0
    return res.output


def test_help_lists_every_registry_and_says_what_each_option_does():
    from brgm_pyro.models.priors import PRIORS

    text = _help()
    for registry in (PRIORS, GUIDES, METHODS):
        for name in registry.names():
            assert re.search(rf"\b{re.escape(name)}\b", text), (registry.kind, name)
    for name in tasks():
        assert name in text, name
    for task, t in tasks().items():  # a help that only repeats the option's name says nothing
        for o in t.options:
            assert o.help and o.help != f"{task}: {o.name}", (task, o.name)
    flags = [line for line in text.splitlines() if re.search(r"--(simulate|overwrite|quiet|per-image|noise-per-image|"
                                                             r"percept)\b", line)]
    assert flags and not [line for line in flags if "<bool>" in line]  # flags take no value


def test_a_flag_does_not_eat_the_next_argument(tmp_path, monkeypatch):
    seen = _record_models(monkeypatch)
    img = _face(tmp_path / "face.png", res=16)
    res = runner.invoke(app, ["reconstruct", "--generator", "builtin:conv16", "--task", "deblur_blind", "--per-image",
                              str(img), "--simulate", "-q", "--out", str(tmp_path / "o")])
    assert isinstance(res.exception, _Built), (res.output, res.stderr, res.exception)
    assert seen[0]["corruption"]["kernel_width_latent"]["per_image"] is True


def test_run_spec_refuses_before_anything_is_loaded():
    from brgm_pyro.pipeline.run import MethodChoice, ModelChoice, RunSpec

    with pytest.raises(BRGMError, match="--prior"):
        RunSpec(model=ModelChoice(prior="nope")).check()
    with pytest.raises(BRGMError, match="--lr"):
        RunSpec(method=MethodChoice("nuts", lr=0.1)).check()
    RunSpec(task="denoise", method=MethodChoice("vi", guide="lowrank")).check()


def test_the_writing_phase_is_announced_before_sampling(tmp_path, capsys):
    """Issue 26 (5): NUTS's estimate left out the writing phase (39 of 59 s); the command now says,
    before sampling, what writing will cost: the reliance map's prior renders and the draws' renders."""
    from brgm_pyro.cli.reconstruct import _announce_writing
    from brgm_pyro.pipeline.run import MethodChoice

    G = brgm.load_generator("builtin:conv16")
    img = _face(tmp_path / "f.png", res=16)
    obs = brgm.observe([img], G, "superres", simulate=True, factor=4)
    model = brgm.build_model(G, obs)
    _announce_writing(model, obs, MethodChoice("nuts", num_samples=5, chains=2), 64)
    err = capsys.readouterr().err
    assert "then writing the outputs" in err and "64 prior renders" in err and "10 renders of the draws" in err
