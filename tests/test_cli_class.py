"""`brgm reconstruct --class K` with a conditional StyleGAN2 (tiny, random weights)."""

import json

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.cli import app
from brgm_pyro.models.generators.loading import save_generator
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

torch.set_num_threads(1)
runner = CliRunner()


def test_reconstruct_with_class(tmp_path):
    G = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, mapping_layers=2,
                           channel_base=64, channel_max=8, c_dim=3, seed=0)
    gen = save_generator(G, tmp_path / "cond.safetensors")
    img = (np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "low.png")
    base = ["reconstruct", "--generator", str(gen), "-q", str(tmp_path / "low.png"), "--factor", "2", "--steps", "3"]
    res = runner.invoke(app, base + ["--class", "2", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, (res.output, res.exception)
    assert json.loads((tmp_path / "out" / "run.json").read_text())
    assert (tmp_path / "cond.safetensors.class2.latent_stats.safetensors").is_file()
    for extra, msg in ([[], "choose one with --class K"], [["--class", "3"], "out of range"]):
        res = runner.invoke(app, base + extra + ["--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and msg in res.output + (res.stderr or ""), res.output
    res = runner.invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "low.png"),
                              "--factor", "2", "--steps", "2", "--class", "0", "--out", str(tmp_path / "u")])
    assert res.exit_code == 2 and "unconditional" in res.output + (res.stderr or "")
