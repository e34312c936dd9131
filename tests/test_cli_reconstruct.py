"""`brgm reconstruct` end to end on a tiny generator: every output file, its contents and numbers."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro import metrics
from brgm_pyro.cli import app

torch.set_num_threads(1)
GEN = "builtin:conv16"  # 16x16 RGB, random weights: fast, and enough to check the plumbing
runner = CliRunner()


def _rgb(h, w, seed=0):
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _face_like(h, w):
    """A smooth clean image (so centre-crop/resize and metrics have structure to work with)."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    return (img * 255).astype(np.uint8)


def _invoke(*args):
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", *map(str, args)])
    assert res.exit_code == 0, (res.exit_code, res.output, res.stderr, res.exception)
    return res


def _png(path):
    return np.asarray(Image.open(path)).astype(np.float64) / 255.0


def test_superres_map_default_mode(tmp_path):
    obs = _rgb(2, 2)
    Image.fromarray(obs).save(tmp_path / "low.png")
    out = tmp_path / "res"
    res = _invoke(tmp_path / "low.png", "--steps", "8", "--seed", "3", "--out", out)
    assert "results written to" in res.output
    assert sorted(os.listdir(out)) == ["observed.png", "reconstruction.png", "run.json"]  # MAP: no samples/std
    np.testing.assert_array_equal(np.asarray(Image.open(out / "observed.png")), obs)
    rec = np.asarray(Image.open(out / "reconstruction.png"))
    assert rec.shape == (16, 16, 3) and rec.std() > 0
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "reconstruct" and run["seed"] == 3
    s = run["settings"]
    assert (s["task"], s["factor"], s["kernel"], s["method"], s["steps"], s["generator"]) == \
        ("superres", 8, "box", "map", 8, GEN)
    assert run["inference"]["steps_done"] == 8 and run["inference"]["stopped"] is None
    assert run["inference"]["loss_terms"]["loss"]["last"] <= run["inference"]["loss_terms"]["loss"]["first"]
    import platform

    import numpy
    import pyro

    # the running interpreter's own versions (not package metadata, which run.json reads)
    assert (run["versions"]["torch"], run["versions"]["pyro"], run["versions"]["numpy"], run["versions"]["python"]) \
        == (torch.__version__, pyro.__version__, numpy.__version__, platform.python_version())
    assert {"python", "torch", "pyro", "numpy", "pillow", "brgm_pyro"} <= set(run["versions"])
    assert {"load_generator_s", "inference_s", "write_s", "total_s"} <= set(run["timings_s"])
    assert run["inputs"][0]["sha256"] and run["inputs"][0]["height"] == 2
    assert run["model"]["corruption"] == {"name": "superres", "factor": 8, "kernel": "box", "gauss_sigma": None}


def test_map_is_reproducible_and_seeded(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    _invoke(tmp_path / "low.png", "--steps", "5", "--out", tmp_path / "a")
    _invoke(tmp_path / "low.png", "--steps", "5", "--out", tmp_path / "b")
    assert (tmp_path / "a" / "reconstruction.png").read_bytes() == (tmp_path / "b" / "reconstruction.png").read_bytes()


def test_vi_simulate_superres_outputs_and_metrics(tmp_path):
    Image.fromarray(_face_like(40, 56)).save(tmp_path / "clean.png")
    out = tmp_path / "res"
    res = _invoke(tmp_path / "clean.png", "--simulate", "--method", "vi", "--steps", "6", "--num-samples", "5",
                  "--kernel", "bicubic", "--out", out)
    assert "PSNR" in res.output
    files = set(os.listdir(out))
    assert {"reconstruction.png", "observed.png", "truth.png", "std.png", "samples", "run.json",
            "metrics.json"} <= files
    samples = sorted(os.listdir(out / "samples"))
    assert samples == [f"sample_{i:03d}.png" for i in range(5)]
    truth = _png(out / "truth.png")
    assert truth.shape == (16, 16, 3)
    # the observation is the bicubic x8 reduction of the (cropped, resized) truth
    obs = _png(out / "observed.png")
    assert obs.shape == (2, 2, 3)
    # the reconstruction is the posterior mean of the samples (up to PNG rounding)
    S = np.stack([_png(out / "samples" / f) for f in samples])
    rec = _png(out / "reconstruction.png")
    assert np.abs(S.mean(0) - rec).max() <= 2.5 / 255
    # std.png: the per-pixel std over samples, scaled so that its maximum is white
    run = json.loads((out / "run.json").read_text())
    info = run["images"]["clean"]
    std = S.std(0, ddof=1).mean(-1)
    std_png = _png(out / "std.png")
    assert std_png.max() == 1.0
    np.testing.assert_allclose(std_png * info["std_png_white_is"], std, atol=0.02 * info["std_png_white_is"] + 2e-3)
    # metrics.json agrees with metrics recomputed from the written PNGs (PNG rounding tolerance)
    m = json.loads((out / "metrics.json").read_text())
    r = m["images"]["clean"]["reconstruction"]
    assert r["psnr"] == pytest.approx(metrics.psnr(rec, truth), abs=0.1)
    assert r["ssim"] == pytest.approx(metrics.ssim(rec, truth), abs=0.01)
    assert r["mae"] == pytest.approx(metrics.mae(rec, truth), abs=0.003)
    assert r["rmse"] == pytest.approx(metrics.rmse(rec, truth), abs=0.003)
    assert m["mean"]["reconstruction"]["psnr"] == pytest.approx(r["psnr"])
    assert "baseline_bicubic" in m["images"]["clean"] and "samples_mean" in m["images"]["clean"]
    assert run["settings"]["simulate"] is True and run["inference"]["num_samples"] == 5
    assert any("centre-cropped 40x56" in c for c in run["inputs"][0]["conversions"])


def test_inpaint_with_mask_composite_keeps_observed_pixels(tmp_path):
    img = _rgb(16, 16, seed=5)
    Image.fromarray(img).save(tmp_path / "holey.png")
    m = np.full((16, 16), 255, np.uint8)
    m[3:9, 5:12] = 0
    Image.fromarray(m).save(tmp_path / "mask.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "holey.png", "--mask", tmp_path / "mask.png", "--steps", "5", "--out", out)
    assert {"composite.png", "reconstruction.png", "observed.png", "run.json"} <= set(os.listdir(out))
    comp = np.asarray(Image.open(out / "composite.png"))
    rec = np.asarray(Image.open(out / "reconstruction.png"))
    obs = np.asarray(Image.open(out / "observed.png"))
    keep = m == 255
    np.testing.assert_array_equal(comp[keep], img[keep])  # observed pixels untouched
    np.testing.assert_array_equal(comp[~keep], rec[~keep])  # missing ones from the reconstruction
    np.testing.assert_array_equal(obs[keep], img[keep])
    assert np.all(np.abs(obs[~keep].astype(int) - 128) <= 1)  # missing shown mid-grey
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["task"] == "inpaint"  # inferred from --mask
    assert run["masks"][0]["missing_fraction"] == pytest.approx(42 / 256)


def test_inpaint_from_transparency(tmp_path):
    rgba = np.concatenate([_rgb(16, 16), np.full((16, 16, 1), 255, np.uint8)], -1)
    rgba[6:10, 6:10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cut.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "cut.png", "--steps", "3", "--out", out)
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["task"] == "inpaint"
    assert run["masks"][0]["source"] == "transparent pixels of the input"
    assert run["masks"][0]["missing_fraction"] == pytest.approx(16 / 256)


def test_simulate_inpaint_default_mask_and_task_none(tmp_path):
    Image.fromarray(_face_like(32, 32)).save(tmp_path / "clean.png")
    out = tmp_path / "inp"
    _invoke(tmp_path / "clean.png", "--simulate", "--task", "inpaint", "--steps", "3", "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["images"]["clean"]) == {"reconstruction", "composite"}
    # the composite equals the truth on observed pixels, so it scores at least as well
    assert m["images"]["clean"]["composite"]["mae"] <= m["images"]["clean"]["reconstruction"]["mae"]
    out2 = tmp_path / "none"
    _invoke(tmp_path / "clean.png", "--simulate", "--task", "none", "--steps", "3", "--out", out2)
    assert _png(out2 / "observed.png").shape == (16, 16, 3)
    # inversion uses its own optimiser default (constant lr 0.2); other tasks the MAP default
    run_none = json.loads((out2 / "run.json").read_text())["settings"]
    run_inp = json.loads((out / "run.json").read_text())["settings"]
    assert run_none["optimiser"] == {"lr": 0.2, "lr_decay": 1.0, "lr_rampdown": 0.0}
    from brgm_pyro.inference.map import DEFAULT_MAP_LR, DEFAULT_MAP_LR_DECAY

    assert run_inp["optimiser"] == {"lr": DEFAULT_MAP_LR, "lr_decay": DEFAULT_MAP_LR_DECAY, "lr_rampdown": 0.0}


def test_batch_of_inputs_gets_one_folder_each(tmp_path):
    for i, name in enumerate(["a", "b", "c"]):
        Image.fromarray(_rgb(2, 2, seed=i)).save(tmp_path / f"{name}.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png", "--method", "vi", "--steps", "3",
            "--num-samples", "3", "--out", out)
    assert {"a", "b", "c", "run.json"} <= set(os.listdir(out))
    for name in "abc":
        assert {"reconstruction.png", "observed.png", "std.png", "samples"} <= set(os.listdir(out / name))
        assert len(os.listdir(out / name / "samples")) == 3
    run = json.loads((out / "run.json").read_text())
    assert len(run["inputs"]) == 3 and run["layout"].startswith("one sub-directory")
    # different observations give different reconstructions
    ra, rb = _png(out / "a" / "reconstruction.png"), _png(out / "b" / "reconstruction.png")
    assert np.abs(ra - rb).max() > 0


def test_overwrite_replaces_an_earlier_result(tmp_path):
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "low.png", "--steps", "2", "--out", out)
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", str(tmp_path / "low.png"), "--out", str(out)])
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    _invoke(tmp_path / "low.png", "--steps", "3", "--out", out, "--overwrite")
    assert json.loads((out / "run.json").read_text())["settings"]["steps"] == 3
    assert sorted(p for p in os.listdir(tmp_path) if p.startswith(".")) == []


def test_ctrl_c_during_inference_writes_what_exists(tmp_path, monkeypatch):
    """Ctrl-C inside the optimiser: it stops, the partial result is written, exit status 130."""
    import brgm_pyro.cli.reconstruct as rec
    from brgm_pyro.inference import run_map
    from brgm_pyro.registry import Registry

    def interrupting_map(model, y, **kw):
        def cb(step, terms):
            if step == 2:
                raise KeyboardInterrupt
        return run_map(model, y, callback=cb, **kw)

    reg = Registry("inference method")
    reg.register("map")(interrupting_map)
    monkeypatch.setattr(rec, "methods_registry", lambda: reg)
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", str(tmp_path / "low.png"), "--steps", "50",
                              "--out", str(out)])
    assert res.exit_code == 130, (res.output, res.stderr)
    assert "interrupted" in res.stderr and "partial results written" in res.stderr
    run = json.loads((out / "run.json").read_text())
    assert "interrupted" in run["inference"]["stopped"] and run["inference"]["steps_done"] == 3  # steps 0-2
    assert (out / "reconstruction.png").is_file()


def test_ctrl_c_before_inference_leaves_nothing(tmp_path, monkeypatch):
    import brgm_pyro.cli.reconstruct as rec

    def boom(spec, device):
        raise KeyboardInterrupt

    monkeypatch.setattr(rec, "load_generator_checked", boom)
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", str(tmp_path / "low.png"), "--out", str(out)])
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert not out.exists()


def test_generator_from_safetensors_file(tmp_path):
    from brgm_pyro.models.generators import ConvGenerator
    from brgm_pyro.models.generators.loading import save_generator

    G = ConvGenerator(img_resolution=8, img_channels=1, w_dim=8, z_dim=8, channels=8, seed=1)
    save_generator(G, tmp_path / "g.safetensors")
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "low.png")  # RGB input, gray generator: converted
    out = tmp_path / "res"
    _invoke(tmp_path / "low.png", "--generator", tmp_path / "g.safetensors", "--factor", "2", "--steps", "3",
            "--out", out)
    rec = np.asarray(Image.open(out / "reconstruction.png"))
    assert rec.shape == (8, 8)
    run = json.loads((out / "run.json").read_text())
    assert run["generator"]["channels"] == 1
    assert any("luma" in c for c in run["inputs"][0]["conversions"])


def test_vi_writes_posterior_netcdf(tmp_path):
    arviz_io = pytest.importorskip("brgm_pyro.inference.arviz_io")
    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "low.png", "--method", "vi", "--steps", "3", "--num-samples", "4", "--out", out)
    idata = arviz_io.read_inference_data(out / "posterior.nc")
    w = idata.posterior["w"]
    assert w.shape[:3] == (1, 4, 1)  # one chain, 4 draws, one image
    assert json.loads((out / "run.json").read_text())["warnings"] == []


def _narrow_vgg16(path):
    """A randomly initialised VGG16 with the torchvision layout but few channels (LPIPS plumbing only)."""
    from brgm_pyro.models.perceptual.vgg import TORCHVISION_CONV_IDX

    g = torch.Generator().manual_seed(0)
    sd, cin = {}, 3
    for k, c in zip(TORCHVISION_CONV_IDX, (4, 4, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16)):
        sd[f"features.{k}.weight"] = torch.randn(c, cin, 3, 3, generator=g) * 0.3
        sd[f"features.{k}.bias"] = torch.randn(c, generator=g) * 0.1
        cin = c
    torch.save(sd, path)
    return path


def test_simulate_with_vgg16_adds_lpips(tmp_path):
    vgg = _narrow_vgg16(tmp_path / "vgg16.pth")
    Image.fromarray(_face_like(16, 16)).save(tmp_path / "clean.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "clean.png", "--simulate", "--task", "inpaint", "--steps", "3", "--vgg16", vgg, "--out", out)
    m = json.loads((out / "metrics.json").read_text())["images"]["clean"]
    assert m["reconstruction"]["lpips"] > 0 and m["composite"]["lpips"] >= 0
    again = metrics.lpips(_png(out / "reconstruction.png"), _png(out / "truth.png"), str(vgg))
    assert again == pytest.approx(m["reconstruction"]["lpips"], rel=0.05, abs=1e-3)
    assert metrics.lpips(_png(out / "truth.png"), _png(out / "truth.png"), str(vgg)) == pytest.approx(0, abs=1e-9)
    # --vgg16 needs a reference image
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, str(tmp_path / "clean.png"), "--task", "none",
                              "--vgg16", str(vgg), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "--simulate" in res.stderr


def test_batch_with_one_mask_per_input(tmp_path):
    masks = []
    for i in range(2):
        Image.fromarray(_rgb(16, 16, seed=i)).save(tmp_path / f"img{i}.png")
        m = np.full((16, 16), 255, np.uint8)
        m[:, 8 * i:8 * i + 8] = 0  # left half missing in the first, right half in the second
        Image.fromarray(m).save(tmp_path / f"m{i}.png")
        masks.append(m)
    out = tmp_path / "res"
    _invoke(tmp_path / "img0.png", tmp_path / "img1.png", "--mask", tmp_path / "m0.png", "--mask",
            tmp_path / "m1.png", "--steps", "3", "--out", out)
    for i in range(2):
        obs = np.asarray(Image.open(out / f"img{i}" / "observed.png")).astype(int)
        missing = masks[i] == 0
        assert np.all(np.abs(obs[missing] - 128) <= 1)
        np.testing.assert_array_equal(obs[~missing], _rgb(16, 16, seed=i)[~missing])


def test_simulate_mask_drawn_on_the_clean_image_is_cropped_and_resized(tmp_path):
    Image.fromarray(_face_like(32, 48)).save(tmp_path / "clean.png")
    m = np.full((32, 48), 255, np.uint8)
    m[8:24, 16:32] = 0  # a square hole in the centre of the 32x32 crop
    Image.fromarray(m).save(tmp_path / "m.png")
    out = tmp_path / "res"
    _invoke(tmp_path / "clean.png", "--simulate", "--mask", tmp_path / "m.png", "--steps", "2", "--out", out)
    run = json.loads((out / "run.json").read_text())
    assert run["masks"][0]["missing_fraction"] == pytest.approx(0.25, abs=0.03)
    obs = np.asarray(Image.open(out / "observed.png")).astype(int)
    assert np.all(np.abs(obs[6:10, 6:10] - 128) <= 1)  # centre of the 16x16 image is missing


def _brgm_process(*args, sigint_default: bool = False, **kw):
    import subprocess
    import sys

    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    code = "from brgm_pyro.cli import main; main()"
    if sigint_default:
        code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); " + code
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **kw)


def test_real_process_bad_input_is_one_line(tmp_path):
    (tmp_path / "x.png").write_text("not an image")
    p = _brgm_process("reconstruct", tmp_path / "x.png", "--generator", GEN, "--out", tmp_path / "o")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_real_sigint_during_inference(tmp_path):
    """A real Ctrl-C (SIGINT) while the optimiser runs: exit 130, results of the steps done are written."""
    import signal
    import time

    Image.fromarray(_rgb(2, 2)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    # a shell that runs this suite in the background (`pytest &`) hands its children SIGINT ignored,
    # and Python then installs no KeyboardInterrupt handler: restore the terminal's default first
    p = _brgm_process("reconstruct", tmp_path / "low.png", "--generator", GEN, "--steps", "1000000", "--out", out,
                      "--threads", "1", sigint_default=True)
    seen = ""
    deadline = time.time() + 120
    import os
    import select

    fd = p.stderr.fileno()
    while "MAP" not in seen and time.time() < deadline:  # the progress bar has started
        # never block on a silent process: wait at most 1 s for output, then check the deadline
        if select.select([fd], [], [], 1.0)[0]:
            chunk = os.read(fd, 1024)
            if not chunk:
                break
            seen += chunk.decode(errors="replace")
    assert "MAP" in seen, f"no progress bar on stderr within 120 s: {seen[-500:]!r}"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    assert "partial results written" in err and "Traceback" not in err
    run = json.loads((out / "run.json").read_text())
    assert "interrupted" in run["inference"]["stopped"] and run["inference"]["steps_done"] > 0
    assert np.asarray(Image.open(out / "reconstruction.png")).shape == (16, 16, 3)


def test_ctrl_c_inside_mcmc_exits_130_and_writes_nothing(tmp_path, monkeypatch):
    """An MCMC chain keeps no partial draws, so Ctrl-C in NUTS/MALA is an interruption (130), not a bad
    input (2), and leaves no half-written output folder."""
    from pyro.infer import MCMC

    def boom(self, *a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(MCMC, "run", boom)
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "low.png")
    out = tmp_path / "res"
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", "--method", "mala", "--steps", "2",
                              "--num-samples", "2", "--factor", "4", str(tmp_path / "low.png"), "--out", str(out)])
    assert res.exit_code == 130, (res.output, res.stderr)
    assert "interrupted" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
