"""Unpickle NVIDIA network pickles without executing anything from them (the safe unpickler).

:class:`RestrictedUnpickler` resolves exactly the globals listed in :data:`ALLOWED_GLOBALS`, each to
a function of ours (never to the named object, except the harmless containers ``set``,
``frozenset``, ``OrderedDict``); any other global is refused in ``find_class``, i.e. before any
object is called, with a :class:`~brgm_pyro.errors.BRGMError` naming it. A PyTorch network becomes a
:class:`PersistentRecord` (its state, not executed), a TensorFlow one a :class:`TFNetworkRecord`, a
numpy array an :class:`NDArrayRecord`. Storage bytes are decoded with ``torch.load(weights_only=True)``,
torch's own allow-list loader; numpy arrays with ``numpy.frombuffer`` on their raw bytes, numeric dtypes
only. :mod:`~brgm_pyro.models.generators.nvidia_pickle` (PyTorch) and
:mod:`~brgm_pyro.models.generators.tf_pickle` (TensorFlow) map the records onto our generator.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import warnings
from pathlib import Path
from typing import Any, Dict

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError

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


__all__ = ["RestrictedUnpickler", "PersistentRecord", "TFNetworkRecord", "NDArrayRecord", "EasyDict", "ALLOWED_GLOBALS",
           "safe_load_pickle"]
