"""`brgm demo` on a tiny generator: the figure, the metrics and the run record."""

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.cli.demo import DEMO_FACES, demo_faces, demo_mask

torch.set_num_threads(1)
GEN = "builtin:conv16"
runner = CliRunner()


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "result"
    res = runner.invoke(app, ["demo", "--quick", "--generator", GEN, "--out", str(out), "-q"])
    assert res.exit_code == 0, (res.output, res.stderr, res.exception)
    return res, out


def test_quick_demo_files_and_message(quick_demo):
    res, out = quick_demo
    assert sorted(os.listdir(out)) == ["metrics.json", "run.json", "summary.png"]
    assert str(out) in res.output and "summary.png" in res.output
    assert not [p for p in os.listdir(out.parent) if p.startswith(".")]


def test_summary_figure_layout(quick_demo):
    _, out = quick_demo
    img = np.asarray(Image.open(out / "summary.png").convert("RGB")).astype(float)
    h, w, _ = img.shape
    # 9 rows (truth, observation, MAP, posterior mean, 3 samples, std, prior reliance) x 8 columns
    # (4 tasks: super-resolution, in-painting, colorization, deblurring; x 2 faces)
    assert 0.95 * w < h < 1.2 * w and w >= 600
    assert img.std() > 20  # not a blank canvas
    # each row of panels is drawn: the centre column of pixels crosses 9 non-white bands
    col = img[:, w // 2 - w // 16].mean(-1) < 245
    bands = np.count_nonzero(np.diff(col.astype(int)) == 1)
    assert bands >= 9


def test_metrics_json(quick_demo):
    _, out = quick_demo
    m = json.loads((out / "metrics.json").read_text())
    assert m["faces"] == [f"test_face_{i}" for i in DEMO_FACES[:2]]
    assert list(m["tasks"]) == ["superres", "inpaint", "colorize", "deblur"]
    assert set(m["tasks"]["superres"]) == {"map", "vi", "baseline_bicubic"}
    assert set(m["tasks"]["inpaint"]) == {"map", "vi"}
    assert set(m["tasks"]["colorize"]) == {"map", "vi", "baseline_gray"}
    assert set(m["tasks"]["deblur"]) == {"map", "vi"}
    for task in m["tasks"]:
        rel = m["tasks"][task]["vi"]["mean_prior_reliance"]  # VI draws give the reliance map
        assert set(rel) == set(m["faces"]) and all(0 <= v <= 1 for v in rel.values())
        assert m["tasks"][task]["vi"]["reliance"]["num_posterior_draws"] == 4
        assert "mean_prior_reliance" not in m["tasks"][task]["map"]
    for task in m["tasks"]:
        for method in ("map", "vi"):
            entry = m["tasks"][task][method]
            assert entry["steps_done"] == 5 and entry["stopped"] is None
            for face, vals in entry["faces"].items():
                flat = vals if task != "inpaint" else vals["reconstruction"]
                assert set(flat) == {"psnr", "ssim", "mae", "rmse"}
                assert all(math.isfinite(v) for v in flat.values())
                assert -1 <= flat["ssim"] <= 1 and 0 < flat["mae"] <= flat["rmse"] <= 1
                assert flat["psnr"] == pytest.approx(-20 * math.log10(flat["rmse"]), abs=1e-6)
                if task == "inpaint":  # the composite keeps the true observed pixels
                    assert vals["composite"]["mae"] <= vals["reconstruction"]["mae"] + 1e-12
            faces = list(entry["faces"].values())
            if task != "inpaint":
                assert entry["mean"]["mae"] == pytest.approx(np.mean([f["mae"] for f in faces]))
            else:
                assert entry["mean"]["composite"]["psnr"] == pytest.approx(
                    np.mean([f["composite"]["psnr"] for f in faces]))


def test_coverage_per_task(quick_demo):
    res, out = quick_demo
    m = json.loads((out / "metrics.json").read_text())
    for task, entry in m["tasks"].items():
        assert "coverage" not in entry["map"]  # a MAP has no draws
        cov = entry["vi"]["coverage"]
        assert cov["num_draws"] == 4 and set(cov["faces"]) == set(m["faces"])
        regions = {"all", "observed", "missing"} if task == "inpaint" else {"all"}
        assert set(cov["all_images"]) == regions and set(cov["regions"]) == regions
        for region in regions:
            for level in ("0.5", "0.9", "0.95"):
                c = cov["all_images"][region][level]
                assert 0 <= c["coverage"] <= 1 and c["width"] >= 0
        if task == "inpaint":  # the demo mask hides 1/4 x 1/2 of the face, every channel
            R = 16
            assert cov["counted"]["missing"] == 2 * 3 * (~demo_mask(R)).sum()
    assert res.output.count("90% interval coverage") == len(m["tasks"])  # one per VI row
    assert "(observed " in res.output and "missing " in res.output


def test_run_json(quick_demo):
    _, out = quick_demo
    run = json.loads((out / "run.json").read_text())
    s = run["settings"]
    assert (s["faces"], s["map_steps"], s["vi_steps"], s["num_samples"], s["generator"], s["quick"]) == \
        (2, 5, 5, 4, GEN, True)
    assert s["face_ids_test_split"] == list(DEMO_FACES[:2])
    assert s["factor"] == 8  # a 16x16 generator observes 2x2 images
    assert run["generator"]["resolution"] == 16
    assert {f"{t}_{k}_s" for t in ("superres", "inpaint", "colorize", "deblur") for k in ("map", "vi", "reliance")} | {
        "total_s"} <= set(run["timings_s"])
    assert s["tasks"] == ["superres", "inpaint", "colorize", "deblur"] and s["deblur_sigma_px"] == 0.5
    assert run["versions"]["torch"] and run["versions"]["pyro"]
    assert run["inference"]["superres"]["vi"]["loss_terms"]["loss"]["last"] < float("inf")


def test_steps_and_faces_options(tmp_path):
    out = tmp_path / "d"
    res = runner.invoke(app, ["demo", "--generator", GEN, "--faces", "1", "--steps", "3", "--num-samples", "3",
                              "--out", str(out), "-q"])
    assert res.exit_code == 0, (res.output, res.stderr)
    m = json.loads((out / "metrics.json").read_text())
    assert m["faces"] == [f"test_face_{DEMO_FACES[0]}"]
    assert m["tasks"]["inpaint"]["vi"]["steps_done"] == 3


@pytest.mark.parametrize("args,fragment", [
    (["--faces", "0"], "--faces must be between 1 and"),
    (["--num-samples", "2"], "--num-samples must be at least 3"),
    (["--map-steps", "0"], "--map-steps must be at least 1"),
    (["--generator", "builtin:nosuch"], "nosuch"),
])
def test_demo_bad_options(tmp_path, args, fragment):
    out = tmp_path / "d"
    res = runner.invoke(app, ["demo", "--quick", "--generator", GEN, "--out", str(out), *args])
    assert res.exit_code == 2
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err
    assert not out.exists()


def test_demo_refuses_nonempty_out(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    res = runner.invoke(app, ["demo", "--quick", "--generator", GEN, "--out", str(d)])
    assert res.exit_code == 2 and "not empty" in res.stderr
    assert os.listdir(d) == ["keep.txt"]


def test_demo_faces_are_test_faces_and_mask():
    from brgm_pyro.data.faces import face_image_uint8

    f = demo_faces([DEMO_FACES[0]], 64, 3)
    assert f.shape == (1, 64, 64, 3)
    np.testing.assert_allclose(f[0], face_image_uint8(DEMO_FACES[0], "test") / 255.0, atol=1e-6)
    assert np.abs(f[0] - face_image_uint8(DEMO_FACES[0], "train") / 255.0).max() > 0.1
    g = demo_faces(DEMO_FACES[:2], 16, 1)
    assert g.shape == (2, 16, 16, 1)
    m = demo_mask(64)
    assert m.dtype == bool and (~m).sum() == 20 * 32 and not m[30, 32] and m[50, 32]


def test_ctrl_c_in_demo_writes_what_exists(tmp_path, monkeypatch):
    import brgm_pyro.cli.demo as demo_mod
    from brgm_pyro.inference import run_map, run_vi
    from brgm_pyro.registry import Registry

    def interrupting_vi(model, y, **kw):
        def cb(step, terms):
            if step == 1:
                raise KeyboardInterrupt
        return run_vi(model, y, callback=cb, **kw)

    reg = Registry("inference method")
    reg.register("map")(run_map)
    reg.register("vi")(interrupting_vi)
    monkeypatch.setattr(demo_mod, "methods_registry", lambda: reg)
    out = tmp_path / "d"
    res = runner.invoke(app, ["demo", "--quick", "--generator", GEN, "--out", str(out), "-q"])
    assert res.exit_code == 130 and "partial results written" in res.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["tasks"]) == ["superres"]  # stopped during the first task's VI
    assert "interrupted" in m["tasks"]["superres"]["vi"]["stopped"]
    assert (out / "summary.png").is_file()
