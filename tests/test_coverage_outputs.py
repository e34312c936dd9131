"""Interval coverage and the 90 % interval-width image where users see them: `brgm reconstruct --simulate`
(metrics.json, console, interval90.png, posterior.nc) on the tiny test generator."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.calibration import coverage_report
from brgm_pyro.cli import app
from brgm_pyro.pipeline.coverage import image_coverage, missing_pixels, pooled_coverage

torch.set_num_threads(1)
GEN = "builtin:conv16"
runner = CliRunner()
LEVELS = ("0.5", "0.9", "0.95")


def _clean(path, h=16, w=16):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)


def _mask(path, size):
    m = np.full((size, size), 255, np.uint8)
    m[size // 4:size // 2, size // 4:3 * size // 4] = 0
    Image.fromarray(m).save(path)
    return m > 0


def _invoke(*args):
    res = runner.invoke(app, ["reconstruct", "--generator", GEN, "-q", "--reliance-draws", "0", *map(str, args)])
    assert res.exit_code == 0, (res.exit_code, res.output, res.stderr, res.exception)
    return res


def _check_report(rep, regions):
    assert set(rep) >= set(regions)
    for region in regions:
        assert set(rep[region]) == set(LEVELS)
        for lev in LEVELS:
            assert 0.0 <= rep[region][lev]["coverage"] <= 1.0 and rep[region][lev]["width"] >= 0.0
        widths = [rep[region][lev]["width"] for lev in LEVELS]
        assert widths == sorted(widths)  # wider intervals at higher levels


def test_simulate_inpaint_vi_writes_coverage_and_interval90(tmp_path):
    _clean(tmp_path / "clean.png")
    observed = _mask(tmp_path / "mask.png", 16)
    out = tmp_path / "res"
    res = _invoke(tmp_path / "clean.png", "--simulate", "--task", "inpaint", "--mask", tmp_path / "mask.png",
                  "--method", "vi", "--steps", "3", "--num-samples", "6", "--out", out)
    m = json.loads((out / "metrics.json").read_text())
    cov = m["coverage"]
    assert cov["num_draws"] == 6 and cov["regions"] == ["all", "observed", "missing"] and "note" not in cov
    assert cov["counted"] == {"all": 768, "observed": 3 * int(observed.sum()), "missing": 3 * int((~observed).sum())}
    _check_report(cov["all_images"], ("all", "observed", "missing"))
    _check_report(m["images"]["clean"]["coverage"], ("all", "observed", "missing"))
    assert "coverage" not in m["mean"]
    line = [ln for ln in res.output.splitlines() if "interval coverage" in ln]
    c = cov["all_images"]
    assert line == [f"90% interval coverage {c['all']['0.9']['coverage']:.2f} (observed "
                    f"{c['observed']['0.9']['coverage']:.2f}, missing {c['missing']['0.9']['coverage']:.2f}), "
                    f"mean width {c['all']['0.9']['width']:.3f} (an exact sampler with 6 draws: "
                    f"~{0.9 * 5 / 7:.2f})"]
    assert abs(cov["exact_sampler_reference"]["0.9"] - 0.9 * 5 / 7) < 1e-12
    # interval90.png beside std.png: the 90 % width of the written samples, max = white
    run = json.loads((out / "run.json").read_text())
    info = run["images"]["clean"]
    assert "interval90.png" in info["files"] and (out / "std.png").is_file()
    samples = np.stack([np.asarray(Image.open(p)) / 255.0 for p in sorted((out / "samples").iterdir())])
    width = (np.quantile(samples, 0.95, axis=0) - np.quantile(samples, 0.05, axis=0)).mean(-1)
    png = np.asarray(Image.open(out / "interval90.png")) / 255.0
    assert png.shape == (16, 16) and png.max() == 1.0
    top = info["interval90_png_white_is"]
    np.testing.assert_allclose(png * top, width, atol=0.02 * top + 3e-3)
    # posterior.nc carries the width in [-1, 1] units, as posterior.x
    from brgm_pyro import azcompat
    from brgm_pyro.inference.arviz_io import read_inference_data

    idata = read_inference_data(out / "posterior.nc")
    w_nc = azcompat.group(idata, "intervals")["interval90_width"].values
    assert w_nc.shape == (1, 3, 16, 16)
    np.testing.assert_allclose(w_nc.mean(1)[0] / 2, width, atol=0.02 * top + 3e-3)


def test_map_writes_no_coverage(tmp_path):
    _clean(tmp_path / "clean.png")
    out = tmp_path / "res"
    res = _invoke(tmp_path / "clean.png", "--simulate", "--steps", "2", "--out", out)
    assert "coverage" not in json.loads((out / "metrics.json").read_text())
    assert "interval coverage" not in res.output and not (out / "interval90.png").exists()


def test_mask_off_the_image_grid_reports_all_only(tmp_path):
    _clean(tmp_path / "clean.png")
    _mask(tmp_path / "m8.png", 8)  # in-painting after x2 down-sampling: the mask is on the 8x8 grid
    out = tmp_path / "res"
    res = _invoke(tmp_path / "clean.png", "--simulate", "--task", "compose", "--parts",
                  f"superres:factor=2+inpaint:mask={tmp_path / 'm8.png'}", "--method", "vi", "--steps", "2",
                  "--num-samples", "3", "--out", out)
    cov = json.loads((out / "metrics.json").read_text())["coverage"]
    assert cov["regions"] == ["all"] and "8x8" in cov["note"] and "16x16" in cov["note"]
    _check_report(cov["all_images"], ("all",))
    assert "all pixels only" in res.output


def test_pooled_coverage_is_the_batch_report():
    g = torch.Generator().manual_seed(0)
    samples = torch.randn(50, 3, 3, 8, 8, generator=g).clamp(-1, 1) * 0.5
    truth = ((torch.randn(3, 3, 8, 8, generator=g) * 0.5).clamp(-1, 1) + 1) / 2  # (B, C, H, W) in [0, 1]

    class Masked:  # one mask per image, on the image grid, (B, 1, H, W)
        mask = torch.rand(3, 1, 8, 8, generator=g) > 0.3

    per = [image_coverage(samples, truth.permute(0, 2, 3, 1).numpy(), Masked, b) for b in range(3)]
    pooled = pooled_coverage(per, 50)["all_images"]
    missing, note = missing_pixels(Masked, (3, 8, 8), 3)
    assert note is None and missing.shape == (3, 1, 8, 8)
    direct = coverage_report(((samples.double() + 1) / 2).clamp(0, 1), truth.double(), missing)
    for region in ("all", "observed", "missing"):
        for lev in LEVELS:
            assert pooled[region][lev]["coverage"] == pytest.approx(direct[region][lev]["coverage"])
            assert pooled[region][lev]["width"] == pytest.approx(direct[region][lev]["width"])
    assert image_coverage(samples[:1], truth.permute(0, 2, 3, 1).numpy(), Masked, 0) is None  # one draw: no intervals
