"""Read NVIDIA StyleGAN2 network pickles without executing anything from them.

PyTorch pickles of stylegan2-ada-pytorch (``training/networks.py``) and of the stylegan3 repository's
StyleGAN2 (``training/networks_stylegan2.py``, ``--cfg=stylegan2``) are mapped here; TensorFlow
pickles (stylegan2, stylegan2-ada) are unpickled here and mapped by
:mod:`~brgm_pyro.models.generators.tf_pickle`. StyleGAN3 (alias-free) generators are refused by name.

An NVIDIA pickle (``network-snapshot-*.pkl``, ``ffhq.pkl``, ...) is a plain pickle of a dict such as
``{'G': ..., 'D': ..., 'G_ema': ..., 'augment_pipe': ..., 'training_set_kwargs': ...}``. Every
network in it is a *persistence record*: the pickle calls
``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with
``meta = {'type': 'class', 'version': 6, 'module_src': <source text of networks.py>,
'class_name': 'Generator', 'state': <the module's __dict__>}``. NVIDIA's function ``exec``s
``module_src``; ours (:class:`PersistentRecord`) only keeps the dict. The state of a module holds
``_init_args``/``_init_kwargs`` (the constructor arguments, ``dnnlib.util.EasyDict``), the
``_parameters``/``_buffers``/``_modules`` ordered dicts (sub-modules are records again) and plain
attributes (some numpy scalars). Tensors are pickled the way torch pickles them:
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)`` with the
storage from ``torch.storage._load_from_bytes(<legacy torch.save bytes of one storage>)``;
parameters through ``torch._utils._rebuild_parameter``.

:class:`~brgm_pyro.models.generators.safe_pickle.RestrictedUnpickler` (its own module) resolves exactly the globals listed in :data:`ALLOWED_GLOBALS`, each to
a function of ours (never to the named object, except the harmless containers ``set``,
``frozenset``, ``OrderedDict``); any other global is refused in ``find_class``, i.e. before any
object is called, with a :class:`~brgm_pyro.errors.BRGMError` naming it. Storage bytes are decoded
with ``torch.load(weights_only=True)``, torch's own allow-list loader; numpy arrays (TF pickles) with
``numpy.frombuffer`` on their raw bytes, numeric dtypes only.

:func:`generator_from_record` reads the constructor arguments from the ``G_ema`` record
(:func:`config_from_record`: every argument used or refused by name, the two repositories' layouts and
defaults, the record's layer attributes checked against the result) and maps every parameter and
buffer onto :class:`~brgm_pyro.models.generators.stylegan2.StyleGAN2Generator`; unknown, missing or
mis-shaped tensors are an error that names them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.safe_pickle import (ALLOWED_GLOBALS, NDArrayRecord,  # noqa: F401 (re-exported)
                                                     PersistentRecord, RestrictedUnpickler, TFNetworkRecord,
                                                     safe_load_pickle)
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator, check_state_dict, setup_filter

# -- from a record to our generator ------------------------------------------------------------------

_G_ARGS = ("z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs")

# Every constructor argument an NVIDIA StyleGAN2 Generator pickle can carry, by where it goes
# (stylegan2-ada-pytorch training/networks.py; stylegan3 training/networks_stylegan2.py). Each one is
# used, or checked and refused by name where our model would compute something else; names outside
# these sets are refused as unknown.
_TOP_ARGS = {"z_dim", "c_dim", "w_dim", "img_resolution", "img_channels", "mapping_kwargs", "synthesis_kwargs"}
_MAPPING_ARGS = {"num_layers", "embed_features", "layer_features", "activation", "lr_multiplier", "w_avg_beta"}
_SYNTHESIS_ARGS = {"channel_base", "channel_max", "num_fp16_res",  # SynthesisNetwork
                   "architecture", "resample_filter", "conv_clamp", "fp16_channels_last",  # SynthesisBlock
                   "fused_modconv_default",  # SynthesisBlock (stylegan3 repository only)
                   "kernel_size", "use_noise", "activation"}  # SynthesisLayer
# Of these, w_avg_beta (the training-time decay of w_avg), fp16_channels_last (memory layout) and
# fused_modconv_default (fused vs. non-fused modulated convolution, the same function) change no output.
# StyleGAN3 (alias-free, networks_stylegan3.py) constructor arguments and sub-modules.
_SG3_ARGS = {"magnitude_ema_beta", "conv_kernel", "use_radial_filters", "num_critical", "first_cutoff",
             "first_stopband", "last_stopband_rel", "margin_size", "output_scale", "filter_size",
             "lrelu_upsampling"}
# Defaults that differ between the two repositories' StyleGAN2 code.
_DEFAULTS = {"stylegan2-ada-pytorch": dict(num_fp16_res=0, conv_clamp=None),
             "stylegan3": dict(num_fp16_res=4, conv_clamp=256.0)}
STYLEGAN3_REFUSAL = ("this is a StyleGAN3 (alias-free) generator (NVIDIA's networks_stylegan3); StyleGAN3 "
                     "networks are not supported, only StyleGAN2 ones (stylegan2-ada-pytorch, TensorFlow "
                     "stylegan2/stylegan2-ada, or stylegan3's --cfg=stylegan2)")


def _record_tensors(rec: PersistentRecord, prefix: str = "") -> Dict[str, Tensor]:
    """Flatten a record tree into {NVIDIA dotted name: tensor} from _parameters and _buffers."""
    out: Dict[str, Tensor] = {}
    for group in ("_parameters", "_buffers"):
        for name, t in (rec.state.get(group) or {}).items():
            if t is None:
                continue
            if not isinstance(t, Tensor):
                raise BRGMError(f"malformed NVIDIA pickle: {prefix}{name} is a {type(t).__name__}, not a tensor")
            out[prefix + name] = t.detach()
    for name, sub in (rec.state.get("_modules") or {}).items():
        if sub is None:
            continue
        if not isinstance(sub, PersistentRecord):
            raise BRGMError(f"malformed NVIDIA pickle: sub-module {prefix}{name} is a "
                            f"{type(sub).__name__}, not a persistence record")
        out.update(_record_tensors(sub, f"{prefix}{name}."))
    return out


def _kwargs(rec: PersistentRecord) -> Dict[str, Any]:
    args = rec.state.get("_init_args") or ()
    kw = dict(rec.state.get("_init_kwargs") or {})
    for name, value in zip(_G_ARGS, args):
        kw.setdefault(name, value)
    return kw


def _split_kwargs(rec: PersistentRecord) -> tuple[str, Dict[str, Any], Dict[str, Any], Dict[str, Any]]:
    """(repository, top-level, mapping and synthesis kwargs). stylegan2-ada-pytorch's Generator takes
    ``synthesis_kwargs={...}``; the stylegan3 repository's takes them as ``**synthesis_kwargs``."""
    kw = _kwargs(rec)
    mk = dict(kw.pop("mapping_kwargs", None) or {})
    if "synthesis_kwargs" in kw:
        return "stylegan2-ada-pytorch", kw, mk, dict(kw.pop("synthesis_kwargs") or {})
    sk = {k: kw.pop(k) for k in list(kw) if k not in _TOP_ARGS}
    return "stylegan3", kw, mk, sk


def _refuse_stylegan3(rec: PersistentRecord, names) -> None:
    syn = (rec.state.get("_modules") or {}).get("synthesis")
    subs = (syn.state.get("_modules") or {}) if isinstance(syn, PersistentRecord) else {}
    sg3_layers = any(isinstance(m, PersistentRecord) and m.class_name == "SynthesisInput" for m in subs.values())
    if sg3_layers or "input" in subs or (set(names) & _SG3_ARGS):
        raise BRGMError(STYLEGAN3_REFUSAL)


def config_from_record(rec: PersistentRecord) -> dict:
    """StyleGAN2Generator constructor kwargs from NVIDIA's Generator record (its init kwargs).

    Every argument is used, or refused by name (unknown ones too); the record's layer attributes
    (what NVIDIA's forward pass reads) are then checked against the result.
    """
    if rec.class_name != "Generator":
        raise BRGMError(f"the network record is a {rec.class_name!r}, not NVIDIA's StyleGAN2 'Generator'")
    repo, top, mk, sk = _split_kwargs(rec)
    _refuse_stylegan3(rec, set(top) | set(sk))
    missing = [k for k in ("z_dim", "w_dim", "img_resolution", "img_channels") if k not in top]
    if missing:
        raise BRGMError(f"the Generator record lacks the constructor arguments {', '.join(missing)}")
    syn_name = "synthesis_kwargs.{}" if repo == "stylegan2-ada-pytorch" else "Generator argument {}"
    unknown = ([f"Generator argument {k}" for k in top if k not in _TOP_ARGS]
               + [f"mapping_kwargs.{k}" for k in mk if k not in _MAPPING_ARGS]
               + [syn_name.format(k) for k in sk if k not in _SYNTHESIS_ARGS])
    if unknown:
        raise BRGMError(f"unknown StyleGAN2 constructor arguments in the pickle ({repo} layout): "
                        f"{', '.join(unknown)}; refusing rather than guessing what they do")
    _refuse_unsupported(mk, sk)
    cfg = _config(top, mk, sk, _DEFAULTS[repo])
    _check_layer_attributes(rec, cfg)
    return cfg


def _refuse_unsupported(mk: Dict[str, Any], sk: Dict[str, Any]) -> None:
    """Refuse, naming them, the settings our StyleGAN2 does not compute."""
    bad = []
    checks = [(mk, "mapping", "activation", "lrelu"), (sk, "synthesis", "activation", "lrelu"),
              (sk, "synthesis", "resample_filter", [1, 3, 3, 1]), (sk, "synthesis", "use_noise", True),
              (sk, "synthesis", "kernel_size", 3)]
    for kw, level, key, ok in checks:
        if key in kw:
            v = kw[key]
            if (list(v) if isinstance(v, (list, tuple)) else v) != ok:
                bad.append(f"{level} {key}={v!r}")
    if "w_avg_beta" in mk and mk["w_avg_beta"] is None:
        bad.append("mapping w_avg_beta=None (no w_avg is kept)")
    if sk.get("architecture", "skip") not in ("skip", "orig", "resnet"):
        bad.append(f"synthesis architecture={sk['architecture']!r}")
    if bad:
        raise BRGMError(f"unsupported StyleGAN2 settings in the pickle: {', '.join(bad)} "
                        "(implemented: lrelu, the [1,3,3,1] filter, 3x3 kernels, noise inputs, "
                        "skip/orig/resnet architectures)")


def _config(top: Dict[str, Any], mk: Dict[str, Any], sk: Dict[str, Any], defaults: Dict[str, Any]) -> dict:
    c_dim, w_dim = int(top.get("c_dim", 0) or 0), int(top["w_dim"])
    if int(top["z_dim"]) < 1:
        raise BRGMError(f"z_dim={top['z_dim']}: generators without a latent input are not supported")
    clamp = sk.get("conv_clamp", defaults["conv_clamp"])
    embed, layer = mk.get("embed_features"), mk.get("layer_features")
    return dict(z_dim=int(top["z_dim"]), w_dim=w_dim, img_resolution=int(top["img_resolution"]),
                img_channels=int(top["img_channels"]), c_dim=c_dim,
                mapping_layers=int(mk.get("num_layers", 8)), lr_multiplier=float(mk.get("lr_multiplier", 0.01)),
                embed_features=None if c_dim == 0 or embed in (None, w_dim) else int(embed),
                layer_features=None if layer in (None, w_dim) else int(layer),
                channel_base=int(sk.get("channel_base", 32768)), channel_max=int(sk.get("channel_max", 512)),
                num_fp16_res=int(sk.get("num_fp16_res", defaults["num_fp16_res"])),
                conv_clamp=None if clamp is None else float(clamp),
                architecture=str(sk.get("architecture", "skip")))


def _check_layer_attributes(rec: PersistentRecord, cfg: dict) -> None:
    """NVIDIA's forward pass reads the unpickled attributes (the constructor is not re-run): where
    the record has them, they must be what ``cfg`` builds (else: refuse, naming the first three)."""
    syn = (rec.state.get("_modules") or {}).get("synthesis")
    if not isinstance(syn, PersistentRecord):
        return
    log2 = int(cfg["img_resolution"]).bit_length() - 1
    fp16_res = max(2 ** (log2 + 1 - cfg["num_fp16_res"]), 8)
    clamp = cfg["conv_clamp"]
    bad = []
    for bname, block in (syn.state.get("_modules") or {}).items():
        if not isinstance(block, PersistentRecord):
            continue
        st, r = block.state, int(bname[1:]) if bname[1:].isdigit() else 0
        want = {"architecture": cfg["architecture"], "use_fp16": r >= fp16_res}
        bad += [f"synthesis.{bname}.{k}={st[k]!r} (arguments give {v!r})" for k, v in want.items()
                if k in st and st[k] != v]
        for lname, layer in (st.get("_modules") or {}).items():
            if isinstance(layer, PersistentRecord) and lname != "skip" and "conv_clamp" in layer.state:
                got = layer.state["conv_clamp"]
                if (None if got is None else float(got)) != clamp:
                    bad.append(f"synthesis.{bname}.{lname}.conv_clamp={got!r} (arguments give {clamp!r})")
    if bad:
        raise BRGMError("the pickle's layer attributes disagree with its constructor arguments: "
                        f"{', '.join(bad[:3])}; refusing rather than guessing which one NVIDIA's code used")


def nvidia_to_ours(tensors: Dict[str, Tensor], G: StyleGAN2Generator) -> Dict[str, Tensor]:
    """Map NVIDIA names (``synthesis.b4.conv1.weight``, ``mapping.fc0.bias``, ``mapping.w_avg``)
    onto ``G``'s state dict names; check resampling filters; error on unknown/missing/mis-shaped."""
    ref_filter = setup_filter()
    out: Dict[str, Tensor] = {}
    for name, t in tensors.items():
        if name.endswith("resample_filter"):
            # Not a weight: a derived buffer. We implement [1,3,3,1] only, so it must be that.
            if t.shape != ref_filter.shape or not torch.allclose(t.float(), ref_filter, atol=1e-6):
                raise BRGMError(f"{name} is not the [1,3,3,1] filter; this resampling filter is not supported")
            continue
        if name == "mapping.w_avg":
            ours = "w_avg"
        elif name.startswith("synthesis."):
            ours = "synthesis_network." + name[len("synthesis."):]
        elif name.startswith("mapping."):
            ours = "mapping_network." + name[len("mapping."):]
        else:
            ours = name
        out[ours] = t
    check_state_dict(out, G)
    return out


def generator_from_record(rec: PersistentRecord) -> StyleGAN2Generator:
    """Build our StyleGAN2Generator from NVIDIA's Generator record (weights copied, fp32)."""
    cfg = config_from_record(rec)
    tensors = _record_tensors(rec)
    G = StyleGAN2Generator(**cfg, seed=None)
    state = nvidia_to_ours(tensors, G)
    with torch.no_grad():
        G.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    G.eval()
    return G


def load_nvidia_pickle(path: str | Path, key: Optional[str] = None) -> StyleGAN2Generator:
    """Load the generator ``key`` (default ``G_ema``, else ``G``) of an NVIDIA network pickle.

    PyTorch pickles (a dict of persistence records) and TensorFlow ones (NVIDIA's tuple
    ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network``; ``Gs`` is their G_ema) are both read.
    """
    data = safe_load_pickle(path)
    if _is_tf(data):
        from brgm_pyro.models.generators.tf_pickle import generator_from_tf, pick_tf_network

        try:
            return generator_from_tf(pick_tf_network(data, key))
        except BRGMError as e:
            raise BRGMError(f"{path}: {e}") from None
    if isinstance(data, PersistentRecord):
        rec = data
    elif isinstance(data, dict):
        keys = [key] if key else ["G_ema", "G"]
        rec = next((data[k] for k in keys if k in data), None)
        if rec is None:
            raise BRGMError(f"{path} holds no {' or '.join(keys)} network (its keys: "
                            f"{', '.join(map(str, data))})")
    else:
        raise BRGMError(f"{path} holds a {type(data).__name__}, not NVIDIA's dict of networks")
    if not isinstance(rec, PersistentRecord):
        raise BRGMError(f"{path}: the generator entry is a {type(rec).__name__}, not a persistence record")
    try:
        return generator_from_record(rec)
    except BRGMError as e:
        raise BRGMError(f"{path}: {e}") from None


def _is_tf(data: Any) -> bool:
    return isinstance(data, TFNetworkRecord) or (
        isinstance(data, tuple) and len(data) > 0 and all(isinstance(n, TFNetworkRecord) for n in data))


__all__ = ["RestrictedUnpickler", "PersistentRecord", "TFNetworkRecord", "NDArrayRecord", "ALLOWED_GLOBALS",
           "safe_load_pickle", "check_state_dict",
           "config_from_record", "nvidia_to_ours", "generator_from_record", "load_nvidia_pickle"]
