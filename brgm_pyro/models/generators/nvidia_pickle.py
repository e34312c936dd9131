"""Read NVIDIA stylegan2-ada-pytorch network pickles without executing anything from them.

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
with ``torch.load(weights_only=True)``, torch's own allow-list loader.

:func:`generator_from_record` reads the constructor arguments from the ``G_ema`` record and maps
every parameter and buffer onto :class:`~brgm_pyro.models.generators.stylegan2.StyleGAN2Generator`;
unknown, missing or mis-shaped tensors are an error that names them.
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
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only :data:`ALLOWED_GLOBALS` (to our stand-ins)."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            hint = ""
            if module.startswith("dnnlib.tflib"):
                hint = " (this is a TensorFlow StyleGAN pickle; convert it with NVIDIA's legacy.py first)"
            raise BRGMError(f"refusing to load: the pickle references the global {module}.{name}, which "
                            f"is not needed to rebuild NVIDIA network weights{hint}") from None

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
# Constructor arguments that do not change the function computed in inference (or are defaults we use).
_IGNORED_KW = {"fp16_channels_last", "channels_last", "epochs", "w_avg_beta", "num_ws"}


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


def config_from_record(rec: PersistentRecord) -> dict:
    """StyleGAN2Generator constructor kwargs from NVIDIA's Generator record (its init kwargs)."""
    if rec.class_name != "Generator":
        raise BRGMError(f"the network record is a {rec.class_name!r}, not NVIDIA's StyleGAN2 'Generator'")
    kw = _kwargs(rec)
    missing = [k for k in ("z_dim", "w_dim", "img_resolution", "img_channels") if k not in kw]
    if missing:
        raise BRGMError(f"the Generator record lacks the constructor arguments {', '.join(missing)}")
    if int(kw.get("c_dim", 0) or 0) != 0:
        raise BRGMError(f"conditional generators (c_dim={kw['c_dim']}) are not supported; "
                        "use an unconditional StyleGAN2-ADA network")
    mk = dict(kw.get("mapping_kwargs") or {})
    sk = dict(kw.get("synthesis_kwargs") or {})
    cfg = dict(z_dim=int(kw["z_dim"]), w_dim=int(kw["w_dim"]), img_resolution=int(kw["img_resolution"]),
               img_channels=int(kw["img_channels"]), mapping_layers=int(mk.pop("num_layers", 8)),
               lr_multiplier=float(mk.pop("lr_multiplier", 0.01)),
               channel_base=int(sk.pop("channel_base", 32768)), channel_max=int(sk.pop("channel_max", 512)),
               num_fp16_res=int(sk.pop("num_fp16_res", 0)),
               conv_clamp=None if sk.get("conv_clamp") is None else float(sk["conv_clamp"]))
    sk.pop("conv_clamp", None)
    unsupported = []
    for key, ok in (("embed_features", None), ("layer_features", (None, cfg["w_dim"])),
                    ("activation", "lrelu")):
        if key in mk:
            v = mk.pop(key)
            if key == "embed_features":
                continue  # unused when c_dim = 0
            if v not in (ok if isinstance(ok, tuple) else (ok,)):
                unsupported.append(f"mapping {key}={v!r}")
    for key, ok in (("architecture", "skip"), ("resample_filter", [1, 3, 3, 1]), ("use_noise", True),
                    ("activation", "lrelu"), ("kernel_size", 3)):
        if key in sk:
            v = sk.pop(key)
            if (list(v) if isinstance(v, (list, tuple)) else v) != ok:
                unsupported.append(f"synthesis {key}={v!r}")
    if unsupported:
        raise BRGMError(f"unsupported StyleGAN2 settings in the pickle: {', '.join(unsupported)} "
                        "(only the skip architecture of config-e/f is implemented)")
    unknown = sorted(k for k in list(mk) + list(sk) if k not in _IGNORED_KW)
    if unknown:
        raise BRGMError(f"unknown StyleGAN2 constructor arguments in the pickle: {', '.join(unknown)}")
    return cfg


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
    expected = G.state_dict()
    unknown = sorted(k for k in out if k not in expected)
    missing = sorted(k for k in expected if k not in out)
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown tensors {_few(unknown)}")
        if missing:
            parts.append(f"missing tensors {_few(missing)}")
        raise BRGMError("the weights do not match a StyleGAN2 of this configuration: " + "; ".join(parts))
    for k, v in expected.items():
        if tuple(out[k].shape) != tuple(v.shape):
            raise BRGMError(f"tensor {k} has shape {tuple(out[k].shape)}, expected {tuple(v.shape)}")
    return out


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
    """Load the generator ``key`` (default ``G_ema``, else ``G``) of an NVIDIA network pickle."""
    data = safe_load_pickle(path)
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


__all__ = ["RestrictedUnpickler", "PersistentRecord", "ALLOWED_GLOBALS", "safe_load_pickle",
           "config_from_record", "nvidia_to_ours", "generator_from_record", "load_nvidia_pickle"]
