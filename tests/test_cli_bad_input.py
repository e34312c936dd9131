"""Every kind of bad input to `brgm reconstruct` gets one line on stderr, exit status 2, no traceback
and no output directory; odd but valid image modes are converted, not refused."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app

torch.set_num_threads(1)
GEN = "builtin:conv16"  # 16x16 RGB: x8 super-resolution observes 2x2 images
runner = CliRunner()


def _rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _run(tmp_path, *args):
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "--steps", "2", "-q", "--out", str(out),
                              *map(str, args)])
    return res, out


def _assert_refused(tmp_path, res, out, *fragments):
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert "Traceback" not in res.output and "Traceback" not in res.stderr
    for f in fragments:
        assert f in err, (f, err)
    assert not out.exists()
    assert [p for p in os.listdir(tmp_path) if p.startswith(".out")] == []  # no temp dir left
    return err


# --- unreadable inputs ---------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    res, out = _run(tmp_path, tmp_path / "nope.png")
    _assert_refused(tmp_path, res, out, "does not exist", "PNG or JPEG")


def test_text_file_named_png(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is not an image\n")
    res, out = _run(tmp_path, p)
    _assert_refused(tmp_path, res, out, "not a recognised image format", "PNG or JPEG")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.jpg"
    p.write_bytes(b"")
    res, out = _run(tmp_path, p)
    _assert_refused(tmp_path, res, out, "empty file")


def test_truncated_png(tmp_path):
    p = tmp_path / "cut.png"
    Image.fromarray(_rgb(64, 64)).save(p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    res, out = _run(tmp_path, p, "--simulate")
    _assert_refused(tmp_path, res, out, "damaged or truncated")


def test_directory_as_input(tmp_path):
    (tmp_path / "d").mkdir()
    res, out = _run(tmp_path, tmp_path / "d")
    _assert_refused(tmp_path, res, out, "is a directory")


# --- bad content -------------------------------------------------------------------------------------------

def test_nan_image(tmp_path):
    f = np.full((2, 2), 0.5, np.float32)
    f[0, 1] = np.nan
    p = tmp_path / "nan.tif"
    Image.fromarray(f, "F").save(p)
    res, out = _run(tmp_path, p)
    _assert_refused(tmp_path, res, out, "NaN", "finite")


@pytest.mark.parametrize("simulate", [False, True])
def test_constant_image(tmp_path, simulate):
    p = tmp_path / "flat.png"
    size = 32 if simulate else 2
    Image.fromarray(np.full((size, size, 3), 77, np.uint8)).save(p)
    res, out = _run(tmp_path, p, *(["--simulate"] if simulate else []))
    _assert_refused(tmp_path, res, out, "constant", "real photo")


def test_inpaint_observed_pixels_constant(tmp_path):
    img = np.full((16, 16, 3), 90, np.uint8)
    img[4:8, 4:8] = 255  # the only detail is inside the hole
    Image.fromarray(img).save(tmp_path / "x.png")
    m = np.full((16, 16), 255, np.uint8)
    m[4:8, 4:8] = 0
    Image.fromarray(m).save(tmp_path / "m.png")
    res, out = _run(tmp_path, tmp_path / "x.png", "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "constant", "observed pixel")


# --- sizes and factors ---------------------------------------------------------------------------------------

def test_observation_wrong_size_for_factor(tmp_path):
    p = tmp_path / "small.png"
    Image.fromarray(_rgb(4, 4)).save(p)
    res, out = _run(tmp_path, p)  # x8 of 16x16 needs 2x2
    _assert_refused(tmp_path, res, out, "is 4x4", "needs a 2x2 observation", "--factor 4", "--simulate")


def test_observation_not_square(tmp_path):
    p = tmp_path / "rect.png"
    Image.fromarray(_rgb(2, 3)).save(p)
    res, out = _run(tmp_path, p, "--factor", "8")
    _assert_refused(tmp_path, res, out, "is 2x3", "2x2")


def test_observation_wrong_size_for_inpainting(tmp_path):
    Image.fromarray(_rgb(20, 20)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "m.png")
    res, out = _run(tmp_path, tmp_path / "x.png", "--task", "inpaint", "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "is 20x20", "16x16")


def test_factor_does_not_divide(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(_rgb(5, 5)).save(p)
    res, out = _run(tmp_path, p, "--factor", "3")
    _assert_refused(tmp_path, res, out, "--factor 3 does not divide", "16", "use one of 2, 4, 8, 16")


def test_factor_one(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(_rgb(16, 16)).save(p)
    res, out = _run(tmp_path, p, "--factor", "1")
    _assert_refused(tmp_path, res, out, "--task none")


# --- masks ---------------------------------------------------------------------------------------------------

def _inpaint_input(tmp_path):
    Image.fromarray(_rgb(16, 16)).save(tmp_path / "x.png")
    return tmp_path / "x.png"


def test_mask_wrong_size(tmp_path):
    x = _inpaint_input(tmp_path)
    m = np.full((8, 8), 255, np.uint8)
    m[:4] = 0
    Image.fromarray(m).save(tmp_path / "m.png")
    res, out = _run(tmp_path, x, "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "mask", "is 8x8", "16x16", "white = observed")


def test_mask_without_missing_pixel(tmp_path):
    x = _inpaint_input(tmp_path)
    Image.fromarray(np.full((16, 16), 255, np.uint8)).save(tmp_path / "m.png")
    res, out = _run(tmp_path, x, "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "no missing pixel", "black")


def test_mask_without_observed_pixel(tmp_path):
    x = _inpaint_input(tmp_path)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "m.png")
    res, out = _run(tmp_path, x, "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "no observed pixel")


def test_mask_not_an_image(tmp_path):
    x = _inpaint_input(tmp_path)
    (tmp_path / "m.png").write_text("nope")
    res, out = _run(tmp_path, x, "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "mask", "not a recognised image format")


def test_inpaint_without_mask(tmp_path):
    x = _inpaint_input(tmp_path)
    res, out = _run(tmp_path, x, "--task", "inpaint")
    _assert_refused(tmp_path, res, out, "needs a mask", "--mask")


def test_mask_with_superres(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / "m.png")
    res, out = _run(tmp_path, tmp_path / "x.png", "--task", "superres", "--mask", tmp_path / "m.png")
    _assert_refused(tmp_path, res, out, "--task inpaint")


# --- generators ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,content", [
    ("random.pkl", b"\x80\x04" + bytes(range(200))),
    ("garbage.safetensors", b"definitely not safetensors"),
    ("image.pkl", None),  # a PNG renamed
    ("weights.pt", b"PK\x03\x04 broken zip"),
])
def test_generator_file_that_is_not_one(tmp_path, name, content):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    g = tmp_path / name
    if content is None:
        Image.fromarray(_rgb(8, 8)).save(g, format="PNG")
    else:
        g.write_bytes(content)
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", str(g), "--steps", "2", "-q",
                              "--out", str(out)])
    err = _assert_refused(tmp_path, res, out)
    assert name in err


def test_safetensors_without_generator_config(tmp_path):
    from safetensors.torch import save_file

    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    save_file({"a": torch.zeros(3)}, str(tmp_path / "g.safetensors"))
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", str(tmp_path / "g.safetensors"),
                              "-q", "--out", str(out)])
    _assert_refused(tmp_path, res, out, "g.safetensors")


def test_missing_generator_and_unknown_builtin(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", str(tmp_path / "G.pkl"),
                              "--out", str(out)])
    _assert_refused(tmp_path, res, out, "does not exist")
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", "builtin:nosuch",
                              "--out", str(out)])
    _assert_refused(tmp_path, res, out, "nosuch", "conv16")


# --- options -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,fragment", [
    (["--task", "magic"], "--task 'magic' is not one of: superres, inpaint, none"),  # then the other registered ones
    (["--kernel", "lanczos"], "--kernel 'lanczos' is not one of: box, bicubic, gauss"),
    (["--method", "magic"], "unknown inference method 'magic'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--workers", "2"], "--method map has no chains (drop --workers)"),
    (["--method", "nuts", "--workers", "0"], "--workers must be at least 1"),
])
def test_bad_options(tmp_path, args, fragment):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    res, out = _run(tmp_path, tmp_path / "x.png", *args)
    _assert_refused(tmp_path, res, out, fragment)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_not_available(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    res, out = _run(tmp_path, tmp_path / "x.png", "--device", "cuda")
    _assert_refused(tmp_path, res, out, "CUDA is not available", "--device cpu")


def test_out_is_a_file_or_nonempty(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "x.png")
    target = tmp_path / "taken"
    target.write_text("x")
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", GEN, "--out", str(target)])
    assert res.exit_code == 2 and "is a file" in res.stderr and target.read_text() == "x"
    d = tmp_path / "full"
    d.mkdir()
    (d / "mine.txt").write_text("keep")
    res = runner.invoke(app, ["reconstruct", str(tmp_path / "x.png"), "--generator", GEN, "--out", str(d),
                              "--overwrite"])
    assert res.exit_code == 2 and "holds no run.json" in res.stderr
    assert os.listdir(d) == ["mine.txt"]


@pytest.mark.parametrize("dataset", [False, True])
@pytest.mark.parametrize("where", ["under_a_file", "proc"])
def test_unwritable_out_is_refused_before_inference(tmp_path, monkeypatch, where, dataset):
    """Issue 26 (4): ``--out afile/sub`` and ``--out /proc/x`` were found only after inference (a
    traceback, the results lost); now one line, exit 2, and inference never starts."""
    from brgm_pyro.pipeline import core

    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(_rgb(16, 16)).save(src / "x.png")
    (tmp_path / "afile").write_text("x")
    out = tmp_path / "afile" / "sub" if where == "under_a_file" else Path("/proc/brgm-test-out")
    if where == "proc" and not Path("/proc").is_dir():
        pytest.skip("no /proc here")

    def no_inference(*a, **k):
        raise AssertionError("inference started before --out was checked")

    monkeypatch.setattr(core, "reconstruct", no_inference)
    res = runner.invoke(app, ["reconstruct", str(src if dataset else src / "x.png"), "--simulate", "--generator",
                              GEN, "--steps", "1", "-q", "--out", str(out)])
    assert res.exit_code == 2, (res.exit_code, res.output, res.stderr, res.exception)
    err = res.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "--out" in err, err
    assert (tmp_path / "afile").read_text() == "x"


def test_batch_inputs_of_different_sizes(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "a.png")
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "b.png")
    res, out = _run(tmp_path, tmp_path / "a.png", tmp_path / "b.png")
    _assert_refused(tmp_path, res, out, "b.png", "is 4x4")


# --- odd but valid modes are converted ----------------------------------------------------------------------------

def _save_mode(path, mode):
    rng = np.random.default_rng(1)
    if mode == "I;16":
        Image.fromarray((rng.random((2, 2)) * 65535).astype(np.uint16)).save(path)
    elif mode == "P":
        Image.fromarray(_rgb(2, 2)).convert("P").save(path)
    elif mode == "LA":
        a = np.stack([(rng.random((2, 2)) * 255).astype(np.uint8), np.full((2, 2), 255, np.uint8)], -1)
        Image.fromarray(a, "LA").save(path)
    elif mode == "RGBA":
        a = np.concatenate([_rgb(2, 2), np.full((2, 2, 1), 200, np.uint8)], -1)
        Image.fromarray(a, "RGBA").save(path)
    elif mode == "L":
        Image.fromarray((rng.random((2, 2)) * 255).astype(np.uint8)).save(path)
    elif mode == "JPEG":
        Image.fromarray(_rgb(2, 2)).save(path, format="JPEG")
    elif mode == "CMYK":
        Image.fromarray(_rgb(2, 2)).convert("CMYK").save(path, format="JPEG")


@pytest.mark.parametrize("mode,ext,note", [
    ("I;16", "png", "16-bit"), ("P", "png", "palette"), ("LA", "png", "gray repeated"),
    ("RGBA", "png", "alpha composited onto white"), ("L", "png", "gray repeated"), ("JPEG", "jpg", None),
    ("CMYK", "jpg", "CMYK converted"),
])
def test_odd_modes_are_converted(tmp_path, mode, ext, note):
    p = tmp_path / f"obs.{ext}"
    _save_mode(p, mode)
    res, out = _run(tmp_path, p, "--task", "superres")
    assert res.exit_code == 0, (res.output, res.stderr)
    run = json.loads((out / "run.json").read_text())
    conv = " ".join(run["inputs"][0]["conversions"])
    if note:
        assert note in conv, conv
    rec = np.asarray(Image.open(out / "reconstruction.png"))
    assert rec.shape == (16, 16, 3)
    obs = np.asarray(Image.open(out / "observed.png"))
    assert obs.shape == (2, 2, 3)
