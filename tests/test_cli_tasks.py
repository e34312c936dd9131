"""`brgm reconstruct` on the tasks of issue 15 (colorize, denoise, deblur, deblur_blind, cs, compose),
the prior-reliance outputs, and their bad input (one line, exit 2, nothing written)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app
from tests.test_cli_bad_input import _assert_refused

torch.set_num_threads(1)
GEN = "builtin:conv16"  # 16x16 RGB
runner = CliRunner()


def _rgb(h=16, w=16, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _png(path, arr):
    Image.fromarray(arr).save(path)
    return path


def _run(tmp_path, *args, name="out"):
    out = tmp_path / name
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "--steps", "2", "-q", "--threads", "1",
                              "--out", str(out), *map(str, args)])
    return res, out


def _ok(res):
    assert res.exit_code == 0, (res.exit_code, res.output, res.stderr, res.exception)


def _truth(out):
    return np.asarray(Image.open(out / "truth.png").convert("RGB"), dtype=np.float64) / 255


def test_colorize_simulate_observes_the_luma(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "colorize")
    _ok(res)
    obs = Image.open(out / "observed.png")
    assert obs.mode == "L"  # one channel, not forced to RGB
    luma = _truth(out) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(np.asarray(obs, dtype=np.float64) / 255, luma, atol=1.5 / 255)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["mean"]) == {"reconstruction", "baseline_gray"}


def test_colorize_gray_observation_read_as_one_channel(tmp_path):
    gray = (np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)
    p = _png(tmp_path / "g.png", gray)
    res, out = _run(tmp_path, p, "--task", "colorize")
    _ok(res)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "observed.png")), gray)
    assert np.asarray(Image.open(out / "reconstruction.png")).shape == (16, 16, 3)
    # an RGB file whose channels are equal is gray too (and says so in run.json)
    res, out2 = _run(tmp_path, _png(tmp_path / "g3.png", np.repeat(gray[:, :, None], 3, -1)), "--task",
                     "colorize", name="out2")
    _ok(res)
    run = json.loads((out2 / "run.json").read_text())
    assert "RGB with equal channels read as gray" in run["inputs"][0]["conversions"]


def test_denoise_simulate_noise_and_model_noise(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "denoise", "--sigma", "0.1")
    _ok(res)
    diff = 2 * (np.asarray(Image.open(out / "observed.png"), dtype=np.float64) / 255 - _truth(out))  # [-1, 1] units
    assert 0.08 < diff.std() < 0.12  # the stated noise (clipping at the range ends shrinks it a little)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["likelihoods"][0]["sigma_pixel"] == pytest.approx(0.1)  # the likelihood expects it


def test_deblur_user_kernel_file(tmp_path):
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    np.save(tmp_path / "k.npy", k)
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "deblur", "--kernel",
                    tmp_path / "k.npy", "--padding", "circular")
    _ok(res)
    t = _truth(out)
    want = sum(k[a, b] * np.roll(t, (a - 1, b - 1), (0, 1)) for a in range(3) for b in range(3))
    np.testing.assert_allclose(np.asarray(Image.open(out / "observed.png"), dtype=np.float64) / 255, want,
                               atol=1.5 / 255)
    assert json.loads((out / "run.json").read_text())["settings"]["kernel"].endswith("k.npy")


def test_deblur_blind_infers_the_width(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "deblur_blind",
                    "--guess", "1.5")
    _ok(res)
    assert "kernel_width" in json.dumps(json.loads((out / "run.json").read_text())["latents"])


def test_cs_measurements_and_matrix(tmp_path):
    p = _png(tmp_path / "c.png", _rgb())
    res, out = _run(tmp_path, p, "--simulate", "--task", "cs", "--measurements", "200", "--kind", "fourier")
    _ok(res)
    assert not (out / "observed.png").exists()  # not an image
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["mean"]) == {"reconstruction", "baseline_pinv"}
    cfg = json.loads((out / "run.json").read_text())["model"]["corruption"]
    assert (cfg["m"], cfg["n"], cfg["kind"]) == (200, 768, "fourier")
    np.save(tmp_path / "A.npy", np.random.default_rng(0).standard_normal((50, 768)) / np.sqrt(50))
    res, out2 = _run(tmp_path, p, "--simulate", "--task", "cs", "--matrix", tmp_path / "A.npy", name="out2")
    _ok(res)
    cfg = json.loads((out2 / "run.json").read_text())["model"]["corruption"]
    assert (cfg["m"], cfg["kind"]) == (50, "matrix")


def test_cs_has_no_perceptual_term_on_faces64(tmp_path):
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", _png(tmp_path / "c.png", _rgb(64, 64)).as_posix(), "--simulate",
                              "--task", "cs", "--measurements", "64", "--steps", "1", "-q", "--threads", "1",
                              "--out", str(out)])
    _ok(res)
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["percept"] is False
    assert [lk["class"] for lk in run["model"]["likelihoods"]] == ["PixelGaussian"]


def test_compose_parts(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "compose", "--parts",
                    "deblur:sigma=1,padding=reflect+superres:factor=2,kernel=box+inpaint")
    _ok(res)
    assert Image.open(out / "observed.png").size == (8, 8)
    parts = json.loads((out / "run.json").read_text())["model"]["corruption"]["parts"]
    assert [p["name"] for p in parts] == ["deblur", "superres", "inpaint"]
    assert (parts[0]["sigma"], parts[0]["padding"], parts[1]["factor"]) == (1.0, "reflect", 2)


def test_vi_writes_reliance_png_and_netcdf_group(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "colorize", "--method",
                    "vi", "--num-samples", "3")
    _ok(res)
    assert np.asarray(Image.open(out / "reliance.png")).shape == (16, 16, 3)
    import xarray as xr

    ds = xr.open_dataset(out / "posterior.nc", group="reliance", engine="h5netcdf")
    r = ds["prior_reliance"].values
    assert r.shape == (1, 3, 16, 16) and np.isfinite(r).all() and (r >= 0).all()
    np.testing.assert_allclose(r, ds["posterior_var"].values / ds["prior_var"].values[None], rtol=1e-5)
    assert ds.attrs["num_posterior_draws"] == 3
    entry = json.loads((out / "run.json").read_text())["images"]["c"]
    assert "reliance.png" in entry["files"]
    assert entry["prior_reliance"]["mean_prior_reliance"] == pytest.approx(float(np.clip(r, 0, 1).mean()), rel=1e-5)


def test_map_writes_no_reliance(tmp_path):
    res, out = _run(tmp_path, _png(tmp_path / "c.png", _rgb()), "--simulate", "--task", "deblur")
    _ok(res)
    assert not (out / "reliance.png").exists()


# --- bad input: one line, exit 2, nothing written --------------------------------------------------------

def _bad_inputs(tmp_path):
    np.save(tmp_path / "k_bad.npy", np.ones((3, 3)) / 8)  # sums to 1.125
    np.save(tmp_path / "A_bad.npy", np.ones((10, 100)))  # 100 columns, images have 768 values
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    gray = (np.random.default_rng(1).random((16, 16)) * 255).astype(np.uint8)
    return _png(tmp_path / "c.png", _rgb()), _png(tmp_path / "g.png", gray)


@pytest.mark.parametrize("args,fragments", [
    (["{c}", "--task", "colorize"], ["has colour", "one gray channel", "--simulate"]),
    (["{g}", "--task", "denoise"], ["1 channel", "observes 3"]),
    (["{g}", "--task", "deblur"], ["1 channel", "observes 3"]),
    (["{c}", "--simulate", "--task", "deblur", "--kernel", "{d}/k_bad.npy"], ["sums to 1.125", "not 1"]),
    (["{c}", "--simulate", "--task", "deblur", "--kernel", "{d}/nope.npy"], ["does not exist"]),
    (["{c}", "--simulate", "--task", "deblur", "--kernel", "{d}/obj.npy"], ["not a plain numeric"]),
    (["{c}", "--simulate", "--task", "deblur", "--kernel", "square"], ["not gauss, motion or a .npy"]),
    (["{c}", "--simulate", "--task", "cs", "--matrix", "{d}/A_bad.npy"], ["100 columns", "(m, 768)"]),
    (["{c}", "--simulate", "--task", "cs"], ["--measurements M or --matrix"]),
    (["{c}", "--simulate", "--task", "cs", "--measurements", "5000"], ["1..768"]),
    (["{c}", "--task", "cs", "--measurements", "10"], ["not images", "--simulate"]),
    (["{c}", "--simulate", "--task", "compose"], ["needs --parts"]),
    (["{c}", "--simulate", "--task", "compose", "--parts", "blur+superres:factor=2"], ["'blur' is not a task"]),
    (["{c}", "--simulate", "--task", "compose", "--parts", "superres:size=2"], ["'size=2' is not option=value"]),
    (["{c}", "--simulate", "--task", "compose", "--parts", "superres:factor=two"], ["'two' is not a int"]),
    (["{c}", "--simulate", "--task", "compose", "--parts", "inpaint+superres:factor=2"], ["only the last step"]),
    (["{c}", "--simulate", "--task", "compose", "--parts", "deblur:kernel={d}/k_bad.npy"], ["sums to 1.125"]),
])
def test_bad_task_input(tmp_path, args, fragments):
    c, g = _bad_inputs(tmp_path)
    res, out = _run(tmp_path, *[a.format(c=c, g=g, d=tmp_path) for a in args])
    _assert_refused(tmp_path, res, out, *fragments)


def test_reliance_draws_option(tmp_path):
    p = _png(tmp_path / "c.png", _rgb())
    res, out = _run(tmp_path, p, "--simulate", "--task", "denoise", "--method", "vi", "--num-samples", "3",
                    "--reliance-draws", "0")
    _ok(res)
    assert (out / "samples").is_dir() and not (out / "reliance.png").exists()
    res, out2 = _run(tmp_path, p, "--simulate", "--task", "denoise", "--method", "vi", "--num-samples", "3",
                     "--reliance-draws", "64", name="out2")
    _ok(res)
    import xarray as xr

    assert xr.open_dataset(out2 / "posterior.nc", group="reliance", engine="h5netcdf").attrs["num_prior_draws"] == 64
    res, out3 = _run(tmp_path, p, "--simulate", "--reliance-draws", "1", name="out3")
    _assert_refused(tmp_path, res, out3, "--reliance-draws must be 0")


def test_dataset_run_writes_reliance_per_image(tmp_path):
    import xarray as xr

    d = tmp_path / "faces"
    d.mkdir()
    for i in range(2):
        _png(d / f"f{i}.png", _rgb(seed=i))
    res, out = _run(tmp_path, d, "--simulate", "--task", "deblur", "--sigma", "1", "--method", "vi",
                    "--num-samples", "3", "--batch-size", "2")
    _ok(res)
    for i in range(2):
        assert np.asarray(Image.open(out / f"f{i}" / "reliance.png")).shape == (16, 16, 3)
    ds = xr.open_dataset(out / "posteriors" / "batch_00000.nc", group="reliance", engine="h5netcdf")
    assert ds["prior_reliance"].shape == (2, 3, 16, 16)


def _faces64(tmp_path, *args, name="out"):
    out = tmp_path / name
    res = runner.invoke(app, ["reconstruct", _png(tmp_path / "c64.png", _rgb(64, 64)).as_posix(), "--simulate",
                              "--steps", "1", "-q", "--threads", "1", "--out", str(out), *map(str, args)])
    return res, out


def test_blind_deblur_runs_with_the_default_discrepancy(tmp_path):
    """Issue 26 (2): builtin:faces64 has a stored discrepancy scale, so the default is ``auto``;
    ``--task deblur_blind`` used to stop with "does not state diag(A A^T)"."""
    res, out = _faces64(tmp_path, "--task", "deblur_blind")
    _ok(res)
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["discrepancy"]["tau"] > 0 and "kernel_width" in json.dumps(run["latents"])


def test_compose_with_a_blind_part_resolves_the_default_discrepancy_to_off(tmp_path):
    parts = "deblur_blind:guess=2+superres:factor=2"
    res, out = _faces64(tmp_path, "--task", "compose", "--parts", parts)
    _ok(res)
    assert "no discrepancy term" in res.stderr
    assert json.loads((out / "run.json").read_text())["model"]["discrepancy"] is None
    # asked for explicitly: one line that says how to get around it
    res, _ = _faces64(tmp_path, "--task", "compose", "--parts", parts, "--discrepancy", "0.05", name="out2")
    assert res.exit_code == 2 and "--discrepancy off" in res.stderr and len(res.stderr.strip().splitlines()) == 1
