"""load_generator / save_generator / latent_stats_for: formats, round trips and one-line errors."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators import ConvGenerator, LinearGenerator
from brgm_pyro.models.generators.loading import (
    BUILTIN_GENERATORS,
    infer_stylegan2_config,
    latent_stats_for,
    load_generator,
    save_generator,
)
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

torch.set_num_threads(1)


def sg2(**kw):
    cfg = dict(z_dim=8, w_dim=8, img_resolution=16, img_channels=1, mapping_layers=2,
               channel_base=64, channel_max=8, conv_clamp=256.0, seed=3)
    cfg.update(kw)
    G = StyleGAN2Generator(**cfg)
    with torch.no_grad():  # non-trivial noise strengths and w_avg, so that they must round-trip
        for m in G.modules():
            if hasattr(m, "noise_strength"):
                m.noise_strength.fill_(0.3)
        G.w_avg.normal_(generator=torch.Generator().manual_seed(1))
    return G


def ws_for(G, n=2):
    return torch.randn(n, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(0))


def assert_same_function(A, B):
    w = ws_for(A)
    assert torch.equal(A(w), B(w))
    assert torch.equal(A.mapping(torch.ones(2, A.z_dim)), B.mapping(torch.ones(2, B.z_dim)))


def one_line(e):
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 400, msg
    return msg


# -- round trips --------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [sg2, lambda: sg2(img_channels=3, img_resolution=8),
                                  lambda: ConvGenerator(img_resolution=8, channels=4, seed=5),
                                  lambda: LinearGenerator(seed=2)])
def test_safetensors_roundtrip(tmp_path, make):
    G = make()
    path = save_generator(G, tmp_path / "g.safetensors")
    assert os.listdir(tmp_path) == ["g.safetensors"]  # no temporary file left behind
    H = load_generator(path)
    assert type(H) is type(G) and H.config() == G.config()
    assert H.source_path == str(path)
    assert not H.training and not any(p.requires_grad for p in H.parameters())
    if isinstance(G, StyleGAN2Generator):
        assert torch.equal(H.w_avg, G.w_avg)
    assert_same_function(G, H)


def test_safetensors_metadata_and_sidecar(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    G = sg2()
    p = save_generator(G, tmp_path / "g.safetensors")
    with safe_open(str(p), framework="pt") as f:
        meta = f.metadata()
    assert meta["format"] == "brgm-generator" and meta["class"] == "StyleGAN2Generator"
    assert json.loads(meta["config"]) == G.config()
    # same weights without metadata, config in a JSON beside the file
    q = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in G.state_dict().items()}, str(q))
    (tmp_path / "bare.safetensors.json").write_text(json.dumps({"class": "StyleGAN2Generator",
                                                                "config": G.config()}))
    assert_same_function(G, load_generator(q))


def test_torch_state_dicts(tmp_path):
    G = sg2(conv_clamp=None)
    # bare state dict, our names: config inferred from shapes
    torch.save(G.state_dict(), tmp_path / "ours.pt")
    H = load_generator(tmp_path / "ours.pt")
    assert_same_function(G, H)
    # bare state dict, NVIDIA names (what torch.save(G.state_dict()) gives with NVIDIA's code)
    nv = {}
    for k, v in G.state_dict().items():
        k = "mapping.w_avg" if k == "w_avg" else k.replace("synthesis_network.", "synthesis.").replace(
            "mapping_network.", "mapping.")
        nv[k] = v
    nv["synthesis.b8.resample_filter"] = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64
    torch.save(nv, tmp_path / "nvidia.pth")
    assert_same_function(G, load_generator(tmp_path / "nvidia.pth"))
    # wrapped, with config (conv_clamp kept)
    G2 = sg2()
    torch.save({"class": "StyleGAN2Generator", "config": G2.config(), "state_dict": G2.state_dict()},
               tmp_path / "wrapped.pt")
    H2 = load_generator(tmp_path / "wrapped.pt")
    assert H2.config()["conv_clamp"] == 256.0
    assert_same_function(G2, H2)


def test_infer_config_channel_counts():
    for base, cmax, res in [(64, 8, 16), (32768, 512, 1024), (16384, 512, 256), (2048, 128, 64)]:
        with torch.device("meta"):
            G = StyleGAN2Generator(z_dim=4, w_dim=4, img_resolution=res, img_channels=3, mapping_layers=1,
                                   channel_base=base, channel_max=cmax, seed=None)
        nv = {k.replace("synthesis_network.", "synthesis.").replace("mapping_network.", "mapping."): v
              for k, v in G.state_dict().items()}
        cfg = infer_stylegan2_config(nv)
        got = {r: min(cfg["channel_base"] // r, cfg["channel_max"]) for r in G.synthesis_network.block_resolutions}
        want = {r: min(base // r, cmax) for r in G.synthesis_network.block_resolutions}
        assert got == want and cfg["img_resolution"] == res and cfg["mapping_layers"] == 1


def test_builtin():
    G = load_generator("builtin:conv16")
    assert isinstance(G, ConvGenerator) and G.img_resolution == 16 and G.source_path is None
    assert "conv16" in BUILTIN_GENERATORS
    with pytest.raises(BRGMError, match="conv16") as e:
        load_generator("builtin:nope")
    one_line(e)


# -- bad inputs -------------------------------------------------------------------------------------------
def test_bad_files(tmp_path):
    G = sg2()
    good = save_generator(G, tmp_path / "g.safetensors")
    data = good.read_bytes()
    cases = {
        "missing.pkl": None,
        "empty.safetensors": b"",
        "text.pkl": b"hello, I am not a network\n",
        "trunc.safetensors": data[: len(data) // 2],
        "trunc_header.safetensors": data[:20],
    }
    for name, content in cases.items():
        p = tmp_path / name
        if content is not None:
            p.write_bytes(content)
        with pytest.raises(BRGMError) as e:
            load_generator(p)
        msg = one_line(e)
        assert name in msg, msg
    with pytest.raises(BRGMError, match="directory") as e:
        load_generator(tmp_path)
    with pytest.raises(BRGMError, match="does not exist") as e:
        load_generator(tmp_path / "missing.pkl")
    # truncated torch zip
    torch.save(G.state_dict(), tmp_path / "sd.pt")
    b = (tmp_path / "sd.pt").read_bytes()
    (tmp_path / "sd_trunc.pt").write_bytes(b[: len(b) // 2])
    with pytest.raises(BRGMError, match="sd_trunc.pt") as e:
        load_generator(tmp_path / "sd_trunc.pt")
    one_line(e)


def test_unknown_missing_and_misshaped_keys(tmp_path):
    G = sg2(conv_clamp=None)
    sd = dict(G.state_dict())
    extra = dict(sd, **{"synthesis_network.b16.conv1.extra": torch.zeros(1)})
    torch.save({"class": "StyleGAN2Generator", "config": G.config(), "state_dict": extra}, tmp_path / "x.pt")
    with pytest.raises(BRGMError, match="unknown tensors synthesis_network.b16.conv1.extra") as e:
        load_generator(tmp_path / "x.pt")
    one_line(e)
    missing = {k: v for k, v in sd.items() if k != "synthesis_network.b8.conv0.bias"}
    torch.save({"class": "StyleGAN2Generator", "config": G.config(), "state_dict": missing}, tmp_path / "m.pt")
    with pytest.raises(BRGMError, match="missing tensors synthesis_network.b8.conv0.bias"):
        load_generator(tmp_path / "m.pt")
    bad = dict(sd, **{"synthesis_network.b8.conv0.bias": torch.zeros(3)})
    torch.save({"class": "StyleGAN2Generator", "config": G.config(), "state_dict": bad}, tmp_path / "s.pt")
    with pytest.raises(BRGMError, match=r"b8.conv0.bias has shape \(3,\)"):
        load_generator(tmp_path / "s.pt")
    torch.save({"class": "Nope", "config": {}, "state_dict": sd}, tmp_path / "c.pt")
    with pytest.raises(BRGMError, match="unknown generator class 'Nope'"):
        load_generator(tmp_path / "c.pt")
    torch.save([1, 2], tmp_path / "l.pt")
    with pytest.raises(BRGMError, match="not a state dict"):
        load_generator(tmp_path / "l.pt")


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_malicious_torch_file_refused(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as f:
        torch.save({"w": _Evil(marker)}, f)
    with pytest.raises(BRGMError, match="evil.pt") as e:
        load_generator(tmp_path / "evil.pt")
    one_line(e)
    assert not marker.exists()
    # the same payload as a plain pickle goes to the NVIDIA loader, which refuses os.system by name
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"G_ema": _Evil(marker)}, protocol=3))
    with pytest.raises(BRGMError, match=r"(posix|os)\.system") as e:
        load_generator(tmp_path / "evil.pkl")
    one_line(e)
    assert not marker.exists()


# -- latent statistics cache ------------------------------------------------------------------------------
def test_latent_stats_cached_beside_weights(tmp_path):
    G = sg2()
    p = save_generator(G, tmp_path / "g.safetensors")
    H = load_generator(p)
    s1 = latent_stats_for(H, num_samples=500)
    cache = tmp_path / "g.safetensors.latent_stats.safetensors"
    assert cache.is_file()
    H2 = load_generator(p)

    def boom(z):
        raise AssertionError("mapping must not run: the cache should be used")

    H2.mapping = boom
    s2 = latent_stats_for(H2, num_samples=500)
    assert torch.equal(s1.mu, s2.mu) and torch.equal(s1.sigma, s2.sigma)
    # the statistics are those of the mapping network: compare with a direct estimate
    z = torch.randn(500, G.z_dim, generator=torch.Generator().manual_seed(0))
    w = G.mapping(z).double()
    assert torch.allclose(s1.mu.double(), w.mean(0), atol=1e-5)
    assert torch.allclose(s1.sigma.double(), w.std(0), rtol=1e-4)
    # weights rewritten later -> stale cache recomputed
    os.utime(cache, (1, 1))
    H3 = load_generator(p)
    calls = []
    orig = H3.mapping
    H3.mapping = lambda z: calls.append(1) or orig(z)
    latent_stats_for(H3, num_samples=500)
    assert calls and cache.stat().st_mtime > 1
    # no path: in-memory only, nothing written
    B = load_generator("builtin:conv16")
    latent_stats_for(B, num_samples=100)
    assert sorted(os.listdir(tmp_path)) == ["g.safetensors", "g.safetensors.latent_stats.safetensors"]


# -- conditional networks and other architectures --------------------------------------------------------
@pytest.mark.parametrize("extra", [dict(architecture="resnet"), dict(architecture="orig", img_channels=3),
                                   dict(c_dim=4, embed_features=5, layer_features=6)])
def test_new_kinds_roundtrip_and_infer(tmp_path, extra):
    G = sg2(conv_clamp=None, **extra)
    H = load_generator(save_generator(G, tmp_path / "g.safetensors"))
    assert H.config() == G.config() and all(H.config()[k] == v for k, v in extra.items())
    w = ws_for(G)
    assert torch.equal(G(w), H(w))
    c = torch.eye(4)[:2] if G.c_dim else None
    z = torch.ones(2, G.z_dim)
    assert torch.equal(G.mapping(z, c), H.mapping(z, c))
    torch.save(G.state_dict(), tmp_path / "bare.pt")  # config inferred from the shapes
    B = load_generator(tmp_path / "bare.pt")
    assert {k: B.config().get(k) for k in extra} == extra
    assert torch.equal(G(w), B(w)) and torch.equal(G.mapping(z, c), B.mapping(z, c))


def test_class_index_on_load(tmp_path):
    G = sg2(c_dim=3)
    p = save_generator(G, tmp_path / "c.safetensors")
    H = load_generator(p, class_index=2)
    assert H.class_index == 2
    z = torch.randn(3, G.z_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(H.mapping(z), G.mapping(z, torch.eye(3)[[2, 2, 2]]))
    s = latent_stats_for(H, num_samples=200)
    assert s.class_index == 2 and (tmp_path / "c.safetensors.class2.latent_stats.safetensors").is_file()
    with pytest.raises(BRGMError, match="out of range") as e:
        load_generator(p, class_index=3)
    one_line(e)
    with pytest.raises(BRGMError, match="unconditional"):
        load_generator("builtin:conv16", class_index=0)
    with pytest.raises(BRGMError, match="unconditional"):
        load_generator(save_generator(sg2(), tmp_path / "u.safetensors"), class_index=0)
