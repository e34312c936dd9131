"""Bounded memory (brgm_pyro.memory): chunked and one-batch runs give the same numbers, the budget
sets the chunk, and the reliance map's prior variance is computed once per generator."""

from __future__ import annotations

import pyro
import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.inference import run_map, run_vi
from brgm_pyro.inference.engine import ELBOTerms
from brgm_pyro.inference.result import InferenceResult
from brgm_pyro.inference.sites import init_loc_fn, initial_values
from brgm_pyro.inference.vi import GUIDES
from brgm_pyro.memory import chunked_grad, footprint, items_per_chunk, parse_size
from brgm_pyro.models.brgm import build_model
from brgm_pyro.models.corruptions import Inpainting, SuperResolution
from brgm_pyro.models.generators import compute_latent_stats
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator
from brgm_pyro.reliance import prior_image_moments, prior_reliance

TINY = 1  # bytes: every batch through G goes one item at a time
HUGE = 2 ** 50


def _model(corruption=None, sigma_pixel=0.1, **kw):
    G = StyleGAN2Generator(z_dim=8, w_dim=8, img_resolution=16, img_channels=3, mapping_layers=2,
                           channel_base=64, channel_max=16, seed=0).eval()
    corruption = corruption or SuperResolution(2)
    return build_model(G, corruption, stats=compute_latent_stats(G, num_samples=500), sigma_pixel=sigma_pixel, **kw)


def _y(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = model.prior.draw_init(1, g).reshape(1, *model.generator.latent_shape)
    with torch.no_grad():
        return model.predict(w) + 0.05 * torch.randn(1, *model.obs_shape, generator=g)


def _elbo_grads(model, y, guide: str, chunk, particles=5):
    """Loss, terms and the gradient of every guide parameter after one ELBO evaluation."""
    pyro.set_rng_seed(3)
    with pyro.get_param_store().scope():
        q = GUIDES.build(guide, model, init_loc_fn(initial_values(model, y, None, None)), 0.3)
        q(y)
        elbo = ELBOTerms(model, q, num_particles=particles, entropy=True, hyperprior=(0.1, 0.95))
        elbo.chunk = chunk
        pyro.set_rng_seed(4)
        loss, vec = elbo(y)
        params = list(q.parameters())
        grads = torch.autograd.grad(loss, params)
    return loss.detach(), vec.detach(), [g.clone() for g in grads]


@pytest.mark.parametrize("guide", ["normal", "lowrank"])
@pytest.mark.parametrize("sigma", [0.1, "learn"])
def test_chunked_elbo_equals_one_batch(guide, sigma):
    model = _model(sigma_pixel=sigma)
    y = _y(model)
    loss1, vec1, g1 = _elbo_grads(model, y, guide, chunk=None)  # budget default: one batch at this size
    for chunk in (1, 2):
        loss2, vec2, g2 = _elbo_grads(model, y, guide, chunk=chunk)
        torch.testing.assert_close(loss2, loss1, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(vec2, vec1, rtol=1e-5, atol=1e-4)
        for a, b in zip(g2, g1):  # float32 sums in another order: 1e-5 of the largest entry
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_chunking_is_not_a_no_op():
    """The chunked path really runs G in chunks (counted): 5 particles as 2 + 2 + 1."""
    model = _model()
    y = _y(model)
    sizes = []
    hook = model.generator.register_forward_pre_hook(lambda m, a: sizes.append(a[0].reshape(-1, 8 * m.num_ws).shape[0]))
    try:
        _elbo_grads(model, y, "normal", chunk=2, particles=5)
    finally:
        hook.remove()
    assert sizes == [1, 2, 2, 1]  # the guide's set-up trace of the model, then the three chunks


def test_vi_and_map_runs_are_the_same_under_a_tiny_budget():
    model = _model(Inpainting(torch.ones(1, 16, 16, dtype=torch.bool).tril()))
    y = _y(model)
    out = {}
    for budget in (HUGE, TINY):
        model.max_memory = budget
        vi = run_vi(model, y, steps=3, num_particles=3, num_samples=4, seed=0, progress=False)
        mp = run_map(model, y, steps=3, seed=0, progress=False)
        out[budget] = (vi, mp)
    model.max_memory = None
    (vi1, mp1), (vi2, mp2) = out[HUGE], out[TINY]
    torch.testing.assert_close(vi2.latents["w"], vi1.latents["w"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(vi2.samples, vi1.samples, rtol=1e-5, atol=1e-6)  # draws rendered 1 vs 4 at once
    torch.testing.assert_close(vi2.history["loss"], vi1.history["loss"], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(mp2.latents["w"], mp1.latents["w"], rtol=0, atol=0)


def test_predictive_images_with_a_discrepancy_do_not_depend_on_the_chunk():
    model = _model(discrepancy=0.05)
    y = _y(model)
    draws = {"w": model.prior.draw_init(6, torch.Generator().manual_seed(2)).reshape(6, 1, *model.generator.latent_shape)}
    a = model.predictive_images(draws, y, seed=3, chunk=6)
    b = model.predictive_images(draws, y, seed=3, chunk=4)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_budget_sets_the_chunk():
    model = _model()
    saved, largest = footprint(model.generator)
    assert saved > largest > 0
    model.max_memory = TINY
    assert items_per_chunk(model, 8) == 1
    model.max_memory = HUGE
    assert items_per_chunk(model, 8) == 8
    model.max_memory = None


@pytest.mark.parametrize("text,want", [("8GB", 8 * 2 ** 30), ("12 GiB", 12 * 2 ** 30), ("500MB", 500 * 2 ** 20),
                                       ("1.5G", int(1.5 * 2 ** 30)), (1024, 1024)])
def test_parse_size(text, want):
    assert parse_size(text) == want


@pytest.mark.parametrize("bad", ["", "8 parsecs", "-1GB", "0", "GB"])
def test_parse_size_rejects_bad_input(bad):
    with pytest.raises(BRGMError):
        parse_size(bad)


def test_chunked_grad_sums():
    x = {"a": torch.arange(6.0).reshape(6, 1)}
    total, g = chunked_grad(lambda p: torch.stack([(p["a"] ** 2).sum(), p["a"].sum()]), x, 4)
    torch.testing.assert_close(total, torch.tensor([55.0, 15.0]))
    torch.testing.assert_close(g["a"], 2 * x["a"] + 1)


# --- the reliance map's per-generator cache --------------------------------------------------------

def _count_renders(model):
    n = [0]
    h = model.generator.register_forward_pre_hook(lambda m, a: n.__setitem__(0, n[0] + a[0].reshape(
        -1, m.num_ws, m.w_dim).shape[0]))
    return n, h


def test_prior_variance_is_cached_and_equal(tmp_path, monkeypatch):
    monkeypatch.setenv("BRGM_CACHE_DIR", str(tmp_path))
    model = _model()
    samples = torch.randn(5, 1, *model.generator.image_shape) * 0.1
    res = InferenceResult("test", {"w": model.init_latents(1)}, samples.mean(0), samples=samples)
    plain = prior_reliance(model, res, num_prior=64, seed=0, cache=False)
    n, h = _count_renders(model)
    try:
        first = prior_reliance(model, res, num_prior=64, seed=0, cache=True)
        assert n[0] == 64
        second = prior_reliance(model, res, num_prior=64, seed=0, cache=True)
        assert n[0] == 64  # the second run renders nothing
    finally:
        h.remove()
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    for r in (first, second):
        torch.testing.assert_close(r.prior_var, plain.prior_var, rtol=1e-6, atol=0)
        torch.testing.assert_close(r.prior_reliance, plain.prior_reliance, rtol=1e-6, atol=0)
    # another prior setting (kappa) or seed: another key, never the stale file
    other = _model(kappa=model.prior.config().get("kappa", 1.0) * 2 + 1)
    prior_image_moments(other, 64, 0, cache=True)
    prior_image_moments(model, 64, 1, cache=True)
    assert len(list(tmp_path.rglob("*.safetensors"))) == 3


def test_streamed_moments_equal_the_stacked_ones():
    model = _model()
    from brgm_pyro.reliance import sample_prior_latents

    w, wt = sample_prior_latents(model.prior, 50, 0)
    with torch.no_grad():
        x = model.render(w).double()
    mean, var, _ = prior_image_moments(model, 50, 0, chunk=7)
    if wt is None:
        want_m, want_v = x.mean(0), x.var(0)
    else:
        c = wt[:, None, None, None]
        want_m = (c * x).sum(0)
        want_v = (c * (x - want_m) ** 2).sum(0)
    # float32 renders at batch 7 and 50 differ in the last bits; the sums themselves are float64
    torch.testing.assert_close(mean, want_m, rtol=0, atol=1e-6)
    torch.testing.assert_close(var, want_v, rtol=1e-4, atol=1e-8)


def test_cli_max_memory_gives_the_same_files(tmp_path, monkeypatch):
    """`brgm reconstruct --max-memory 1KB` (every particle and draw alone through G) writes the same
    reconstruction and samples as the default budget; a bad size is one line, exit 2."""
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    monkeypatch.setenv("BRGM_CACHE_DIR", str(tmp_path / "cache"))
    Image.fromarray((np.random.default_rng(0).random((2, 2, 3)) * 255).astype(np.uint8)).save(tmp_path / "low.png")
    runner = CliRunner()
    outs = []
    for extra in ([], ["--max-memory", "1KB"]):
        out = tmp_path / f"res{len(outs)}"
        res = runner.invoke(app, ["reconstruct", "--generator", "builtin:conv16", "-q", str(tmp_path / "low.png"),
                                  "--method", "vi", "--steps", "3", "--num-samples", "3", "--out", str(out), *extra])
        assert res.exit_code == 0, res.output
        outs.append(out)
    for name in ["reconstruction.png", "samples/sample_000.png", "samples/sample_002.png"]:
        a, b = (np.asarray(Image.open(o / name)) for o in outs)
        assert np.array_equal(a, b), name
    assert json.loads((outs[1] / "run.json").read_text())["settings"]["max_memory"] == "1KB"
    bad = runner.invoke(app, ["reconstruct", "--generator", "builtin:conv16", str(tmp_path / "low.png"),
                              "--max-memory", "lots", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "memory size" in bad.output


def test_inla_under_a_tiny_budget_is_the_same():
    """INLA's Jacobian passes follow the budget (1 row per pass under 1 byte): same posterior."""
    from brgm_pyro.inference import run_inla
    from brgm_pyro.models.brgm import noise_latent

    model = _model(SuperResolution(4), sigma_pixel=noise_latent())
    model.likelihoods = model.likelihoods[:1]
    y = _y(model)
    out = []
    for budget in (HUGE, TINY):
        model.max_memory = budget
        r = run_inla(model, y, steps=3, num_samples=3, seed=0, progress=False, refine=0)
        out.append(r)
    model.max_memory = None
    torch.testing.assert_close(out[1].latents["w"], out[0].latents["w"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1].latents["sigma_pixel"], out[0].latents["sigma_pixel"], rtol=1e-5, atol=0)
    torch.testing.assert_close(out[1].draws["sigma_pixel"], out[0].draws["sigma_pixel"], rtol=1e-5, atol=0)
    for k in ("theta", "density"):  # the grid over sigma and its posterior density
        torch.testing.assert_close(torch.tensor(out[1].extra["grid"][k]), torch.tensor(out[0].extra["grid"][k]),
                                   rtol=1e-5, atol=0)
    # (w's draws are equal in distribution only: eigen_draw's eigenvectors of the unobserved, equal
    # eigenvalues are any basis of that space, so float noise in J rotates them; so it was before)


def test_mcmc_workers_follow_the_budget():
    from brgm_pyro.inference.mcmc.runner import _workers_in_budget

    model = _model()
    model.max_memory = TINY
    assert _workers_in_budget(model, 4, 1, progress=False) == 1
    model.max_memory = HUGE
    assert _workers_in_budget(model, 4, 1, progress=False) == 4
    assert _workers_in_budget(model, 1, 1, progress=False) == 1


def test_time_estimate_line_only_for_runs_over_a_minute():
    from brgm_pyro.inference.engine import estimate_line
    from brgm_pyro.inference.vi import _writing_estimate

    assert estimate_line("MAP", 30, 1.0) is None  # 30 s
    line = estimate_line("VI (normal)", 300, 64.0, lambda t: _writing_estimate(t, 4, 16))
    assert line.startswith("VI (normal): about 5.4 h (300 steps x 64 s, then ~85 s rendering 16 draws")
    assert "reliance map" in line
