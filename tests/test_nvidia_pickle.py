"""The safe NVIDIA pickle loader, on pickles built here with exactly NVIDIA's structure.

``nvidia_pickle_bytes`` builds stand-ins of NVIDIA's network classes (same class names, attribute
names, parameters and buffers, numpy-scalar gains, ``dnnlib.util.EasyDict`` constructor kwargs) and
pickles them the way ``torch_utils.persistence`` does: each module reduces to
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta = {type, version,
module_src, class_name, state=<the module's __dict__>}``. Tensors are pickled by torch itself.
The ``module_src`` would create a marker file if anything executed it.

The expected images come from the independent reference in ``tests/test_stylegan2.py`` (loaded by
path), evaluated in float64 on the same NVIDIA-named tensors.
"""

from __future__ import annotations

import collections
import importlib.util
import math
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.loading import load_generator
from brgm_pyro.models.generators.nvidia_pickle import PersistentRecord, safe_load_pickle
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

torch.set_num_threads(1)

_spec = importlib.util.spec_from_file_location("_sg2_reference", Path(__file__).with_name("test_stylegan2.py"))
ref = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ref)


# -- stand-ins for NVIDIA's modules, pickled the way NVIDIA pickles them --------------------------------
def _fake_reconstruct(meta):  # never called: only its name is pickled
    raise AssertionError("the fake reconstruct function must not run")


class EasyDict(dict):
    pass


_persistence = types.ModuleType("torch_utils.persistence")
_persistence._reconstruct_persistent_obj = _fake_reconstruct
_fake_reconstruct.__module__, _fake_reconstruct.__qualname__ = "torch_utils.persistence", "_reconstruct_persistent_obj"
_dnnlib_util = types.ModuleType("dnnlib.util")
_dnnlib_util.EasyDict = EasyDict
EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"
FAKE_MODULES = {"torch_utils": types.ModuleType("torch_utils"), "torch_utils.persistence": _persistence,
                "dnnlib": types.ModuleType("dnnlib"), "dnnlib.util": _dnnlib_util}


def module_src(marker: Path) -> str:
    # What NVIDIA's loader would exec. If anything runs it, the marker file appears.
    return f"import pathlib\npathlib.Path({str(marker)!r}).write_text('executed')\nclass Generator: pass\n"


class NV(nn.Module):
    """A module that pickles like an NVIDIA @persistent_class instance."""

    MODULE_SRC = ""

    def __init__(self, class_name, init_kwargs=None):
        super().__init__()
        self._class_name_for_pickle = class_name
        self._init_args = ()
        self._init_kwargs = EasyDict(init_kwargs or {})

    def __reduce__(self):
        state = dict(self.__dict__)
        name = state.pop("_class_name_for_pickle")
        meta = dict(type="class", version=6, module_src=NV.MODULE_SRC, class_name=name, state=state)
        return (_fake_reconstruct, (meta,))


def _filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    return torch.outer(f, f) / 64


class _Builder:
    """Makes NVIDIA-structured modules with random weights, recording {NVIDIA name: tensor} in ``flat``."""

    def __init__(self, seed, w_dim, clamp):
        self.g, self.flat, self.w_dim, self.clamp = torch.Generator().manual_seed(seed), {}, w_dim, clamp

    def param(self, mod, prefix, name, shape, scale=1.0, offset=0.0):
        t = torch.randn(shape, generator=self.g) * scale + offset
        mod.register_parameter(name, nn.Parameter(t))
        self.flat[f"{prefix}.{name}"] = t.clone()

    def buffer(self, mod, prefix, name, t):
        mod.register_buffer(name, t)
        self.flat[f"{prefix}.{name}"] = t.clone()

    def fc(self, prefix, cin, cout, lr=1.0, act="linear", bias_init=0.0):
        m = NV("FullyConnectedLayer", dict(in_features=cin, out_features=cout, activation=act,
                                           lr_multiplier=lr, bias_init=bias_init))
        m.in_features, m.out_features, m.activation = cin, cout, act
        self.param(m, prefix, "weight", (cout, cin), 1.0 / lr)
        self.param(m, prefix, "bias", (cout,), 0.2 / lr, bias_init / lr)
        m.weight_gain = np.float64(lr / np.sqrt(cin))  # numpy scalar, as NVIDIA
        m.bias_gain = lr
        return m

    def layer(self, prefix, cin, cout, r, up, bias_offset):
        w_dim, clamp = self.w_dim, self.clamp
        m = NV("SynthesisLayer", dict(in_channels=cin, out_channels=cout, w_dim=w_dim, resolution=r, up=up,
                                      resample_filter=[1, 3, 3, 1], conv_clamp=clamp, channels_last=False))
        m.in_channels, m.out_channels, m.w_dim = cin, cout, w_dim
        m.resolution, m.up, m.use_noise, m.activation, m.conv_clamp = r, up, True, "lrelu", clamp
        self.buffer(m, prefix, "resample_filter", _filter())
        m.padding = 1
        m.act_gain = np.float64(np.sqrt(2))
        m.affine = self.fc(prefix + ".affine", w_dim, cin, bias_init=1.0)
        self.param(m, prefix, "weight", (cout, cin, 3, 3))
        self.buffer(m, prefix, "noise_const", torch.randn((r, r), generator=self.g))
        self.param(m, prefix, "noise_strength", (), 0.3)
        self.param(m, prefix, "bias", (cout,), 0.2, bias_offset)
        return m

    def torgb(self, prefix, c, ch):
        T = NV("ToRGBLayer", dict(in_channels=c, out_channels=ch, w_dim=self.w_dim, conv_clamp=self.clamp,
                                  channels_last=False))
        T.in_channels, T.out_channels, T.w_dim, T.conv_clamp = c, ch, self.w_dim, self.clamp
        T.affine = self.fc(prefix + ".affine", self.w_dim, c, bias_init=1.0)
        self.param(T, prefix, "weight", (ch, c, 1, 1))
        self.param(T, prefix, "bias", (ch,), 0.2)
        T.weight_gain = np.float64(1 / np.sqrt(c))
        return T

    def skip(self, prefix, cin, c):
        K = NV("Conv2dLayer", dict(in_channels=cin, out_channels=c, kernel_size=1, bias=False, up=2,
                                   resample_filter=[1, 3, 3, 1], channels_last=False))
        K.in_channels, K.out_channels, K.activation, K.up, K.down, K.conv_clamp = cin, c, "linear", 2, 1, None
        self.buffer(K, prefix, "resample_filter", _filter())
        K.padding, K.weight_gain, K.act_gain = 0, np.float64(1 / np.sqrt(cin)), 1.0
        self.param(K, prefix, "weight", (c, cin, 1, 1))
        K.bias = None
        return K

    def block(self, r, cin, c, ch, res, use_fp16, architecture, block_kw, repo, bias_offset):
        p = f"synthesis.b{r}"
        B = NV("SynthesisBlock", dict(in_channels=cin, out_channels=c, w_dim=self.w_dim, resolution=r,
                                      img_channels=ch, is_last=r == res, use_fp16=use_fp16, **block_kw))
        B.in_channels, B.w_dim, B.resolution, B.img_channels = cin, self.w_dim, r, ch
        B.is_last, B.architecture, B.use_fp16, B.channels_last = r == res, architecture, use_fp16, False
        if repo == "sg3":
            B.fused_modconv_default = "inference_only"
        self.buffer(B, p, "resample_filter", _filter())
        B.num_conv = B.num_torgb = 0
        if cin == 0:
            self.param(B, p, "const", (c, r, r))
        else:
            B.conv0 = self.layer(p + ".conv0", cin, c, r, 2, bias_offset)
            B.num_conv += 1
        B.conv1 = self.layer(p + ".conv1", c, c, r, 1, bias_offset)
        B.num_conv += 1
        if r == res or architecture == "skip":
            B.torgb, B.num_torgb = self.torgb(p + ".torgb", c, ch), 1
        if cin != 0 and architecture == "resnet":
            B.skip = self.skip(p + ".skip", cin, c)
        return B


def build_nvidia_generator(res, ch, w_dim=8, z_dim=8, layers=2, base=64, cmax=8, clamp=None, seed=0,
                           extra_kwargs=None, synthesis_extra=None, repo="ada", architecture="skip",
                           c_dim=0, embed=None, layer_features=None, fp16_res=0, bias_offset=0.0):
    """NVIDIA-structured generator with random weights; returns (module, {NVIDIA name: tensor}).

    ``repo="ada"``: stylegan2-ada-pytorch's train.py layout (``synthesis_kwargs`` with channel_base,
    channel_max, num_fp16_res, conv_clamp). ``repo="sg3"``: the stylegan3 repository's train.py with
    ``--cfg=stylegan2`` (channel_base, channel_max, fused_modconv_default at the top level; conv_clamp
    and num_fp16_res left to the class defaults 256 and 4 unless given in ``extra_kwargs``).
    The unpickled attributes (conv_clamp, use_fp16, ...) are what NVIDIA's constructors would set.
    """
    if repo == "sg3":  # class defaults, unless train.py passed them (--fp32)
        clamp, fp16_res = (extra_kwargs or {}).get("conv_clamp", 256), (extra_kwargs or {}).get("num_fp16_res", 4)
    log2 = int(math.log2(res))
    fp16_from = max(2 ** (log2 + 1 - fp16_res), 8)
    mk = _Builder(seed, w_dim, clamp)
    chans = {r: min(base // r, cmax) for r in [2 ** i for i in range(2, log2 + 1)]}
    G, syn_kw = _generator_record(repo, z_dim, c_dim, w_dim, res, ch, layers, base, cmax, clamp, fp16_res,
                                  architecture, embed, layer_features, extra_kwargs, synthesis_extra)
    S = NV("SynthesisNetwork", dict(w_dim=w_dim, img_resolution=res, img_channels=ch, **syn_kw))
    S.w_dim, S.img_resolution, S.img_resolution_log2, S.img_channels = w_dim, res, log2, ch
    S.block_resolutions = list(chans)
    S.num_ws = 0
    block_kw = {k: v for k, v in syn_kw.items() if k not in ("channel_base", "channel_max", "num_fp16_res")}
    for r, c in chans.items():
        B = mk.block(r, chans[r // 2] if r > 4 else 0, c, ch, res, r >= fp16_from, architecture, block_kw,
                     repo, bias_offset)
        S.num_ws += B.num_conv + (B.num_torgb if r == res else 0)
        setattr(S, f"b{r}", B)
    G.synthesis = S
    G.num_ws = S.num_ws
    G.mapping = _mapping_record(mk, z_dim, c_dim, w_dim, S.num_ws, layers, embed, layer_features)
    return G, mk.flat


def _generator_record(repo, z_dim, c_dim, w_dim, res, ch, layers, base, cmax, clamp, fp16_res, architecture,
                      embed, layer_features, extra_kwargs, synthesis_extra):
    """The Generator record with the init kwargs each repository's train.py + training_loop pass."""
    mk = EasyDict(num_layers=layers)
    if embed is not None:
        mk["embed_features"] = embed
    if layer_features is not None:
        mk["layer_features"] = layer_features
    if repo == "ada":
        syn_kw = EasyDict(channel_base=base, channel_max=cmax, num_fp16_res=fp16_res, conv_clamp=clamp)
        if architecture != "skip":
            syn_kw["architecture"] = architecture
        syn_kw.update(synthesis_extra or {})
        kw = dict(z_dim=z_dim, w_dim=w_dim, mapping_kwargs=mk, synthesis_kwargs=syn_kw, c_dim=c_dim,
                  img_resolution=res, img_channels=ch)
    else:
        syn_kw = EasyDict(channel_base=base, channel_max=cmax, fused_modconv_default="inference_only")
        if architecture != "skip":
            syn_kw["architecture"] = architecture
        syn_kw.update(synthesis_extra or {})
        kw = dict(z_dim=z_dim, w_dim=w_dim, mapping_kwargs=mk, **syn_kw, c_dim=c_dim,
                  img_resolution=res, img_channels=ch)
    G = NV("Generator", dict(kw, **(extra_kwargs or {})))
    G.z_dim, G.c_dim, G.w_dim, G.img_resolution, G.img_channels = z_dim, c_dim, w_dim, res, ch
    return G, syn_kw


def _mapping_record(mk, z_dim, c_dim, w_dim, num_ws, layers, embed, layer_features):
    kw = dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, num_ws=num_ws, num_layers=layers)
    M = NV("MappingNetwork", dict(kw, **({} if embed is None else dict(embed_features=embed)),
                                  **({} if layer_features is None else dict(layer_features=layer_features))))
    M.z_dim, M.c_dim, M.w_dim, M.num_ws, M.num_layers, M.w_avg_beta = z_dim, c_dim, w_dim, num_ws, layers, 0.995
    e = (w_dim if embed is None else embed) if c_dim else 0
    hidden = w_dim if layer_features is None else layer_features
    feats = [z_dim + e] + [hidden] * (layers - 1) + [w_dim]
    if c_dim:
        M.embed = mk.fc("mapping.embed", c_dim, e)
    for i in range(layers):
        setattr(M, f"fc{i}", mk.fc(f"mapping.fc{i}", feats[i], feats[i + 1], lr=0.01, act="lrelu"))
    mk.buffer(M, "mapping", "w_avg", torch.randn(w_dim, generator=mk.g))
    return M


def nvidia_pickle_bytes(marker, protocol=3, **kw):
    """Bytes of a pickle laid out like NVIDIA's training snapshots, and the G_ema reference tensors."""
    G_ema, flat = build_nvidia_generator(**kw)
    G_train, _ = build_nvidia_generator(**dict(kw, seed=kw.get("seed", 0) + 100))
    D = NV("Discriminator", dict(c_dim=0, img_resolution=kw["res"], img_channels=kw["ch"]))
    D.register_parameter("w", nn.Parameter(torch.randn(3, 3)))
    NV.MODULE_SRC = module_src(marker)
    saved = {k: sys.modules.get(k) for k in FAKE_MODULES}
    sys.modules.update(FAKE_MODULES)
    try:
        data = dict(G=G_train, D=D, G_ema=G_ema, augment_pipe=None,
                    training_set_kwargs=EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                 path="x.zip", use_labels=False, max_size=100, xflip=False,
                                                 resolution=kw["res"]))
        b = pickle.dumps(data, protocol=protocol)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return b, flat


# -- tests ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("res,ch,clamp,protocol", [(8, 3, None, 3), (32, 1, 0.7, 4), (16, 3, 256.0, 2)])
def test_loaded_synthesis_matches_reference(tmp_path, res, ch, clamp, protocol):
    marker = tmp_path / "module_src_was_executed"
    b, flat = nvidia_pickle_bytes(marker, protocol=protocol, res=res, ch=ch, clamp=clamp)
    path = tmp_path / "network-snapshot.pkl"
    path.write_bytes(b)
    G = load_generator(path)
    assert not marker.exists()  # NVIDIA's module source never ran
    assert isinstance(G, StyleGAN2Generator)
    cfg = G.config()
    assert (cfg["img_resolution"], cfg["img_channels"], cfg["w_dim"], cfg["z_dim"], cfg["mapping_layers"],
            cfg["channel_base"], cfg["channel_max"], cfg["conv_clamp"]) == (res, ch, 8, 8, 2, 64, 8, clamp)
    assert G.num_ws == 2 * int(math.log2(res)) - 2
    assert torch.equal(G.w_avg, flat["mapping.w_avg"])
    st = {k: v.double() for k, v in flat.items()}
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(9))
    for mode in ("const", "none"):
        G.noise_mode = mode
        want = ref.reference_synthesis(st, ws.double(), res, mode, clamp)
        got = G(ws).double()
        assert want.abs().max() > 0.1
        assert (got - want).abs().max().item() < 1e-4
    if clamp == 0.7:
        assert (want.abs() > 0.69).any()  # the clamp read from the record is active
    z = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    want = ref.reference_mapping(st, z.double(), 2)
    assert (G.mapping(z).double() - want).abs().max().item() < 1e-4 * max(1.0, want.abs().max().item())


def test_record_layout_is_kept_not_executed(tmp_path):
    marker = tmp_path / "ran"
    b, _ = nvidia_pickle_bytes(marker, res=8, ch=1)
    (tmp_path / "n.pkl").write_bytes(b)
    data = safe_load_pickle(tmp_path / "n.pkl")
    assert not marker.exists()
    assert set(data) == {"G", "D", "G_ema", "augment_pipe", "training_set_kwargs"}
    rec = data["G_ema"]
    assert isinstance(rec, PersistentRecord) and rec.class_name == "Generator" and rec.version == 6
    assert "write_text('executed')" in rec.module_src
    assert rec.state["_init_kwargs"]["synthesis_kwargs"]["channel_base"] == 64
    syn = rec.state["_modules"]["synthesis"]
    assert syn.class_name == "SynthesisNetwork"
    layer = syn.state["_modules"]["b8"].state["_modules"]["conv0"]
    assert layer.state["act_gain"] == pytest.approx(math.sqrt(2))  # numpy scalar decoded
    assert isinstance(layer.state["_parameters"]["weight"], nn.Parameter)


class _Payload:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return (self.func, (self.arg,))


@pytest.mark.parametrize("func,name", [(os.system, r"(posix|nt|os)\.system"), (eval, r"builtins\.eval"),
                                       (exec, r"builtins\.exec")])
def test_malicious_pickle_refused_before_running(tmp_path, func, name):
    marker = tmp_path / "pwned"
    arg = f"touch {marker}" if func is os.system else f"open({str(marker)!r}, 'w').write('x')"
    # the payload sits inside an otherwise valid NVIDIA layout, after real tensors
    G, _ = build_nvidia_generator(res=8, ch=1)
    G.mapping.evil = _Payload(func, arg)
    saved = {k: sys.modules.get(k) for k in FAKE_MODULES}
    sys.modules.update(FAKE_MODULES)
    try:
        b = pickle.dumps({"G_ema": G}, protocol=3)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    p = tmp_path / "evil.pkl"
    p.write_bytes(b)
    with pytest.raises(BRGMError, match=name) as e:
        load_generator(p)
    assert "\n" not in str(e.value) and "refusing" in str(e.value)
    assert not marker.exists()
    # control: the same payload really does create the file when unpickled without restriction
    pickle.loads(pickle.dumps(_Payload(func, arg)))
    assert marker.exists()


def test_truncated_empty_and_non_pickle_files(tmp_path):
    b, _ = nvidia_pickle_bytes(tmp_path / "m", res=8, ch=1)
    cases = {"half.pkl": b[: len(b) // 2], "tiny.pkl": b[:3], "empty.pkl": b"",
             "image.pkl": b"\x89PNG\r\n\x1a\n" + bytes(50), "text.pkl": b"just text"}
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(BRGMError) as e:
            load_generator(p)
        msg = str(e.value)
        assert "\n" not in msg and name in msg and len(msg) < 300, msg
    for name in ("half.pkl", "tiny.pkl"):
        with pytest.raises(BRGMError, match="truncated|not a readable pickle"):
            safe_load_pickle(tmp_path / name)
    with pytest.raises(BRGMError, match="empty"):
        safe_load_pickle(tmp_path / "empty.pkl")


def _pickle_of(G, tmp_path, name="g.pkl"):
    saved = {k: sys.modules.get(k) for k in FAKE_MODULES}
    sys.modules.update(FAKE_MODULES)
    try:
        b = pickle.dumps({"G_ema": G}, protocol=3)
    finally:
        for k, v in saved.items():
            sys.modules.pop(k, None) if v is None else sys.modules.__setitem__(k, v)
    p = tmp_path / name
    p.write_bytes(b)
    return p


def test_unknown_missing_and_unsupported(tmp_path):
    G, _ = build_nvidia_generator(res=8, ch=1)
    G.synthesis.b8.conv0.register_parameter("foo", nn.Parameter(torch.zeros(2)))
    with pytest.raises(BRGMError, match=r"unknown tensors synthesis_network\.b8\.conv0\.foo"):
        load_generator(_pickle_of(G, tmp_path))
    G, _ = build_nvidia_generator(res=8, ch=1)
    del G.synthesis.b8.conv1._buffers["noise_const"]
    with pytest.raises(BRGMError, match=r"missing tensors synthesis_network\.b8\.conv1\.noise_const"):
        load_generator(_pickle_of(G, tmp_path))
    G, _ = build_nvidia_generator(res=8, ch=1, synthesis_extra=dict(architecture="fancy"))
    with pytest.raises(BRGMError, match="architecture='fancy'"):
        load_generator(_pickle_of(G, tmp_path))
    G, _ = build_nvidia_generator(res=8, ch=1)
    G._init_kwargs["c_dim"] = 10  # the constructor arguments say conditional, the weights have no embed
    with pytest.raises(BRGMError, match="missing tensors mapping_network.embed.bias"):
        load_generator(_pickle_of(G, tmp_path))
    G, _ = build_nvidia_generator(res=8, ch=1)
    G.synthesis.b8._buffers["resample_filter"] = torch.ones(4, 4) / 16
    with pytest.raises(BRGMError, match="resample_filter"):
        load_generator(_pickle_of(G, tmp_path))
    # a pickle without G_ema / G
    p = tmp_path / "other.pkl"
    p.write_bytes(pickle.dumps({"weights": collections.OrderedDict(a=1)}))
    with pytest.raises(BRGMError, match="no G_ema or G"):
        load_generator(p)


def test_convert_cli_roundtrip(tmp_path):
    from typer.testing import CliRunner

    from brgm_pyro.cli.app import app
    import brgm_pyro.cli.convert  # noqa: F401 - registers the command

    marker = tmp_path / "ran"
    b, flat = nvidia_pickle_bytes(marker, res=16, ch=3, clamp=256.0)
    src = tmp_path / "net.pkl"
    src.write_bytes(b)
    out = tmp_path / "net.safetensors"
    r = CliRunner().invoke(app, ["convert", str(src), str(out)])
    assert r.exit_code == 0, r.output
    assert not marker.exists()
    A, B = load_generator(src), load_generator(out)
    assert A.config() == B.config()
    ws = torch.randn(2, A.num_ws, A.w_dim, generator=torch.Generator().manual_seed(0))
    assert torch.equal(A(ws), B(ws))
    assert torch.equal(B.w_avg, flat["mapping.w_avg"])
    # bad input: one line on stderr, exit status 2
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b[:100])
    r = CliRunner().invoke(app, ["convert", str(bad), str(tmp_path / "x.safetensors")])
    assert r.exit_code == 2
    assert not (tmp_path / "x.safetensors").exists()


# -- networks of the stylegan3 repository (--cfg=stylegan2), architectures, conditional networks ---------
def _load_built(tmp_path, name="g.pkl", **kw):
    """Write an NVIDIA-layout snapshot pickle (G, D, G_ema, ...) of ``build_nvidia_generator(**kw)``;
    returns (our loaded generator, G_ema's NVIDIA-named tensors in float64, the file)."""
    marker = tmp_path / f"{name}.ran"
    b, flat = nvidia_pickle_bytes(marker, **kw)
    path = tmp_path / name
    path.write_bytes(b)
    G = load_generator(path)
    assert not marker.exists()
    return G, {k: v.double() for k, v in flat.items()}, path


def test_stylegan3_repo_network_keeps_its_default_clamp(tmp_path):
    # stylegan3's train.py --cfg=stylegan2 passes channel_base/channel_max at the top level and leaves
    # conv_clamp=256, num_fp16_res=4 to the class defaults. Biases of +300 push pre-clamp activations
    # far past 256, so reading the clamp wrongly (None) changes the image by hundreds.
    G, st, _ = _load_built(tmp_path, repo="sg3", res=16, ch=3, bias_offset=300.0)
    cfg = G.config()
    assert (cfg["conv_clamp"], cfg["num_fp16_res"], cfg["channel_base"], cfg["channel_max"]) == (256.0, 4, 64, 8)
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(3))
    want = ref.reference_synthesis(st, ws.double(), 16, "const", 256.0)
    unclamped = ref.reference_synthesis(st, ws.double(), 16, "const", None)
    assert (unclamped - want).abs().max() > 100  # what a loader that drops the clamp gets wrong
    got = G.double()(ws.double())
    assert (got - want).abs().max().item() < 1e-9
    G.float()
    rel = ((G(ws).double() - want).abs().max() / want.abs().max()).item()
    assert rel < 1e-6, rel  # float32, relative to an image of magnitude ~256


def test_stylegan3_repo_fp32_network(tmp_path):
    # --fp32: train.py sets num_fp16_res=0 and conv_clamp=None (at the top level too)
    G, st, _ = _load_built(tmp_path, repo="sg3", res=8, ch=1,
                           extra_kwargs=dict(num_fp16_res=0, conv_clamp=None))
    assert (G.config()["conv_clamp"], G.config()["num_fp16_res"]) == (None, 0)


@pytest.mark.parametrize("repo,arch,c_dim,res,clamp", [("ada", "resnet", 0, 16, 0.6), ("ada", "orig", 0, 8, None),
                                                      ("ada", "skip", 10, 32, None), ("sg3", "resnet", 4, 16, None),
                                                      ("sg3", "orig", 0, 16, None)])
def test_architectures_and_conditional_match_reference(tmp_path, repo, arch, c_dim, res, clamp):
    extra = dict(embed=6, layer_features=5) if repo == "sg3" and c_dim else {}
    G, st, path = _load_built(tmp_path, repo=repo, architecture=arch, c_dim=c_dim, res=res, ch=3,
                              clamp=clamp, **extra)
    eff_clamp = 256.0 if repo == "sg3" else clamp
    cfg = G.config()
    assert cfg.get("architecture", "skip") == arch and cfg.get("c_dim", 0) == c_dim
    ws = torch.randn(2, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(5))
    for mode in ("const", "none"):
        G.noise_mode = mode
        want = ref.reference_synthesis(st, ws.double(), res, mode, eff_clamp, arch)
        assert want.abs().max() > 0.1
        assert (G(ws).double() - want).abs().max().item() < 1e-4
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    if c_dim:
        c = torch.nn.functional.one_hot(torch.tensor([0, 2, 3]), c_dim).float()
        want = ref.reference_mapping(st, z.double(), 2, c=c.double())
        assert (G.mapping(z, c).double() - want).abs().max().item() < 1e-4 * want.abs().max().item()
        H = load_generator(path, class_index=2)
        want2 = ref.reference_mapping(st, z.double(), 2, c=torch.nn.functional.one_hot(
            torch.tensor([2] * 3), c_dim).double())
        assert (H.mapping(z).double() - want2).abs().max().item() < 1e-4 * want2.abs().max().item()
        with pytest.raises(BRGMError, match="out of range"):
            load_generator(path, class_index=c_dim)
    else:
        want = ref.reference_mapping(st, z.double(), 2)
        assert (G.mapping(z).double() - want).abs().max().item() < 1e-4 * want.abs().max().item()
        with pytest.raises(BRGMError, match="unconditional"):
            load_generator(path, class_index=0)


def test_stylegan3_alias_free_refused_by_name(tmp_path):
    # config-t/-r generators: top-level magnitude_ema_beta (and conv_kernel...), a SynthesisInput module
    G = NV("Generator", dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                             mapping_kwargs=EasyDict(num_layers=2), channel_base=64, channel_max=8,
                             magnitude_ema_beta=0.999))
    S = NV("SynthesisNetwork", dict(w_dim=8, img_resolution=16, img_channels=3))
    S.input = NV("SynthesisInput", dict(w_dim=8, channels=8, size=36, sampling_rate=16, bandwidth=2))
    S.L0_36_8 = NV("SynthesisLayer", dict(w_dim=8, is_torgb=False))
    G.synthesis = S
    with pytest.raises(BRGMError, match=r"StyleGAN3 \(alias-free\).*not supported") as e:
        load_generator(_pickle_of(G, tmp_path))
    assert "\n" not in str(e.value)
    del G._init_kwargs["magnitude_ema_beta"]  # the structure alone is enough
    with pytest.raises(BRGMError, match="StyleGAN3"):
        load_generator(_pickle_of(G, tmp_path, "g2.pkl"))


def test_config_audit_every_level(tmp_path):
    """Every constructor argument is used or refused by name: one unknown argument at each level,
    the arguments without effect accepted, unsupported values named, and layer attributes that
    contradict the arguments refused."""
    cases = [(dict(repo="ada", extra_kwargs=dict(foo=1)), r"Generator argument foo"),
             (dict(repo="ada", synthesis_extra=dict(foo=1)), r"synthesis_kwargs\.foo"),
             (dict(repo="sg3", extra_kwargs=dict(foo=1)), r"Generator argument foo"),
             (dict(repo="ada", synthesis_extra=dict(kernel_size=5)), r"kernel_size=5"),
             (dict(repo="ada", synthesis_extra=dict(use_noise=False)), r"use_noise=False"),
             (dict(repo="ada", synthesis_extra=dict(activation="relu")), r"synthesis activation='relu'"),
             (dict(repo="ada", synthesis_extra=dict(resample_filter=[1, 1])), r"resample_filter=\[1, 1\]")]
    for i, (kw, pattern) in enumerate(cases):
        G, _ = build_nvidia_generator(res=8, ch=1, **kw)
        with pytest.raises(BRGMError, match=pattern) as e:
            load_generator(_pickle_of(G, tmp_path, f"c{i}.pkl"))
        assert "\n" not in str(e.value), str(e.value)
    for repo in ("ada", "sg3"):  # mapping level
        G, _ = build_nvidia_generator(res=8, ch=1, repo=repo)
        G._init_kwargs["mapping_kwargs"]["foo"] = 1
        with pytest.raises(BRGMError, match=r"mapping_kwargs\.foo"):
            load_generator(_pickle_of(G, tmp_path, f"m{repo}.pkl"))
        G._init_kwargs["mapping_kwargs"] = EasyDict(num_layers=2, activation="linear")
        with pytest.raises(BRGMError, match=r"mapping activation='linear'"):
            load_generator(_pickle_of(G, tmp_path, f"a{repo}.pkl"))
        G._init_kwargs["mapping_kwargs"] = EasyDict(num_layers=2, w_avg_beta=None)
        with pytest.raises(BRGMError, match=r"w_avg_beta=None"):
            load_generator(_pickle_of(G, tmp_path, f"w{repo}.pkl"))
    # arguments that change nothing in inference are accepted
    G, _ = build_nvidia_generator(res=8, ch=1, synthesis_extra=dict(fp16_channels_last=True))
    G._init_kwargs["mapping_kwargs"]["w_avg_beta"] = 0.998
    assert load_generator(_pickle_of(G, tmp_path, "ok.pkl")).num_ws == 4
    # an ada-pytorch record whose layers clamp although its arguments do not: refused, not guessed
    G, _ = build_nvidia_generator(res=8, ch=1)
    G.synthesis.b8.conv0.conv_clamp = 256
    with pytest.raises(BRGMError, match=r"synthesis\.b8\.conv0\.conv_clamp=256 \(arguments give None\)"):
        load_generator(_pickle_of(G, tmp_path, "dis.pkl"))


def test_convert_roundtrips_new_kinds(tmp_path):
    from typer.testing import CliRunner

    from brgm_pyro.cli.app import app
    import brgm_pyro.cli.convert  # noqa: F401 - registers the command

    kinds = [dict(repo="sg3", res=16, ch=3), dict(repo="ada", architecture="resnet", c_dim=3, res=16, ch=1),
             dict(repo="ada", architecture="orig", res=8, ch=3, clamp=0.5)]
    for i, kw in enumerate(kinds):
        A, st, src = _load_built(tmp_path, name=f"k{i}.pkl", **kw)
        out = tmp_path / f"k{i}.safetensors"
        r = CliRunner().invoke(app, ["convert", str(src), str(out)])
        assert r.exit_code == 0, r.output
        B = load_generator(out)
        assert A.config() == B.config()
        ws = torch.randn(2, A.num_ws, A.w_dim, generator=torch.Generator().manual_seed(0))
        assert torch.equal(A(ws), B(ws))
        z = torch.randn(2, 8)
        c = torch.eye(3)[:2] if kw.get("c_dim") else None
        assert torch.equal(A.mapping(z, c), B.mapping(z, c))
        assert torch.equal(A.w_avg, B.w_avg)
