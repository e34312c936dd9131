"""TensorFlow StyleGAN2 pickles (NVlabs/stylegan2, NVlabs/stylegan2-ada TF), read without TensorFlow.

``tf_pickle_bytes`` writes what NVIDIA's TF training loop writes, ``pickle.dump((G, D, Gs))`` of
``dnnlib.tflib.network.Network`` objects, through a stand-in class of that name whose
``__getstate__`` returns NVIDIA's dict (version 4, name, static_kwargs, components,
build_module_src, build_func_name, variables). Variables carry TF's names and layouts
([k, k, in, out] convolutions, [in, out] dense layers, ``noise{i}`` [1, 1, r, r], scalars as numpy
scalars, as ``tf.Session.run`` returns them). ``build_module_src`` would create a marker file if
anything executed it.

``tf_reference`` restates the TF forward pass (``training/networks_stylegan2.py`` of stylegan2 and
``training/networks.py`` of stylegan2-ada: get_weight's runtime coefficient, modulated_conv2d_layer
with the fused per-sample weight [B, k, k, I, O], ``upsample_conv_2d`` as ``conv2d_transpose`` of the
flipped kernel followed by ``_simple_upfirdn_2d``, fused_bias_act, G_mapping, G_synthesis) on the TF
arrays themselves, independently of our layout conversion.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.loading import load_generator
from brgm_pyro.models.generators.nvidia_pickle import TFNetworkRecord, safe_load_pickle

torch.set_num_threads(1)
SQRT2 = math.sqrt(2.0)


# -- NVIDIA's TF Network, as pickled -------------------------------------------------------------------
class Network:
    """Pickles exactly like dnnlib.tflib.network.Network (its __getstate__ dict)."""

    def __init__(self, name, func, static_kwargs, variables, components=None, src=""):
        self.name, self.func, self.static_kwargs = name, func, dict(static_kwargs)
        self.variables, self.components, self.src = variables, dict(components or {}), src

    def __getstate__(self):
        return dict(version=4, name=self.name, static_kwargs=dict(self.static_kwargs),
                    components=dict(self.components), build_module_src=self.src,
                    build_func_name=self.func, variables=list(self.variables.items()))


Network.__module__, Network.__qualname__ = "dnnlib.tflib.network", "Network"
_FAKE = {"dnnlib": types.ModuleType("dnnlib"), "dnnlib.tflib": types.ModuleType("dnnlib.tflib"),
         "dnnlib.tflib.network": types.ModuleType("dnnlib.tflib.network")}
_FAKE["dnnlib.tflib.network"].Network = Network


def _dumps(obj, protocol):
    saved = {k: sys.modules.get(k) for k in _FAKE}
    sys.modules.update(_FAKE)
    try:
        return pickle.dumps(obj, protocol=protocol)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)


def _nf(kw, stage):
    return int(np.clip(int(kw["fmap_base"] / 2.0 ** stage), 1, kw["fmap_max"]))


def tf_generator(kw, repo="stylegan2-ada", seed=0, src=""):
    """G_main Network with random variables for static kwargs ``kw`` (NVIDIA's TF shapes)."""
    rng = np.random.default_rng(seed)
    f32 = np.float32

    def rnd(*shape, scale=1.0, offset=0.0):
        return (rng.standard_normal(shape) * scale + offset).astype(f32)

    z, w, L = kw["latent_size"], kw["dlatent_size"], kw.get("mapping_layers", 8)
    hidden = kw.get("mapping_fmaps", 512 if repo == "stylegan2" else None) or w
    label, mv = kw.get("label_size", 0), {}
    x_in = z
    if label:
        e = kw.get("label_fmaps") or z
        mv["LabelEmbed/weight"], mv["LabelEmbed/bias"] = rnd(label, e), rnd(e, scale=0.2)
        x_in = z + e
    for i in range(L):
        out = w if i == L - 1 else hidden
        mv[f"Dense{i}/weight"], mv[f"Dense{i}/bias"] = rnd(x_in, out, scale=100.0), rnd(out, scale=20.0)
        x_in = out
    sv = _synthesis_variables(kw, rnd)
    sfunc = "G_synthesis_stylegan2" if repo == "stylegan2" else "G_synthesis"
    num_ws = 2 * int(math.log2(kw["resolution"])) - 2
    mapping = Network("G_mapping", "G_mapping", dict(kw, dlatent_broadcast=num_ws), mv, src=src)
    synthesis = Network("G_synthesis", sfunc, kw, sv, src=src)
    gv = {"lod": f32(0.0), "dlatent_avg": rnd(w)}
    return Network("G", "G_main", kw, gv, dict(synthesis=synthesis, mapping=mapping), src=src)


def _synthesis_variables(kw, rnd):
    res_log2, arch = int(math.log2(kw["resolution"])), kw.get("architecture", "skip")
    ch, w = kw["num_channels"], kw["dlatent_size"]
    v = {}
    for i in range(2 * res_log2 - 3):
        r = 2 ** ((i + 5) // 2)
        v[f"noise{i}"] = rnd(1, 1, r, r)

    def layer(p, cin, cout, k):
        v[p + "/weight"], v[p + "/mod_weight"] = rnd(k, k, cin, cout), rnd(w, cin)
        v[p + "/mod_bias"], v[p + "/bias"] = rnd(cin, scale=0.2), rnd(cout, scale=0.2)
        if k == 3:
            v[p + "/noise_strength"] = np.float32(rnd(1, scale=0.3)[0])  # a numpy scalar, as Session.run

    v["4x4/Const/const"] = rnd(1, _nf(kw, 1), 4, 4)
    layer("4x4/Conv", _nf(kw, 1), _nf(kw, 1), 3)
    for res in range(2, res_log2 + 1):
        r = 2 ** res
        if res > 2:
            layer(f"{r}x{r}/Conv0_up", _nf(kw, res - 2), _nf(kw, res - 1), 3)
            layer(f"{r}x{r}/Conv1", _nf(kw, res - 1), _nf(kw, res - 1), 3)
            if arch == "resnet":
                v[f"{r}x{r}/Skip/weight"] = rnd(1, 1, _nf(kw, res - 2), _nf(kw, res - 1))
        if arch == "skip" or res == res_log2:
            layer(f"{r}x{r}/ToRGB", _nf(kw, res - 1), ch, 1)
    return v


def tf_pickle_bytes(kw, repo="stylegan2-ada", protocol=4, marker=None):
    src = "" if marker is None else f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
    G, Gs = tf_generator(kw, repo, seed=1, src=src), tf_generator(kw, repo, seed=0, src=src)
    D = Network("D", "D_main" if repo == "stylegan2-ada" else "D_stylegan2",
                dict(num_channels=kw["num_channels"], resolution=kw["resolution"],
                     label_size=kw.get("label_size", 0)),
                {"Output/weight": np.ones((4, 1), np.float32)}, src=src)
    return _dumps((G, D, Gs), protocol), Gs


# -- the TF forward pass, restated ---------------------------------------------------------------------
def _d(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def tf_dense(x, weight, lrmul=1.0):
    """dense_layer: x @ (weight * runtime_coef), runtime_coef = lrmul / sqrt(fan_in)."""
    return x @ (_d(weight) * (lrmul / math.sqrt(weight.shape[0])))


def tf_bias_act(x, b, act="linear", lrmul=1.0, clamp=None):
    """fused_bias_act: x + b * lrmul; lrelu (alpha 0.2) times gain sqrt(2); then clamp."""
    x = x + (_d(b) * lrmul).reshape([1, -1] + [1] * (x.dim() - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2) * SQRT2
    return x if clamp is None else x.clamp(-clamp, clamp)


def tf_upfirdn(x, up, pad0, pad1):
    """_simple_upfirdn_2d / _upfirdn_2d_ref with k = setup_kernel([1,3,3,1]) * 4 (the factor^2 gain
    of upsample_2d and upsample_conv_2d, factor 2): zero insertion, pad, flipped kernel."""
    k = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float64)
    k = k / k.sum() * 4
    B, C, H, W = x.shape
    if up > 1:
        z = x.new_zeros(B, C, H * up, W * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, [pad0, pad1, pad0, pad1])
    y = F.conv2d(x.reshape(B * C, 1, *x.shape[2:]), _d(k[::-1, ::-1].copy())[None, None])
    return y.reshape(B, C, *y.shape[2:])


def tf_upsample_conv(xb, wb):
    """upsample_conv_2d for one sample: conv2d_transpose (stride 2, VALID) with w[::-1, ::-1]
    transposed to [k, k, out, in], then _simple_upfirdn_2d(pad0=(p+1)//2+1, pad1=p//2+1)."""
    k = wb.shape[0]
    p = (4 - 2) - (k - 1)
    wt = wb.flip([0, 1]).permute(0, 1, 3, 2)  # [k, k, O, I]: conv2d_transpose's filter layout
    y = F.conv_transpose2d(xb, wt.permute(3, 2, 0, 1), stride=2)  # torch weight [in, out, k, k]
    return tf_upfirdn(y, 1, (p + 1) // 2 + 1, p // 2 + 1)


def tf_modconv(x, dl, V, p, up=False, demodulate=True):
    """modulated_conv2d_layer (fused): ww [B, k, k, I, O] = w * runtime_coef * s, demodulated."""
    w = _d(V[p + "/weight"])
    k, I = w.shape[0], w.shape[2]
    w = w * (1 / math.sqrt(k * k * I))
    s = tf_bias_act(tf_dense(dl, V[p + "/mod_weight"]), V[p + "/mod_bias"]) + 1
    ww = w[None] * s[:, None, None, :, None]
    if demodulate:
        ww = ww * (ww.square().sum(dim=[1, 2, 3]) + 1e-8).rsqrt()[:, None, None, None, :]
    out = []
    for b in range(x.shape[0]):
        xb, wb = x[b:b + 1], ww[b]
        out.append(tf_upsample_conv(xb, wb) if up else F.conv2d(xb, wb.permute(3, 2, 0, 1), padding=k // 2))
    return torch.cat(out)


def tf_synthesis(V, dl, kw, use_noise=True):
    """G_synthesis(_stylegan2) with randomize_noise=False (the stored noise), dlatents (B, L, d)."""
    res_log2, arch, clamp = int(math.log2(kw["resolution"])), kw.get("architecture", "skip"), kw.get("conv_clamp")

    def layer(x, idx, p, up=False):
        x = tf_modconv(x, dl[:, idx], V, p, up=up)
        if use_noise:
            x = x + _d(V[f"noise{idx}"]) * float(V[p + "/noise_strength"])
        return tf_bias_act(x, V[p + "/bias"], "lrelu", clamp=clamp)

    def torgb(x, y, res):
        p = f"{2 ** res}x{2 ** res}/ToRGB"
        t = tf_bias_act(tf_modconv(x, dl[:, res * 2 - 3], V, p, demodulate=False), V[p + "/bias"], clamp=clamp)
        return t if y is None else y + t

    x = _d(V["4x4/Const/const"]).repeat(dl.shape[0], 1, 1, 1)
    x, y = layer(x, 0, "4x4/Conv"), None
    if arch == "skip":
        y = torgb(x, y, 2)
    for res in range(3, res_log2 + 1):
        r = 2 ** res
        t = x
        x = layer(x, res * 2 - 5, f"{r}x{r}/Conv0_up", up=True)
        x = layer(x, res * 2 - 4, f"{r}x{r}/Conv1")
        if arch == "resnet":
            sw = _d(V[f"{r}x{r}/Skip/weight"]) * (1 / math.sqrt(V[f"{r}x{r}/Skip/weight"].shape[2]))
            t = torch.cat([tf_upsample_conv(t[b:b + 1], sw) for b in range(t.shape[0])])
            x = (x + t) * (1 / np.sqrt(2))
        if arch == "skip":
            y = tf_upfirdn(y, 2, 2, 1)  # upsample_2d: pad0 = (p+1)//2 + 1, pad1 = p//2 with p = 2
        if arch == "skip" or res == res_log2:
            y = torgb(x, y, res)
    return y


def tf_mapping(V, z, kw, labels=None):
    """G_mapping: normalize(z) [ada: concat normalize(LabelEmbed(labels))], Dense layers (lrmul)."""
    def normalize(x):
        return x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()

    x = normalize(z)
    if labels is not None:
        y = tf_bias_act(tf_dense(labels, V["LabelEmbed/weight"]), V["LabelEmbed/bias"])
        x = torch.cat([x, normalize(y)], dim=1)
    lr = kw.get("mapping_lrmul", 0.01)
    for i in range(kw.get("mapping_layers", 8)):
        x = tf_bias_act(tf_dense(x, V[f"Dense{i}/weight"], lr), V[f"Dense{i}/bias"], "lrelu", lrmul=lr)
    return x


def _vars(net, part):
    return net.components[part].variables


# -- tests -------------------------------------------------------------------------------------------------
SMALL = dict(latent_size=8, dlatent_size=8, fmap_base=32, fmap_max=8, mapping_layers=2)
CASES = {  # (repo, static kwargs as the training scripts pass them, resized to tiny networks)
    "stylegan2 config-f": ("stylegan2", dict(num_channels=3, resolution=16, label_size=0, **SMALL)),
    "stylegan2 config-e Gresnet": ("stylegan2", dict(num_channels=3, resolution=16, label_size=0,
                                                     architecture="resnet", **SMALL)),
    "stylegan2 config-e Gorig": ("stylegan2", dict(num_channels=1, resolution=8, label_size=0,
                                                   architecture="orig", **SMALL)),
    "stylegan2-ada brain-MRI-like": ("stylegan2-ada", dict(num_channels=1, resolution=32, label_size=0,
                                                           num_fp16_res=4, conv_clamp=0.8, **SMALL)),
    "stylegan2-ada cifar-like": ("stylegan2-ada", dict(num_channels=3, resolution=32, label_size=10,
                                                       num_fp16_res=4, conv_clamp=256, style_mixing_prob=None,
                                                       **dict(SMALL, latent_size=6))),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_tf_pickle_matches_tf_reference(tmp_path, case, protocol):
    repo, kw = CASES[case]
    marker = tmp_path / "module_src_ran"
    b, Gs = tf_pickle_bytes(kw, repo, protocol=protocol, marker=marker)
    path = tmp_path / "network-snapshot-000100.pkl"
    path.write_bytes(b)
    G = load_generator(path)
    assert not marker.exists()
    cfg = G.config()
    assert cfg["img_resolution"] == kw["resolution"] and cfg["img_channels"] == kw["num_channels"]
    assert cfg.get("architecture", "skip") == kw.get("architecture", "skip")
    assert cfg["conv_clamp"] == kw.get("conv_clamp") and cfg["channel_base"] == 2 * kw["fmap_base"]
    if repo == "stylegan2":
        assert cfg["layer_features"] == 512  # NVIDIA's stylegan2 G_mapping default mapping_fmaps
    assert torch.equal(G.w_avg, torch.from_numpy(Gs.variables["dlatent_avg"]))
    V, kwd = _vars(Gs, "synthesis"), dict(kw)
    dl = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(7)).double()
    want = tf_synthesis(V, dl, kwd)
    assert want.abs().max() > 0.1
    assert (G(dl.float()).double() - want).abs().max().item() < 1e-4
    if kw.get("conv_clamp", 9) < 1:
        assert (want.abs() >= kw["conv_clamp"] - 1e-6).any()  # the clamp is reached
    G.noise_mode = "none"
    assert (G(dl.float()).double() - tf_synthesis(V, dl, kwd, use_noise=False)).abs().max().item() < 1e-4
    z = torch.randn(3, kw["latent_size"], generator=torch.Generator().manual_seed(2)).double()
    labels = torch.eye(kw["label_size"])[[1, 4, 9]].double() if kw["label_size"] else None
    want = tf_mapping(_vars(Gs, "mapping"), z, kw, labels)
    got = G.mapping(z.float(), None if labels is None else labels.float()).double()
    assert (got - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())


def test_tf_class_index_and_per_class_stats(tmp_path):
    from brgm_pyro.models.generators.loading import latent_stats_for

    repo, kw = CASES["stylegan2-ada cifar-like"]
    b, Gs = tf_pickle_bytes(kw, repo)
    path = tmp_path / "cifar10.pkl"
    path.write_bytes(b)
    G = load_generator(path, class_index=4)
    z = torch.randn(5, 6, generator=torch.Generator().manual_seed(3)).double()
    want = tf_mapping(_vars(Gs, "mapping"), z, kw, torch.eye(10)[[4] * 5].double())
    assert (G.mapping(z.float()).double() - want).abs().max().item() < 1e-4 * want.abs().max().item()
    s4 = latent_stats_for(G, num_samples=300)
    assert (tmp_path / "cifar10.pkl.class4.latent_stats.safetensors").is_file() and s4.class_index == 4
    G.class_index = 1
    s1 = latent_stats_for(G, num_samples=300)
    assert s1.class_index == 1 and not torch.equal(s1.mu, s4.mu)
    assert torch.equal(latent_stats_for(load_generator(path, class_index=4), num_samples=300).mu, s4.mu)
    with pytest.raises(BRGMError, match="conditional .*--class K"):
        latent_stats_for(load_generator(path), num_samples=10)


def test_tf_layout_kept_not_executed(tmp_path):
    marker = tmp_path / "ran"
    b, _ = tf_pickle_bytes(CASES["stylegan2 config-f"][1], "stylegan2", marker=marker)
    (tmp_path / "n.pkl").write_bytes(b)
    data = safe_load_pickle(tmp_path / "n.pkl")
    assert not marker.exists()
    assert isinstance(data, tuple) and len(data) == 3 and all(isinstance(n, TFNetworkRecord) for n in data)
    Gs = data[2].state
    assert Gs["build_func_name"] == "G_main" and "write_text('ran')" in Gs["build_module_src"]
    syn = Gs["components"]["synthesis"].state
    assert syn["build_func_name"] == "G_synthesis_stylegan2"
    names = [n for n, _ in syn["variables"]]
    assert "8x8/Conv0_up/weight" in names and "noise0" in names
    G_train, G_ema = load_generator(tmp_path / "n.pkl"), None
    from brgm_pyro.models.generators.nvidia_pickle import load_nvidia_pickle
    G_train = load_nvidia_pickle(tmp_path / "n.pkl", key="G")
    G_ema = load_nvidia_pickle(tmp_path / "n.pkl")
    ws = torch.randn(1, G_ema.num_ws, 8)
    assert not torch.equal(G_train(ws), G_ema(ws))  # Gs (= G_ema) is the default, G on request
    with pytest.raises(BRGMError, match="choose G_ema"):
        load_nvidia_pickle(tmp_path / "n.pkl", key="D")


def _write(tmp_path, name, G, D=None):
    p = tmp_path / name
    D = D or Network("D", "D_stylegan2", {}, {})
    p.write_bytes(_dumps((G, D, G), 4))
    return p


@pytest.mark.parametrize("mutate,pattern", [
    (lambda G: G.static_kwargs.update(foo=1), r"unknown static arguments .*: foo"),
    (lambda G: G.static_kwargs.update(fmap_decay=0.5), r"fmap_decay=0.5"),
    (lambda G: G.static_kwargs.update(conv_clamp=256), r"\(stylegan2\) generator: conv_clamp"),
    (lambda G: G.static_kwargs.update(label_size=3), r"LabelConcat"),
    (lambda G: G.static_kwargs.update(resample_kernel=[1, 1]), r"resample_kernel=\[1, 1\]"),
    (lambda G: G.static_kwargs.update(fmap_min=8), r"fmap_min=8"),
    (lambda G: setattr(G.components["synthesis"], "func", "G_synthesis_stylegan_revised"), r"config-a\.\.d"),
    (lambda G: setattr(G, "func", "G_style"), r"StyleGAN \(v1\)"),
    (lambda G: G.components["synthesis"].variables.update({"extra/weight": np.zeros(2, np.float32)}),
     r"unknown variables synthesis/extra/weight"),
    (lambda G: G.components["synthesis"].variables.pop("noise1"), r"missing variables synthesis/noise1"),
    (lambda G: G.components["synthesis"].variables.update({"noise1": np.zeros((1, 1, 4, 4), np.float32)}),
     r"noise_const has shape \(4, 4\), expected \(8, 8\)"),
])
def test_tf_refusals_name_the_cause(tmp_path, mutate, pattern):
    G = tf_generator(CASES["stylegan2 config-f"][1], "stylegan2")
    mutate(G)
    with pytest.raises(BRGMError, match=pattern) as e:
        load_generator(_write(tmp_path, "g.pkl", G))
    assert "\n" not in str(e.value) and "g.pkl" in str(e.value)


def test_tf_pickle_version_and_malicious_payload(tmp_path):
    class Old(Network):
        def __getstate__(self):
            return dict(super().__getstate__(), version=3)

    Old.__module__, Old.__qualname__ = "dnnlib.tflib.network", "Network"
    _FAKE["dnnlib.tflib.network"].Network = Old
    try:
        G = Old("G", "G_main", {}, {})
        with pytest.raises(BRGMError, match="version 3"):
            load_generator(_write(tmp_path, "old.pkl", G, G))
    finally:
        _FAKE["dnnlib.tflib.network"].Network = Network
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    G = tf_generator(CASES["stylegan2 config-f"][1], "stylegan2")
    G.components["synthesis"].variables["noise0"] = Payload()
    with pytest.raises(BRGMError, match=r"(posix|os)\.system"):
        load_generator(_write(tmp_path, "evil.pkl", G))
    assert not marker.exists()


def test_convert_roundtrips_tf_networks(tmp_path):
    from typer.testing import CliRunner

    from brgm_pyro.cli.app import app
    import brgm_pyro.cli.convert  # noqa: F401 - registers the command

    for i, case in enumerate(["stylegan2 config-e Gresnet", "stylegan2-ada cifar-like"]):
        repo, kw = CASES[case]
        src = tmp_path / f"tf{i}.pkl"
        src.write_bytes(tf_pickle_bytes(kw, repo)[0])
        out = tmp_path / f"tf{i}.safetensors"
        r = CliRunner().invoke(app, ["convert", str(src), str(out)])
        assert r.exit_code == 0, r.output
        A, B = load_generator(src), load_generator(out)
        assert A.config() == B.config()
        ws = torch.randn(2, A.num_ws, A.w_dim, generator=torch.Generator().manual_seed(0))
        assert torch.equal(A(ws), B(ws))
        z = torch.randn(2, kw["latent_size"])
        c = torch.eye(10)[:2] if kw["label_size"] else None
        assert torch.equal(A.mapping(z, c), B.mapping(z, c)) and torch.equal(A.w_avg, B.w_avg)
