"""Fashion-MNIST reader, the shipped subset, the adversarial trainer and its classifiers.

Every test runs without the Debian package: idx files are written here (the real files'
format: big-endian magic 0x0803 / 0x0801 and sizes, gzip), and the shipped subset is in the package.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from brgm_pyro.data import fashion_mnist as fm
from brgm_pyro.errors import BRGMError


def _idx(path: Path, arr: np.ndarray, magic: int) -> None:
    head = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_root(tmp_path, monkeypatch) -> Path:
    """A folder with four small idx files; SIZES patched to their sizes (train 60, test 10)."""
    monkeypatch.setattr(fm, "SIZES", {"train": 60, "test": 10})
    monkeypatch.setattr(fm, "VAL_START", 55)
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 10)):
        img_f, lab_f = fm.FILES[split]
        imgs = rng.integers(0, 256, (n, 28, 28))
        imgs[:, 0, 0] = np.arange(n)  # each image knows its index
        _idx(tmp_path / img_f, imgs, 0x0803)
        _idx(tmp_path / lab_f, np.arange(n) % 10, 0x0801)
    return tmp_path


def test_reader_splits_and_padding(fake_root):
    tr, ltr = fm.load_split("train", fake_root)
    va, lva = fm.load_split("val", fake_root)
    te, lte = fm.load_split("test", fake_root)
    assert tr.shape == (55, 32, 32) and va.shape == (5, 32, 32) and te.shape == (10, 32, 32)
    assert tr.dtype == np.uint8
    # padding, not resizing: a 2-pixel zero border and the original pixels unchanged inside
    assert (tr[:, :2] == 0).all() and (tr[:, -2:] == 0).all() and (tr[:, :, :2] == 0).all()
    assert list(tr[:, 2, 2]) == list(range(55)) and list(va[:, 2, 2]) == list(range(55, 60))
    assert list(ltr[:12]) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1] and list(lva) == [5, 6, 7, 8, 9]
    assert list(te[:, 2, 2]) == list(range(10))


def test_reader_refuses_bad_files(fake_root):
    img_f, lab_f = fm.FILES["test"]
    _idx(fake_root / img_f, np.zeros((10, 28, 28)), 0x0801)  # a labels magic on an images file
    with pytest.raises(BRGMError, match="magic"):
        fm.load_split("test", fake_root)
    _idx(fake_root / img_f, np.zeros((9, 28, 28)), 0x0803)  # one image short
    with pytest.raises(BRGMError, match="expected 10"):
        fm.load_split("test", fake_root)
    raw = gzip.decompress((fake_root / lab_f).read_bytes())[:-3]  # truncated
    (fake_root / lab_f).write_bytes(gzip.compress(raw))
    with pytest.raises(BRGMError, match="truncated"):
        fm._read_idx(fake_root / lab_f, 0x0801, 1, 10)


def test_missing_package_names_apt(tmp_path):
    with pytest.raises(BRGMError, match="apt-get install dataset-fashion-mnist"):
        fm.data_dir(tmp_path)
    with pytest.raises(BRGMError, match="unknown Fashion-MNIST split"):
        fm.load_split("validation", tmp_path)


def test_shipped_subset():
    x, y, idx = fm.shipped_subset("test")
    assert x.shape == (1000, 32, 32) and x.dtype == np.uint8 and list(idx) == list(range(1000))
    assert set(np.unique(y)) == set(range(10))  # every class among the report images
    assert (x[:, :2] == 0).all()
    v, vy, vidx = fm.shipped_subset("val")
    assert v.shape == (200, 32, 32) and vidx[0] == fm.VAL_START
    # load_images reads split-relative indices from the subset without the package
    a, la = fm.load_images("test", [3, 0])
    assert (a[0] == x[3]).all() and la[1] == y[0]
    b, _ = fm.load_images("val", [1])
    assert (b[0] == v[1]).all()
    t = fm.to_tensor(x[:2])
    assert t.shape == (2, 1, 32, 32) and float(t.min()) >= -1 and float(t.max()) <= 1


def test_shipped_subset_matches_package():
    try:
        root = fm.data_dir()
    except BRGMError:
        pytest.skip("dataset-fashion-mnist is not installed")
    x, y, _ = fm.shipped_subset("test")
    te, lte = fm.load_split("test", root)
    assert (te[:1000] == x).all() and (lte[:1000] == y).all()


def test_discriminator_and_minibatch_std():
    from brgm_pyro.training.train_gan import ResDiscriminator

    torch.manual_seed(0)
    D = ResDiscriminator(1, 32, channels=(8, 16, 16), mbstd_group=4)
    x = torch.randn(8, 1, 32, 32)
    assert D(x).shape == (8,)
    # the minibatch-std feature: identical images within a group give zero std
    feat = D._mbstd(torch.ones(4, 3, 4, 4))
    assert feat.shape == (4, 4, 4, 4) and float(feat[:, 3].abs().max()) < 1e-3
    with pytest.raises(BRGMError):
        ResDiscriminator(1, 64, channels=(8, 16, 16))


def test_ema_update_half_life():
    from brgm_pyro.training.train_gan import ema_update

    a, b = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        a.weight.fill_(0.0)
        b.weight.fill_(1.0)
    # after many images the half-life is ema_kimg * 1000 images: one batch of 1000 halves the gap
    ema_update(a, b, step=10**6, batch_size=1000, ema_kimg=1.0)
    assert float(a.weight.detach()) == pytest.approx(0.5)


def test_train_gan_resume_equals_uninterrupted(fake_root, tmp_path):
    from brgm_pyro.training.train_gan import train_gan

    arch = dict(channel_base=64, channel_max=16, w_dim=16, z_dim=8)
    kw = dict(batch_size=4, threads=1, root=str(fake_root), arch_overrides=arch, quiet=True, log_every=1)
    train_gan(tmp_path / "a", steps=4, ckpt_every=2, **kw)
    # a run that stops after 2 steps and is resumed sees the same minibatches and noise
    st = train_gan(tmp_path / "b", steps=4, ckpt_every=2, max_minutes=0.0, **kw)
    assert st["stopped"] and st["steps_done"] == 1
    train_gan(tmp_path / "b", steps=4, ckpt_every=2, resume=True, **kw)
    from brgm_pyro.training.common import load_checkpoint

    ca, cb = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 4
    for k in ca["G_ema"]:
        assert torch.allclose(ca["G_ema"][k], cb["G_ema"][k], atol=1e-6), k
    assert (tmp_path / "a" / "generator.safetensors").is_file()
    from brgm_pyro.models.generators.loading import load_generator

    G = load_generator(tmp_path / "a" / "generator.safetensors")
    assert tuple(G.image_shape) == (1, 32, 32)


def test_classifier_degrade_keeps_shape_and_range():
    from brgm_pyro.training.train_classifier import degrade, make_classifier

    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 32, 32) * 2 - 1
    y = degrade(x, g)
    assert y.shape == x.shape and not torch.equal(x, y)
    net = make_classifier("percept")
    assert net(x).shape == (16, 10)


def test_builtin_fashion32_loads_offline():
    from brgm_pyro.models.generators.builtin_fashion32 import FASHION32_WEIGHTS, load_fashion32_network
    from brgm_pyro.pipeline import core

    if not FASHION32_WEIGHTS.is_file():
        pytest.fail("builtin:fashion32 weights are not shipped")
    G = core.load_generator("builtin:fashion32")
    assert tuple(G.image_shape) == (1, 32, 32) and G.img_channels == 1
    phi = core.default_phi(G)
    assert phi is not None and phi.default_sigma == pytest.approx(0.002)
    x = torch.zeros(2, 1, 32, 32)
    assert phi(x).shape[0] == 2
    judge = load_fashion32_network("judge")
    assert judge.default_sigma != 0 and judge(x).shape[0] == 2
    with torch.no_grad():
        img = G.synthesis(G.mapping(torch.randn(2, G.z_dim)).unsqueeze(1).expand(-1, G.num_ws, -1))
    assert img.shape == (2, 1, 32, 32) and torch.isfinite(img).all()


def test_demo_part_on_fashion32():
    """The demo's real-photograph part: x4 SR (8x8 observed), in-painting, deblurring on test images."""
    from brgm_pyro.cli import demo

    ctx = dict(methods=demo.methods_registry(), map_steps=2, vi_steps=2, num_samples=3, seed=0, quiet=True, faces=2)
    part = demo._demo_part(demo.REAL_GENERATOR, "cpu", 2, ctx, {})
    assert part["ids"] == ["fashion_test_0", "fashion_test_1"] and part["factor"] == 4 and part["C"] == 1
    assert set(part["scores"]) == {"superres", "inpaint", "deblur"}  # no colorization of a gray generator
    assert set(part["scores"]["superres"]["map"]["faces"]) == {"fashion_test_0", "fashion_test_1"}
    assert part["results"]["superres"]["y"].shape[-1] == 8
