"""The library pipeline and the top-level API: the README's example as written, the CLI's defaults,
tasks read off the corruption registry, the one bicubic baseline."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import brgm_pyro as brgm
from brgm_pyro.errors import BRGMError

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _smooth(h, w):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(6 * x), 0.5 + 0.4 * np.cos(5 * y), 0.5 + 0.3 * np.sin(4 * (x + y))], -1)
    return (img * 255).astype(np.uint8)


def test_import_is_light_and_names_resolve():
    code = ("import sys, brgm_pyro as b; assert 'torch' not in sys.modules; "
            "assert callable(b.load_generator) and callable(b.reconstruct) and callable(b.observe); "
            "assert 'superres' in b.tasks() and 'map' in b.METHODS.names(); print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    with pytest.raises(AttributeError):
        brgm.no_such_name  # noqa: B018


@pytest.mark.slow
def test_readme_library_example_runs_as_written(tmp_path, monkeypatch):
    text = (REPO / "README.md").read_text()
    block = re.search(r"## As a library\s+```python\n(.*?)```", text, re.S).group(1)
    from brgm_pyro.data.faces import face_image_uint8

    Image.fromarray(face_image_uint8(0, "test")).save(tmp_path / "face.png")  # a held-out test face
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    out = tmp_path / "out"
    assert {"reconstruction.png", "observed.png", "truth.png", "std.png", "samples", "run.json", "metrics.json",
            "posterior.nc"} <= {p.name for p in out.iterdir()}
    m = json.loads((out / "metrics.json").read_text())
    # the reconstruction beats the bicubic baseline on this face (x8 from 8x8)
    assert m["mean"]["reconstruction"]["psnr"] > m["mean"]["baseline_bicubic"]["psnr"]
    run = json.loads((out / "run.json").read_text())
    assert [lk["class"] for lk in run["model"]["likelihoods"]] == ["PixelGaussian"]  # VI: no perceptual term


def test_library_model_is_the_cli_model():
    """brgm.build_model adds the generator's own perceptual network and cached stats, as the CLI does."""
    G = brgm.load_generator("builtin:faces64")
    corr = brgm.make_corruption("superres", factor=8, kernel="box")
    model = brgm.build_model(G, corr)
    assert [type(lk).__name__ for lk in model.likelihoods] == ["PixelGaussian", "PerceptualGaussian"]
    assert model.likelihoods[1].phi is brgm.default_phi(G)  # loaded once, reused
    assert brgm.latent_stats(G) is brgm.latent_stats(G)
    bare = brgm.build_model(G, corr, phi=None)
    assert [type(lk).__name__ for lk in bare.likelihoods] == ["PixelGaussian"]
    for method, percept in (("map", True), ("vi", False), ("nuts", False)):  # brgm.default_percept
        names = [type(lk).__name__ for lk in brgm.build_model(G, corr, method=method).likelihoods]
        assert ("PerceptualGaussian" in names) is percept, method
    with pytest.raises(BRGMError, match="'default'"):
        brgm.build_model(G, corr, phi="vgg")


def test_observe_every_builtin_task_and_refusals(tmp_path):
    G = brgm.load_generator("builtin:conv16")
    Image.fromarray(_smooth(24, 20)).save(tmp_path / "clean.png")
    shapes = {}
    for task, opts in (("superres", {"factor": 4}), ("inpaint", {}), ("none", {})):
        obs = brgm.observe([tmp_path / "clean.png"], G, task, simulate=True, **opts)
        shapes[task] = tuple(obs.y.shape)
        assert obs.truth.shape == (1, 16, 16, 3) and obs.task.name == task
    assert shapes == {"superres": (1, 3, 4, 4), "inpaint": (1, 3, 16, 16), "none": (1, 3, 16, 16)}
    with pytest.raises(BRGMError, match="no option --mask"):
        brgm.observe([tmp_path / "clean.png"], G, "superres", simulate=True, mask=[tmp_path / "clean.png"])
    with pytest.raises(BRGMError, match="is 24x20 but x8"):
        brgm.observe([tmp_path / "clean.png"], G, "superres")  # not simulated: the file is the observation
    with pytest.raises(BRGMError, match="is not one of: superres, inpaint, none"):
        brgm.observe([tmp_path / "clean.png"], G, "magic")


def test_a_registered_corruption_is_a_task(tmp_path, monkeypatch):
    """A corruption registered with a plain constructor becomes a task, its options read off the signature."""
    from brgm_pyro.models.corruptions import CORRUPTIONS, Corruption

    class Darken(Corruption):
        """Darken: the observation is ``gain`` times the image.

        Args:
            gain: the factor applied to every pixel.
        """

        name = "darken"

        def __init__(self, gain: float = 0.5, weights=None) -> None:
            super().__init__()
            self.gain = gain

        def apply(self, x):
            return self.gain * x

    monkeypatch.setitem(CORRUPTIONS._items, "darken", Darken)
    task = brgm.get_task("darken")
    assert [(o.name, o.type, o.default) for o in task.options] == [("gain", float, 0.5)]  # weights: not CLI-able
    assert task.options[0].help == "the factor applied to every pixel."
    G = brgm.load_generator("builtin:conv16")
    Image.fromarray(_smooth(16, 16)).save(tmp_path / "clean.png")
    obs = brgm.observe([tmp_path / "clean.png"], G, "darken", simulate=True, gain=0.25)
    x = brgm.io.to_model(obs.truth[0])
    torch.testing.assert_close(obs.y[0], 0.25 * x)
    res = brgm.reconstruct(brgm.build_model(G, obs), obs, "map", steps=2)
    assert res.image.shape == (1, 3, 16, 16)


def test_bicubic_baseline_is_pillows_resize():
    from brgm_pyro.pipeline.baselines import bicubic_upsample

    small = _smooth(8, 8)
    y = brgm.io.to_model(small.astype(np.float32) / 255.0)[None]
    up = bicubic_upsample(y, 64)[0]
    ref = np.asarray(Image.fromarray(small).resize((64, 64), Image.Resampling.BICUBIC)).astype(np.float64) / 255
    # float pixels vs Pillow's 8-bit path: equal up to 8-bit rounding of the intermediate rows
    assert np.abs(brgm.io.from_model(up) - ref).max() <= 2.0 / 255


def test_score_and_write_results_agree(tmp_path):
    G = brgm.load_generator("builtin:conv16")
    Image.fromarray(_smooth(16, 16)).save(tmp_path / "clean.png")
    obs = brgm.observe([tmp_path / "clean.png"], G, "superres", factor=4, simulate=True)
    model = brgm.build_model(G, obs)
    res = brgm.reconstruct(model, obs, "vi", steps=3, num_samples=3)
    written = brgm.write_results(tmp_path / "out", obs, res, model)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["images"] == json.loads(json.dumps(brgm.score(obs, res)["images"]))
    assert written["dir"] == (tmp_path / "out").absolute() and "baseline_bicubic" in m["images"]["clean"]


def test_a_methods_warnings_reach_run_json(tmp_path):
    """What a method says about its own accuracy (``extra['warnings']``, e.g. INLA on a blur width
    of a non-linear G) is written to run.json and returned for the console."""
    G = brgm.load_generator("builtin:conv16")
    Image.fromarray(_smooth(16, 16)).save(tmp_path / "clean.png")
    obs = brgm.observe([tmp_path / "clean.png"], G, "superres", factor=4, simulate=True)
    model = brgm.build_model(G, obs)
    res = brgm.reconstruct(model, obs, "map", steps=2)
    res.extra["warnings"] = ["this method is biased here"]
    written = brgm.write_results(tmp_path / "out", obs, res, model)
    assert "this method is biased here" in written["warnings"]
    assert "this method is biased here" in json.loads((tmp_path / "out" / "run.json").read_text())["warnings"]
