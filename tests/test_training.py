"""Training commands on tiny settings: the loss goes down, and a killed run resumes exactly."""

from __future__ import annotations

import torch

from brgm_pyro.training.train_generator import train_generator
from brgm_pyro.training.train_percept import train_percept

TINY = dict(w_dim=16, mapping_layers=2, channel_base=128, channel_max=16)


def _run(out, **kw):
    args = dict(steps=16, batch_size=4, lr=5e-3, seed=0, log_every=4, ckpt_every=4, eval_every=8,
                arch_overrides=TINY, stats_samples=200, quiet=True)
    args.update(kw)
    return train_generator(out, **args)


def test_generator_training_decreases_loss_and_writes_outputs(tmp_path):
    s = _run(tmp_path / "a")
    assert s["test_eval"][0] == 16
    import json

    logged = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert logged["steps_done"] == 16
    ck = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    hist = ck["hist"]
    assert hist[-1][1] < hist[0][1]  # running L1 went down
    evals = ck["evals"]
    assert evals[-1][1] > evals[0][1] - 0.5 and evals[-1][2] < 1.0
    for f in ("generator.safetensors", "generator.safetensors.latent_stats.safetensors", "samples.png",
              "training_summary.json"):
        assert (tmp_path / "a" / f).is_file(), f
    from brgm_pyro.models.generators.loading import load_generator

    G = load_generator(tmp_path / "a" / "generator.safetensors")
    assert G.z_dim == 40 and G.img_resolution == 64 and G.w_dim == 16


def test_generator_resume_is_exact(tmp_path):
    _run(tmp_path / "full", steps=8)
    # a run that stops after its first step (as if killed), then resumes
    s = _run(tmp_path / "cut", steps=8, max_minutes=0.0)
    assert s["stopped"] and s["steps_done"] == 1
    s = _run(tmp_path / "cut", steps=8, resume=True)
    assert s["steps_done"] == 8 and s["stopped"] is None
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_adversarial_finetune_from_init_resumes_exactly(tmp_path):
    """--init starts from another run's weights and continues its data stream; --adv-weight adds
    the discriminator (its state is checkpointed, so a killed adversarial run resumes exactly)."""
    _run(tmp_path / "base", steps=4)
    init = tmp_path / "base" / "checkpoint.pt"
    full = _run(tmp_path / "full", steps=6, init=init, adv_weight=0.1)
    assert full["adv_weight"] == 0.1 and full["init"]["step"] == 4
    assert full["train_images"] == "train split images 16..39"  # batch 4: steps 4..9 of the stream
    s = _run(tmp_path / "cut", steps=6, init=init, adv_weight=0.1, max_minutes=0.0)
    assert s["steps_done"] == 1
    s = _run(tmp_path / "cut", steps=6, init=init, adv_weight=0.1, resume=True)
    assert s["steps_done"] == 6
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert a["data_start"] == 4 and "disc" in a
    for part in ("model", "disc"):
        for k in a[part]:
            torch.testing.assert_close(a[part][k], b[part][k], rtol=1e-5, atol=1e-6)
    # the weights moved away from the init, and the adversarial term changed the result
    base = torch.load(init, weights_only=True)["model"]
    plain = _run(tmp_path / "plain", steps=6, init=init)
    c = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    assert plain["adv_weight"] == 0.0
    k = "synthesis_network.b64.torgb.weight"  # the last layer: moved by every loss term
    assert not torch.equal(a["model"][k], base[k]) and not torch.equal(a["model"][k], c[k])
    # resuming with other settings is refused with a one-line error
    import pytest

    from brgm_pyro.errors import BRGMError

    with pytest.raises(BRGMError, match="adv-weight"):
        _run(tmp_path / "cut", steps=6, init=init, resume=True)


def test_discriminator_step_learns_to_separate():
    """A few D steps on drawings vs flat grey images: D scores the drawings higher."""
    from brgm_pyro.data.faces import face_batch
    from brgm_pyro.training.train_generator import FaceDiscriminator, discriminator_step

    torch.manual_seed(0)
    D = FaceDiscriminator()
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99))
    _, x = face_batch(range(8), "train")
    fake = torch.zeros_like(x)
    for step in range(20):
        discriminator_step(D, opt, x, fake, step)
    with torch.no_grad():
        assert D(x).min() > D(fake).max()


def test_percept_training_runs_and_resumes(tmp_path):
    s = train_percept(tmp_path, steps=6, batch_size=8, num_train=64, lr=2e-3, log_every=2, ckpt_every=3,
                      quiet=True)
    assert (tmp_path / "percept.safetensors").is_file()
    assert s["test_mse_256"] < 5
    s2 = train_percept(tmp_path, steps=8, batch_size=8, num_train=64, lr=2e-3, log_every=2, ckpt_every=3,
                       resume=True, quiet=True)
    assert s2["steps"] == 8


def test_builtin_faces64_loads_with_its_phi():
    import pytest

    from brgm_pyro.models.generators import builtin_faces64  # registers builtin:faces64
    from brgm_pyro.models.generators.loading import load_generator

    if not builtin_faces64.FACES64_WEIGHTS.is_file():
        pytest.skip("bundled faces64 weights not built yet")
    G = load_generator("builtin:faces64")
    assert (G.img_resolution, G.img_channels, G.z_dim) == (64, 3, 40)
    assert builtin_faces64.FACES64_WEIGHTS.stat().st_size < 20 * 2 ** 20
    phi = G.default_phi()
    z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = G(G.mapping(z)[:, None].expand(-1, G.num_ws, -1))
        assert x.shape == (2, 3, 64, 64) and phi(x).shape[0] == 2


def test_builtin_faces64_reproduces_test_faces():
    """The shipped weights are the trained ones: through mapping and synthesis, the codes of 16
    test faces give images at more than 20 dB PSNR to the drawings (the shipped weights: 20.7 dB
    on these 16; an untrained generator: 7.6 dB), and the latent statistics beside the weights
    describe this generator's W (mean and spread of mapped draws)."""
    import pytest

    from brgm_pyro.models.generators import builtin_faces64
    from brgm_pyro.models.generators.loading import latent_stats_for, load_generator
    from brgm_pyro.training.train_generator import evaluate_codes

    if not builtin_faces64.FACES64_WEIGHTS.is_file():
        pytest.skip("bundled faces64 weights not built yet")
    G = load_generator("builtin:faces64")
    assert evaluate_codes(G, 16)["psnr_db"] > 20.0
    stats = latent_stats_for(G)
    with torch.no_grad():
        w = G.mapping(torch.randn(2000, G.z_dim, generator=torch.Generator().manual_seed(1)))
    mu, sd = stats.mu, stats.sigma  # (d,) each
    assert torch.allclose(w.mean(0), mu, atol=4.5 * float(sd.max()) / 2000 ** 0.5)
    assert torch.allclose(w.std(0), sd, rtol=0.15)


def test_builtin_faces64_draws_eyes():
    """The shipped generator draws the facial features its codes ask for: the bundled encoder reads
    the eye entries of the code back from its images far better than from the faceless
    regression-only weights (64 test faces, R^2 of the eye entries: shipped -0.68; the 44,000-step
    stage-1 weights, whose images have no eyes, -1.87; drawings 0.66). R^2 stays below 0 because
    the drawn eyes are often a pixel off or of the wrong iris colour; see the model card."""
    import pytest

    from brgm_pyro.models.generators import builtin_faces64
    from brgm_pyro.models.generators.loading import load_generator
    from brgm_pyro.training.evaluate import code_recovery

    if not builtin_faces64.FACES64_WEIGHTS.is_file():
        pytest.skip("bundled faces64 weights not built yet")
    r = code_recovery(load_generator("builtin:faces64"), n=64)
    assert r["eyes"]["generator"] > -1.2
    # builtin:faces64-l1 ships the stage-1 weights for comparison: faceless, sharper PSNR on the codes
    G1 = load_generator("builtin:faces64-l1")
    assert code_recovery(G1, n=64)["eyes"]["generator"] < -1.5
    assert G1.source_path != load_generator("builtin:faces64").source_path


def test_cli_train_commands(tmp_path):
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    r = CliRunner().invoke(app, ["train-generator", "--help"])
    assert r.exit_code == 0 and "--resume" in r.output
    r = CliRunner().invoke(app, ["train-percept", "--help"])
    assert r.exit_code == 0 and "--num-train" in r.output
    if not torch.cuda.is_available():
        r = CliRunner().invoke(app, ["train-generator", "--out", str(tmp_path), "--device", "cuda"])
        assert r.exit_code == 2
    r = CliRunner().invoke(app, ["train-generator", "--out", str(tmp_path), "--steps", "0"])
    assert r.exit_code == 2
    r = CliRunner().invoke(app, ["train-generator", "--out", str(tmp_path), "--adv-weight", "-1"])
    assert r.exit_code == 2 and "--adv-weight" in r.output
    r = CliRunner().invoke(app, ["train-generator", "--out", str(tmp_path), "--init", str(tmp_path / "no.pt")])
    assert r.exit_code == 2 and "--init" in r.output


def test_code_recovery_separates_drawings_from_an_untrained_generator():
    """The encoder reads the eyes' code back from drawings (R^2 > 0.5) but not from an untrained
    generator's images; the groups cover every entry of the code once."""
    from brgm_pyro.training.evaluate import CODE_GROUPS, code_recovery
    from brgm_pyro.training.train_generator import make_faces64_generator

    idx = sorted(i for g in CODE_GROUPS.values() for i in g)
    assert idx == list(range(40))
    G = make_faces64_generator(seed=0, **TINY).eval()
    r = code_recovery(G, n=64)
    assert r["eyes"]["drawings"] > 0.5 and r["all"]["drawings"] > 0.3
    assert r["eyes"]["generator"] < 0.2 and r["all"]["generator"] < r["all"]["drawings"] - 0.2
