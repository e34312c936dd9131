"""The measured-coverage table and the warnings `brgm reconstruct` prints from it (issue 28, item 5)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro import calibration_table as ct
from brgm_pyro.calibration import exact_sampler_coverage
from brgm_pyro.cli import app

torch.set_num_threads(1)
runner = CliRunner()


def _row(task, method, coverage, draws=128, noise="gaussian", percept=True, truth="faces", **extra):
    match = {"task": task, "method": method, "guide": "normal" if method == "vi" else None, "noise": noise,
             "percept": percept, "discrepancy": True, "prior": "brgm", **extra}
    return {"match": match, "truth": truth, "images": "test faces 0-5", "draws": draws,
            "reference": exact_sampler_coverage(0.9, draws), "coverage": coverage, "commands": ["python ..."]}


def _combo(task, method, noise="gaussian", percept=True, **extra):
    return {"task": task, "method": method, "guide": "normal" if method == "vi" else None, "noise": noise,
            "percept": percept, "discrepancy": True, "prior": "brgm", **extra}


TABLE = {"rows": [_row("superres", "vi", {"all": 0.90}, factor=8, kernel="bicubic"),
                  _row("superres", "vi", {"all": 0.87}, truth="model+e", factor=8, kernel="bicubic"),
                  _row("inpaint", "vi", {"all": 0.88, "observed": 0.91, "missing": 0.74}),
                  _row("colorize", "vi", {"all": 0.53}, truth="model+e")]}


def test_calibrated_combination_gets_no_warning():
    assert ct.calibration_warning(TABLE, _combo("superres", "vi", factor=8, kernel="bicubic")) is None


def test_uncalibrated_cell_warns_with_its_figure_and_reference():
    line = ct.calibration_warning(TABLE, _combo("inpaint", "vi"))
    ref = exact_sampler_coverage(0.9, 128)  # 0.886: 0.74 is 0.146 below, outside +- 0.05
    assert "not calibrated" in line and "0.74 on missing pixels" in line and f"{ref:.2f}" in line
    assert "0.53" in ct.calibration_warning(TABLE, _combo("colorize", "vi"))


def test_colorization_vi_with_student_t_noise_was_never_measured():
    line = ct.calibration_warning(TABLE, _combo("colorize", "vi", noise="studentt"))
    assert "never been measured" in line and "studentt noise" in line


def test_other_factor_or_perceptual_setting_is_another_combination():
    assert "never been measured" in ct.calibration_warning(TABLE, _combo("superres", "vi", factor=4, kernel="bicubic"))
    assert "never been measured" in ct.calibration_warning(TABLE, _combo("superres", "vi", factor=8, kernel="box"))
    no_percept = _combo("superres", "vi", percept=False, factor=8, kernel="bicubic")
    assert "never been measured" in ct.calibration_warning(TABLE, no_percept)


def test_band_edges_follow_the_reference():
    ref = exact_sampler_coverage(0.9, 16)  # 0.794
    inside = {"rows": [_row("denoise", "vi", {"all": ref - 0.049}, draws=16)]}
    outside = {"rows": [_row("denoise", "vi", {"all": ref - 0.051}, draws=16)]}
    assert ct.calibration_warning(inside, _combo("denoise", "vi")) is None
    assert ct.calibration_warning(outside, _combo("denoise", "vi")) is not None


def _pooled(S, cov_all, cov_missing=None):
    regions = {"all": {"0.9": {"coverage": cov_all, "width": 0.1}}}
    if cov_missing is not None:
        regions["missing"] = {"0.9": {"coverage": cov_missing, "width": 0.2}}
    return {"num_draws": S, "all_images": regions}


def test_simulate_warning_against_the_exact_sampler_reference():
    assert ct.simulate_warning(_pooled(16, 0.80)) is None  # reference 0.794 for 16 draws
    line = ct.simulate_warning(_pooled(16, 0.39))
    assert "0.39" in line and "16 draws" in line and "0.79" in line
    assert "missing 0.60" in ct.simulate_warning(_pooled(128, 0.88, 0.60))
    assert ct.simulate_warning(None) is None


SHIPPED = ("builtin:faces64", "builtin:fashion32")


def _shipped_table(spec):
    from brgm_pyro.models.generators.loading import load_generator

    return ct.load_table(ct.table_path(load_generator(spec)))


def _combos(tab):
    """Each combination of the table's rows once (its ``match``), with its rows."""
    out = {}
    for r in tab["rows"]:
        out.setdefault(json.dumps(r["match"], sort_keys=True), []).append(r)
    return [(json.loads(k), rows) for k, rows in out.items()]


def _outside(row):
    return any(abs(c - row["reference"]) > ct.TOLERANCE for c in row["coverage"].values())


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_table_warns_for_every_cell_outside_the_band_and_only_there(spec):
    """Every row of the SHIPPED table: a combination with a row outside reference +- 0.05 gets the
    warning, naming that row's worst figure; a combination whose rows are all inside gets none."""
    tab = _shipped_table(spec)
    assert tab.get("generator") == spec and tab["rows"], spec
    for r in tab["rows"]:
        assert r["commands"] and abs(r["reference"] - exact_sampler_coverage(0.9, r["draws"])) < 1e-9
        assert set(r["coverage"]) <= set(ct.REGIONS) and r["truth"] in ("model+e", "model", "heldout")
    for combo, rows in _combos(tab):
        line = ct.calibration_warning(tab, combo)
        if any(_outside(r) for r in rows):
            worst = min((abs(c - r["reference"]) - ct.TOLERANCE, c) for r in rows for c in r["coverage"].values()
                        if abs(c - r["reference"]) > ct.TOLERANCE)
            assert line is not None and "not calibrated" in line, combo
            far = max((abs(c - r["reference"]), c) for r in rows for c in r["coverage"].values())
            assert f"covered {far[1]:.2f}" in line, (line, far, worst)
        else:
            assert line is None, (combo, line)


@pytest.mark.parametrize("spec", SHIPPED)
def test_shipped_table_has_rows_for_every_default_run_of_every_task(spec):
    """The combination ``brgm reconstruct --method vi`` builds for each measured task (its default
    options, the method's default guide, perceptual and discrepancy terms) finds rows in the shipped
    table, so its verdict comes from a measurement and not from "never measured"."""
    from brgm_pyro.pipeline import core
    from brgm_pyro.pipeline.run import MethodChoice, RunSpec
    from brgm_pyro.pipeline.tasks import get_task

    tab = _shipped_table(spec)
    G = core.load_generator(spec)
    tasks = sorted({r["match"]["task"] for r in tab["rows"]})
    assert {"superres", "inpaint", "denoise", "deblur", "cs"} <= set(tasks)
    for task in tasks:
        opts = {"measurements": 128} if task == "cs" else ({"factor": 8} if task == "superres_blind" else {})
        rs = RunSpec(task=task, task_options=opts, method=MethodChoice("vi"), simulate=True)
        rs.check()
        t = get_task(task)
        settings = {"task": task, "method": "vi", "percept": rs.use_percept(), "num_samples": 16,
                    "model_choice": {"noise": "gaussian", "prior": "brgm",
                                     "discrepancy": core.default_discrepancy("vi", G, "gaussian")},
                    **{k: v for k, v in t.settings(rs.task_options).items() if k in ("factor", "kernel")}}
        if rs.method.guide is not None:
            settings["guide"] = rs.method.guide
        assert ct.matching_rows(tab, ct.run_combination(settings)), (spec, task, ct.run_combination(settings))


def test_run_combination_from_run_settings():
    settings = {"task": "superres", "factor": 8, "kernel": "bicubic", "method": "vi", "percept": True,
                "num_samples": 16,
                "model_choice": {"noise": "gaussian", "discrepancy": "auto", "prior": "brgm"}}
    assert ct.run_combination(settings) == _combo("superres", "vi", factor=8, kernel="bicubic")
    assert ct.run_warnings(None, {**settings, "method": "map"}) == []  # no draws, no intervals


def _clean(path, h=16, w=16):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)


@pytest.mark.parametrize("noise,warns", [("studentt", True), ("gaussian", False)])
def test_cli_prints_the_warning_for_an_uncalibrated_run_only(tmp_path, monkeypatch, noise, warns):
    """Colorization with VI: Student-t noise was never measured (warning), Gaussian noise is
    calibrated in this (test) table (no calibration line)."""
    table = tmp_path / "calibration.json"
    row = _row("colorize", "vi", {"all": 0.88}, percept=False)
    row["match"]["discrepancy"] = False  # builtin:conv16 has no stored discrepancy scale
    table.write_text(json.dumps({"rows": [row]}))
    monkeypatch.setattr(ct, "table_path", lambda G: table)
    _clean(tmp_path / "clean.png")
    res = runner.invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", "--reliance-draws", "0",
                              str(tmp_path / "clean.png"), "--simulate", "--task", "colorize", "--method", "vi",
                              "--noise", noise, "--steps", "3", "--num-samples", "4", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, (res.output, res.exception)
    err = res.stderr
    assert ("never been measured" in err) == warns, err
    assert "not calibrated" not in err


def test_warning_names_the_calibrated_alternative_measured_on_the_same_task():
    tab = {"rows": [_row("colorize", "vi", {"all": 0.53}, truth="model+e"),
                    {**_row("colorize", "vi", {"all": 0.87}, truth="model+e"),
                     "match": {**_combo("colorize", "vi"), "guide": "lowrank"}},
                    _row("colorize", "mala", {"all": 0.70}, truth="model+e")]}
    line = ct.calibration_warning(tab, _combo("colorize", "vi"))
    assert "not calibrated" in line and "calibrated there: --method vi --guide lowrank" in line
    assert "mala" not in line  # measured, but not calibrated either
    assert ct.calibrated_alternatives(tab, {**_combo("colorize", "vi"), "noise": "studentt"}) == []


def test_task_vi_guide_is_the_default_family_and_an_explicit_guide_wins(monkeypatch):
    from brgm_pyro.pipeline.run import MethodChoice, RunSpec
    from brgm_pyro.pipeline.tasks import get_task

    t = get_task("denoise")
    monkeypatch.setattr(type(t), "vi_guide", "lowrank")
    spec = RunSpec(task="denoise", method=MethodChoice("vi"))
    spec.check()
    assert spec.method.guide == "lowrank" and spec.method.runner_options()["guide"] == "lowrank"
    mine = RunSpec(task="denoise", method=MethodChoice("vi", guide="normal"))
    mine.check()
    assert mine.method.guide == "normal"
    other = RunSpec(task="denoise", method=MethodChoice("mala"))
    other.check()  # a method without a guide is untouched
    assert other.method.guide is None
    settings = {"task": "denoise", "method": "vi", "guide": spec.method.guide, "percept": False,
                "model_choice": {"noise": "gaussian", "discrepancy": "auto", "prior": "brgm"}}
    assert ct.run_combination(settings)["guide"] == "lowrank"
