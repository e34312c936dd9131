"""Perceptual networks: the faces encoder phi, and VGG16 loaders (TorchScript and torchvision
layouts) on small files the tests create. Loading never runs code from the file."""

from __future__ import annotations

import pickle
import zipfile

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.perceptual import (EncoderFeatures, FacesEncoder, load_encoder, load_vgg16,
                                         load_vgg16_perceptual, lpips_distance, save_encoder)
from brgm_pyro.models.perceptual.vgg import TORCHVISION_CONV_IDX

CH = (4, 4, 8, 8, 8, 8, 8, 16, 16, 16, 16, 16, 16)  # a narrow VGG16, same topology


class TinyNvidiaVGG(nn.Module):
    """Stands in for NVIDIA's vgg16.pt: same call signature, 0..255 input, LPIPS features."""

    def __init__(self) -> None:
        super().__init__()
        cin = 3
        names = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                 "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]
        self.layers = nn.Sequential()
        for n, c in zip(names, CH):
            self.layers.add_module(n, nn.Conv2d(cin, c, 3, padding=1))
            cin = c
        for k, c in enumerate([CH[1], CH[3], CH[6], CH[9], CH[12]]):
            self.register_parameter(f"lpips{k}", nn.Parameter(torch.rand(c)))
        self.shift = [-0.030, -0.088, -0.188]
        self.scale = [0.458, 0.448, 0.450]

    def _norm(self, f: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        f = f * torch.rsqrt(f.pow(2).sum(1, keepdim=True) + 1e-10)
        f = f * w.sqrt().view(1, -1, 1, 1) / float(f.shape[2] * f.shape[3]) ** 0.5
        return f.flatten(1)

    def forward(self, img: torch.Tensor, resize_images: bool = True, return_lpips: bool = False):
        x = img / 127.5 - 1.0
        sh = torch.tensor(self.shift).view(1, 3, 1, 1)
        sc = torch.tensor(self.scale).view(1, 3, 1, 1)
        x = (x - sh) / sc
        taps: list[torch.Tensor] = []
        i = 0
        for conv in self.layers:
            x = F.relu(conv(x))
            if i == 1 or i == 3 or i == 6 or i == 9 or i == 12:
                taps.append(x)
            if i == 1 or i == 3 or i == 6 or i == 9:
                x = F.max_pool2d(x, 2)
            i += 1
        ws = [self.lpips0, self.lpips1, self.lpips2, self.lpips3, self.lpips4]
        return torch.cat([self._norm(taps[k], ws[k]) for k in range(5)], 1)


def _images(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


def test_torchscript_vgg_matches_executed_original(tmp_path):
    torch.manual_seed(0)
    ref = TinyNvidiaVGG().eval()
    path = tmp_path / "vgg16.pt"
    torch.jit.script(ref).save(str(path))
    vgg = load_vgg16(path)  # reads tensors only
    assert vgg.channels == CH and vgg.has_lpips_weights
    x = _images()
    img255 = (x + 1) * 127.5
    ours = vgg(img255, resize_images=False, return_lpips=True)
    with torch.no_grad():
        theirs = torch.jit.load(str(path))(img255, resize_images=False, return_lpips=True)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    phi = load_vgg16_perceptual(path, min_size=32)
    torch.testing.assert_close(phi(x), theirs, rtol=1e-4, atol=1e-5)
    d = lpips_distance(x, x.flip(0), phi)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.allclose(lpips_distance(x, x, phi), torch.zeros(2))


class _Boom:
    def __reduce__(self):
        return (print, ("executed!",))


def test_torchscript_loader_refuses_code(tmp_path):
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", pickle.dumps({"x": _Boom()}, protocol=2))
        zf.writestr("evil/code/__torch__.py", "")
    with pytest.raises(BRGMError, match="refusing"):
        load_vgg16(path)


def test_torchvision_state_dict_with_lpips(tmp_path, capsys):
    torch.manual_seed(1)
    sd, cin = {}, 3
    for k, c in zip(TORCHVISION_CONV_IDX, CH):
        sd[f"features.{k}.weight"] = torch.randn(c, cin, 3, 3) * 0.3
        sd[f"features.{k}.bias"] = torch.randn(c) * 0.1
        cin = c
    sd["classifier.0.weight"] = torch.randn(5, 7)
    path = tmp_path / "vgg16_tv.pth"
    torch.save(sd, path)
    lins = {f"lin{k}.model.1.weight": torch.rand(1, CH[t], 1, 1) for k, t in enumerate((1, 3, 6, 9, 12))}
    lpath = tmp_path / "lins.pth"
    torch.save(lins, lpath)
    vgg = load_vgg16(path, lpips_path=lpath)
    assert vgg.has_lpips_weights
    torch.testing.assert_close(vgg.lpips2, lins["lin2.model.1.weight"].flatten())
    # reference computation with plain torch ops
    x = _images(seed=3)
    h = (x - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor(
        [0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    feats = []
    for i, k in enumerate(TORCHVISION_CONV_IDX):
        h = F.relu(F.conv2d(h, sd[f"features.{k}.weight"], sd[f"features.{k}.bias"], padding=1))
        if i in (1, 3, 6, 9, 12):
            t = (1, 3, 6, 9, 12).index(i)
            f = h / h.pow(2).sum(1, keepdim=True).add(1e-10).sqrt()
            w = lins[f"lin{t}.model.1.weight"].view(1, -1, 1, 1).sqrt()
            feats.append((f * w).flatten(1) / (h.shape[2] * h.shape[3]) ** 0.5)
        if i in (1, 3, 6, 9):
            h = F.max_pool2d(h, 2)
    torch.testing.assert_close(vgg.lpips_features(x), torch.cat(feats, 1), rtol=1e-4, atol=1e-5)
    # without LPIPS weights: unit channel weights
    assert not load_vgg16(path).has_lpips_weights
    # a pickle that is not weights-only is refused
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": _Boom()}, bad)
    with pytest.raises(BRGMError):
        load_vgg16(bad)
    assert "executed!" not in capsys.readouterr().out


def test_vgg_errors(tmp_path):
    with pytest.raises(BRGMError, match="not found"):
        load_vgg16(tmp_path / "missing.pt")
    p = tmp_path / "few.pth"
    torch.save({"conv.weight": torch.randn(4, 3, 3, 3), "conv.bias": torch.randn(4)}, p)
    with pytest.raises(BRGMError, match="13"):
        load_vgg16(p)


def test_faces_encoder_phi_shapes_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    enc = FacesEncoder(channels=(8, 8, 16, 16), out_dim=40)
    phi = EncoderFeatures(enc)
    D = 8 * 64 * 64 + 8 * 32 * 32 + 16 * 16 * 16 + 16 * 8 * 8
    for size in (8, 16, 64, 128):
        x = _images(3, size)
        out = phi(x)
        assert out.shape == (3, D)
    assert not any(p.requires_grad for p in phi.parameters())
    x = _images(2, 64).requires_grad_(True)
    phi(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # each layer contributes at most 4 to the squared distance -> total in [0, 16]
    d = phi.distance(_images(2, 64, 1), _images(2, 64, 2))
    assert torch.all(d >= 0) and torch.all(d <= 16)
    p = tmp_path / "enc.safetensors"
    save_encoder(enc, p, metadata={"note": "test"})
    enc2 = load_encoder(p)
    x = _images(2, 64)
    torch.testing.assert_close(enc2(x), enc(x))
    with pytest.raises(BRGMError, match="at least 8"):
        phi(_images(1, 4))


def test_builtin_faces_percept_loads():
    from brgm_pyro.models.perceptual import FACES64_PERCEPT_PATH, load_faces64_percept

    if not FACES64_PERCEPT_PATH.is_file():
        pytest.skip("bundled perceptual network not built yet")
    phi = load_faces64_percept()
    assert not phi.training and not any(p.requires_grad for p in phi.parameters())
    from brgm_pyro.data.faces import face_batch

    u, x = face_batch(range(32), "test")
    with torch.no_grad():
        pred = phi.encoder(x)
    # the encoder recovers the drawing code better than predicting 0 (MSE 1; measured 0.54) ...
    assert float(F.mse_loss(pred, u)) < 0.7
    # ... and the clearly visible parameters well: face height, skin tone, hair colour, background
    for j in (1, 7, 9, 33, 34):
        assert float(torch.corrcoef(torch.stack([pred[:, j], u[:, j]]))[0, 1]) > 0.85, j
    # phi on an 8x8 (x8 downsampled) observation works
    assert phi(F.avg_pool2d(x, 8)).shape[0] == 32


def test_faces_encoder_enlarges_small_images_by_pixel_replication():
    """An 8x8 observation reaches the network as 8x8 blocks (area resize), as in the reference
    BRGM code; larger images are shrunk bilinearly with anti-aliasing; bilinear stays available."""
    torch.manual_seed(0)
    enc = FacesEncoder(channels=(4, 4, 8, 8), out_dim=5)
    x8 = _images(2, 8)
    up = enc.prepare(x8)
    assert up.shape == (2, 3, 64, 64)
    assert torch.equal(up, x8.repeat_interleave(8, -2).repeat_interleave(8, -1))
    assert torch.equal(enc.prepare(_images(1, 64)), _images(1, 64))  # the working size is untouched
    x128 = _images(1, 128)
    ref = F.interpolate(x128, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(enc.prepare(x128), ref)
    phi = EncoderFeatures(enc)
    torch.testing.assert_close(phi(x8), phi(up))  # phi sees exactly the replicated image
    enc.upsample = "bilinear"
    bil = F.interpolate(x8, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(enc.prepare(x8), bil)
    assert not torch.allclose(bil, up)
    enc.upsample = "lanczos"
    with pytest.raises(BRGMError, match="upsample must be one of"):
        enc.prepare(x8)


def test_builtin_faces_default_sigma_is_the_noise_phi_of_an_observation_carries():
    """default_sigma ~ the per-feature std that pixel noise of std 0.05 causes in phi of an 8x8
    observation (measured 0.0015 on 32 test faces); the former 0.05 was ~30x that."""
    from brgm_pyro.models.perceptual import FACES64_PERCEPT_PATH, load_faces64_percept

    if not FACES64_PERCEPT_PATH.is_file():
        pytest.skip("bundled perceptual network not built yet")
    from brgm_pyro.data.faces import face_batch

    phi = load_faces64_percept()
    _, x = face_batch(range(8), "test")
    y = F.avg_pool2d(x, 8)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        f = phi(y)
        d2 = (phi(y + 0.05 * torch.randn(y.shape, generator=g)) - f).pow(2).sum(1).mean()
    per_feature = float((d2 / f.shape[1]).sqrt())
    assert 0.5 * phi.default_sigma < per_feature < 2 * phi.default_sigma, per_feature
