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

:class:`RestrictedUnpickler` resolves exactly the globals listed in :data:`ALLOWED_GLOBALS`, each to
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

import collections
import io
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator, setup_filter

# -- stand-ins for the globals an NVIDIA pickle names ----------------------------------------------


class PersistentRecord:
    """What ``_reconstruct_persistent_obj(meta)`` becomes here: the record, not executed.

    Attributes: ``class_name`` (str), ``version``, ``module_src`` (str, never run), ``state`` (dict).
    """

    def __init__(self, meta: Any) -> None:
        if not isinstance(meta, dict):
            raise BRGMError("malformed NVIDIA persistence record: its meta data is not a dict")
        self.meta_type = meta.get("type")
        self.version = meta.get("version")
        self.class_name = meta.get("class_name")
        self.module_src = meta.get("module_src")
        state = meta.get("state")
        self.state: Dict[str, Any] = dict(state) if isinstance(state, dict) else {}

    def __repr__(self) -> str:
        return f"PersistentRecord({self.class_name!r}, version={self.version!r})"


def _reconstruct_persistent_obj(meta):
    return PersistentRecord(meta)


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict`` (a dict with attribute access; data only)."""


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise BRGMError("malformed tensor in the pickle: its storage is not a torch storage")
    if not (isinstance(storage_offset, int) and isinstance(size, tuple) and isinstance(stride, tuple)):
        raise BRGMError("malformed tensor in the pickle: bad offset, size or stride")
    t = torch.empty(0, dtype=storage.dtype)
    t.set_(storage.untyped, storage_offset, torch.Size(size), tuple(stride))
    return t


def _rebuild_parameter(data, requires_grad=True, backward_hooks=None, *state):
    if not isinstance(data, Tensor):
        raise BRGMError("malformed parameter in the pickle: its data is not a tensor")
    return torch.nn.Parameter(data, requires_grad=bool(requires_grad))


class _Storage:
    """A decoded storage: ``untyped`` (torch.UntypedStorage) and ``dtype``."""

    def __init__(self, untyped, dtype) -> None:
        self.untyped, self.dtype = untyped, dtype


def _load_from_bytes(b):
    """Decode one storage pickled by ``torch.storage`` (legacy ``torch.save`` bytes) safely."""
    if not isinstance(b, (bytes, bytearray)):
        raise BRGMError("malformed tensor storage in the pickle: expected bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TypedStorage deprecation notices
            s = torch.load(io.BytesIO(bytes(b)), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure is a bad file
        raise BRGMError(f"a tensor storage in the pickle could not be decoded "
                        f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if isinstance(s, torch.UntypedStorage):
        return _Storage(s, torch.uint8)
    if hasattr(s, "_untyped_storage") and hasattr(s, "dtype"):
        return _Storage(s._untyped_storage, s.dtype)
    raise BRGMError(f"a tensor storage in the pickle decoded to {type(s).__name__}, not a storage")


class _NumpyDType:
    """Stand-in for ``numpy.dtype(spec, align, copy)`` + its ``__setstate__`` (byte order only)."""

    def __init__(self, spec="f8", align=False, copy=True) -> None:
        self.spec, self.byteorder = str(spec), "<"

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]


_SCALAR_FORMATS = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
                   "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}


def _numpy_scalar(dtype, data=None):
    """Stand-in for ``numpy.core.multiarray.scalar``: numeric scalars only, as Python numbers."""
    if not isinstance(dtype, _NumpyDType) or dtype.spec not in _SCALAR_FORMATS:
        spec = getattr(dtype, "spec", type(dtype).__name__)
        raise BRGMError(f"the pickle holds a numpy scalar of type {spec!r}; only numeric scalars are read")
    if isinstance(data, str):  # protocol 2 writes the bytes as a latin-1 string
        data = data.encode("latin-1")
    fmt = (">" if dtype.byteorder == ">" else "<") + _SCALAR_FORMATS[dtype.spec]
    try:
        (value,) = struct.unpack(fmt, data)
    except (struct.error, TypeError):
        raise BRGMError("malformed numpy scalar in the pickle") from None
    return value


class _NDArrayType:
    """Stand-in for the class ``numpy.ndarray`` (only ever passed to :func:`_ndarray_reconstruct`)."""


class NDArrayRecord:
    """What a pickled numpy array becomes here: ``array`` (a numeric numpy array, copied).

    ``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` creates it empty and pickle's BUILD
    then calls :meth:`__setstate__` with ``(version, shape, dtype, is_fortran, rawdata)``; protocol 5
    uses ``numpy.core.numeric._frombuffer(buffer, dtype, shape, order)`` instead. Only numeric dtypes
    are decoded (``numpy.frombuffer`` on the raw bytes); object arrays are refused.
    """

    def __init__(self) -> None:
        self.array = None

    def __setstate__(self, state) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise BRGMError("malformed numpy array in the pickle")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _decode_array(raw, dtype, shape, "F" if fortran else "C")


def _decode_array(raw, dtype, shape, order):
    import numpy as np

    if not isinstance(dtype, _NumpyDType) or dtype.spec not in _SCALAR_FORMATS:
        spec = getattr(dtype, "spec", type(dtype).__name__)
        raise BRGMError(f"the pickle holds a numpy array of type {spec!r}; only numeric arrays are read")
    if isinstance(raw, str):  # protocol 2 without _codecs
        raw = raw.encode("latin-1")
    if not isinstance(raw, (bytes, bytearray)) or not isinstance(shape, tuple) or order not in ("C", "F"):
        raise BRGMError("malformed numpy array in the pickle (its data is not raw bytes)")
    try:
        flat = np.frombuffer(bytes(raw), dtype=np.dtype(dtype.byteorder.replace("|", "=") + dtype.spec))
        return flat.reshape(tuple(int(n) for n in shape), order=order).copy()
    except (ValueError, TypeError):
        raise BRGMError("malformed numpy array in the pickle (its size does not match its shape)") from None


def _ndarray_reconstruct(subtype, shape=None, dtype_code=None):
    if subtype is not _NDArrayType:
        raise BRGMError("the pickle reconstructs a numpy array of an unexpected type")
    return NDArrayRecord()


def _ndarray_frombuffer(buf, dtype, shape, order="C"):
    rec = NDArrayRecord()
    rec.array = _decode_array(buf, dtype, shape, order)
    return rec


class TFNetworkRecord:
    """What a pickled TensorFlow ``dnnlib.tflib.network.Network`` becomes here: its state, not run.

    NVIDIA's ``Network.__getstate__`` writes ``{'version': 4, 'name', 'static_kwargs' (the build
    function's arguments), 'components' (sub-networks, e.g. mapping and synthesis),
    'build_module_src' (source text; NVIDIA's ``__setstate__`` execs it, we never do),
    'build_func_name', 'variables' (list of (TF variable name, numpy array))}``.
    """

    def __init__(self) -> None:
        self.state: Dict[str, Any] = {}

    def __setstate__(self, state) -> None:
        if not isinstance(state, dict):
            raise BRGMError("malformed TensorFlow network in the pickle: its state is not a dict")
        self.state = dict(state)

    def __repr__(self) -> str:
        return f"TFNetworkRecord({self.state.get('name')!r}, {self.state.get('build_func_name')!r})"


def _codecs_encode(text, encoding="utf-8"):
    # Protocol 2 pickles bytes as _codecs.encode(str, 'latin1'); allow exactly that.
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise BRGMError("the pickle calls _codecs.encode with arguments other than (str, 'latin1')")
    return text.encode("latin-1")


ALLOWED_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDict,
    ("dnnlib", "EasyDict"): EasyDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("_codecs", "encode"): _codecs_encode,
    # TensorFlow StyleGAN2 pickles (NVIDIA's stylegan2 and stylegan2-ada TF code): see tf_pickle.py.
    ("dnnlib.tflib.network", "Network"): TFNetworkRecord,
    ("numpy", "ndarray"): _NDArrayType,
    ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _ndarray_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _ndarray_frombuffer,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (to our stand-ins)."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise BRGMError(f"refusing to load: the pickle references the global {module}.{name}, which "
                            f"is not needed to rebuild NVIDIA network weights") from None

    def persistent_load(self, pid):
        raise BRGMError("refusing to load: the pickle uses persistent ids (not an NVIDIA network pickle)")


def safe_load_pickle(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; every failure is a one-line BRGMError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BRGMError(f"cannot read {path}: {e.strerror or e}") from None
    if not data:
        raise BRGMError(f"{path} is empty; expected an NVIDIA network pickle (.pkl)")
    if data[:1] != b"\x80":
        raise BRGMError(f"{path} is not a pickle (it does not start with a pickle protocol header); "
                        f"expected an NVIDIA network pickle (.pkl)")
    try:
        return RestrictedUnpickler(io.BytesIO(data)).load()
    except BRGMError as e:
        raise BRGMError(f"{path}: {e}") from None
    except EOFError:
        raise BRGMError(f"{path} is truncated (the pickle ends early); download or copy it again") from None
    except RecursionError:
        raise BRGMError(f"{path} is nested too deeply to be a network pickle") from None
    except Exception as e:  # noqa: BLE001 - UnpicklingError, ValueError, ... from corrupt data
        msg = str(e).splitlines()[0][:200] if str(e) else ""
        raise BRGMError(f"{path} is not a readable pickle ({type(e).__name__}: {msg}); "
                        f"expected an NVIDIA network pickle (.pkl)") from None


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


def check_state_dict(state: Dict[str, Tensor], G: StyleGAN2Generator) -> None:
    """Error naming unknown, missing or mis-shaped tensors of ``state`` (our names) for ``G``."""
    expected = G.state_dict()
    unknown = sorted(k for k in state if k not in expected)
    missing = sorted(k for k in expected if k not in state)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown tensors {_few(unknown)}")
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        raise BRGMError("the weights do not match a StyleGAN2 of this configuration: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise BRGMError(f"tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(v.shape)}")


def _few(names, n: int = 6) -> str:
    shown = ", ".join(names[:n])
    return shown + (f" and {len(names) - n} more" if len(names) > n else "")


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
