"""The reliance map of a run costs no generator pass once the generator's prior variance is cached
(the issue's bound: at most 16), counted on `brgm reconstruct` itself with a small StyleGAN2 file."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from typer.testing import CliRunner

from brgm_pyro.models.generators.loading import save_generator
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator, SynthesisNetwork

torch.set_num_threads(1)


def _run_counting(args: list, monkeypatch) -> tuple[int, int]:
    """(images through G's synthesis network while the reliance map is made, in the whole command)."""
    from brgm_pyro import reliance
    from brgm_pyro.cli import app

    counts, inside = {"reliance": 0, "all": 0}, [False]

    def hook(module, inputs):
        if isinstance(module, SynthesisNetwork):
            counts["all"] += inputs[0].shape[0]
            counts["reliance"] += inputs[0].shape[0] if inside[0] else 0

    real = reliance.prior_reliance

    def counted(*a, **kw):
        inside[0] = True
        try:
            return real(*a, **kw)
        finally:
            inside[0] = False

    monkeypatch.setattr(reliance, "prior_reliance", counted)
    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        res = CliRunner().invoke(app, args)
    finally:
        handle.remove()
    assert res.exit_code == 0, (res.output, res.exception)
    return counts["reliance"], counts["all"]


def test_reliance_map_costs_no_pass_once_cached(tmp_path, monkeypatch):
    G = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, mapping_layers=2,
                           channel_base=64, channel_max=16, seed=0).eval()
    gpath = tmp_path / "g.safetensors"
    save_generator(G, gpath)
    Image.new("RGB", (16, 16), (120, 60, 200)).save(tmp_path / "clean.png")
    base = ["reconstruct", str(tmp_path / "clean.png"), "--simulate", "--generator", str(gpath), "--method", "vi",
            "--steps", "2", "--num-samples", "4", "--reliance-draws", "64", "--no-percept", "-q"]
    first, _ = _run_counting([*base, "--out", str(tmp_path / "a")], monkeypatch)
    assert first == 64  # the first run of this generator renders the prior draws, once
    assert list(tmp_path.glob("g.safetensors.prior_pixel_moments.*.safetensors"))  # beside the weights
    second, total = _run_counting([*base, "--out", str(tmp_path / "b")], monkeypatch)
    assert second == 0 <= 16 and total > 0  # the map itself renders nothing; the run does its own passes
    a, b = (np.asarray(Image.open(tmp_path / d / "reliance.png")) for d in ("a", "b"))
    assert np.array_equal(a, b)
