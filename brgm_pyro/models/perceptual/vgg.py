"""A user's own VGG16 as the perceptual network, loaded from a local file without executing it.

Two formats are read:

* NVIDIA's TorchScript ``vgg16.pt`` (the LPIPS-calibrated VGG16 of the StyleGAN2-ADA metrics; the
  original is called as ``vgg16(img, resize_images=False, return_lpips=True)`` on images in
  0..255). A TorchScript file is a zip archive holding a pickle of the module tree
  (``*/data.pkl``), raw tensor storages (``*/data/<key>``) and TorchScript code. We never run
  the code and never call ``torch.jit.load``: a restricted unpickler rebuilds only plain
  containers and tensors (any other global in the pickle is refused), then the tensors are
  matched by shape to our own :class:`VGG16LPIPS` module: 13 3x3 convolutions chaining from 3
  input channels (any widths), and, when present, 5 non-negative LPIPS layer weights with the
  channel counts of the 5 tapped layers.
* A torchvision-layout VGG16 state dict (``features.{0,2,5,...,28}.weight/bias``; a ``.pth``/``.pt``
  file read with ``torch.load(weights_only=True)`` or a ``.safetensors`` file); the LPIPS linear
  weights of Zhang et al. (``lin{0..4}.model.1.weight``, shape (1, C, 1, 1)) are used when the
  same file, or ``lpips_path``, holds them; otherwise every channel weighs 1.

Computation (our reconstruction of LPIPS, Zhang et al. 2018): images in 0..255 are mapped to
[-1, 1], shifted and scaled per channel by LPIPS' constants (shift ``[-0.030, -0.088, -0.188]``,
scale ``[0.458, 0.448, 0.450]``; equal to the ImageNet normalisation), passed through VGG16's
convolutions (ReLU, 2x2 max-pooling after conv 2, 4, 7, 10); the outputs of ReLU 1_2, 2_2, 3_3,
4_3, 5_3 are unit-normalised along channels, multiplied by ``sqrt(w_l)`` (per channel) and by
``1 / sqrt(H_l W_l)``, flattened and concatenated. ``||f(a) - f(b)||^2`` is then the LPIPS
distance. How NVIDIA's file preprocesses internally cannot be checked without executing it; the
above is what its documented use (0..255 input, squared feature distance = LPIPS) implies.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError

VGG16_CHANNELS = (64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512)
POOL_AFTER = (1, 3, 6, 9)  # 0-based conv indices followed by 2x2 max-pooling
TAPS = (1, 3, 6, 9, 12)  # 0-based conv indices whose ReLU output LPIPS uses
TORCHVISION_CONV_IDX = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


class VGG16LPIPS(nn.Module):
    """VGG16 convolutions + LPIPS layer weights (our module; weights come from a file).

    Args:
        channels: the 13 output widths (VGG16: :data:`VGG16_CHANNELS`; tests use narrower ones).
        lpips_weights: 5 tensors (C_l,) for the tapped layers, or None for all ones.
    Call as NVIDIA's: ``forward(img (B, 3, H, W) in 0..255, resize_images=False, return_lpips=True)``
    -> (B, D) LPIPS features (``return_lpips=False`` gives the raw relu5_3 map flattened).
    """

    def __init__(self, channels=VGG16_CHANNELS, lpips_weights: Optional[list[Tensor]] = None) -> None:
        super().__init__()
        if len(channels) != 13:
            raise BRGMError(f"VGG16 has 13 convolutions, got {len(channels)} widths")
        self.channels = tuple(int(c) for c in channels)
        cin = 3
        self.convs = nn.ModuleList()
        for c in self.channels:
            self.convs.append(nn.Conv2d(cin, c, 3, padding=1))
            cin = c
        self.has_lpips_weights = lpips_weights is not None
        for k, t in enumerate(TAPS):
            w = torch.ones(self.channels[t]) if lpips_weights is None else \
                lpips_weights[k].detach().float().reshape(-1).clone()
            if w.numel() != self.channels[t]:
                raise BRGMError(f"LPIPS weight {k} has {w.numel()} values, layer has {self.channels[t]} channels")
            self.register_buffer(f"lpips{k}", w)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def taps(self, x_pm1: Tensor) -> list[Tensor]:
        """ReLU outputs of the 5 tapped layers for images (B, 3, H, W) in [-1, 1]."""
        x = (x_pm1 - self.shift) / self.scale
        out = []
        for i, conv in enumerate(self.convs):
            x = F.relu(conv(x))
            if i in TAPS:
                out.append(x)
            if i in POOL_AFTER:
                x = F.max_pool2d(x, 2)
        return out

    def lpips_features(self, x_pm1: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, D) with ``||f(a) - f(b)||^2`` = LPIPS distance."""
        feats = []
        for k, f in enumerate(self.taps(x_pm1)):
            f = f * torch.rsqrt(f.pow(2).sum(1, keepdim=True) + 1e-10)
            w = getattr(self, f"lpips{k}").clamp_min(0).sqrt().view(1, -1, 1, 1)
            feats.append((f * w / (f.shape[-1] * f.shape[-2]) ** 0.5).flatten(1))
        return torch.cat(feats, 1)

    def forward(self, img: Tensor, resize_images: bool = False, return_lpips: bool = True) -> Tensor:
        x = img.float()
        if resize_images:
            x = F.interpolate(x, size=(224, 224), mode="area")
        x = x / 127.5 - 1.0
        if return_lpips:
            return self.lpips_features(x)
        return self.taps(x)[-1].flatten(1)


class VGGPerceptual(nn.Module):
    """``phi`` for the BRGM perceptual likelihood from a VGG16: (B, 3, H, W) in [-1, 1] -> (B, D).

    Images smaller than ``min_size`` (default 64) are resized up to it (bilinear) first, so that
    low-resolution observations (e.g. 8x8) pass the four poolings. Frozen.
    """

    def __init__(self, vgg: VGG16LPIPS, min_size: int = 64) -> None:
        super().__init__()
        self.vgg = vgg
        self.min_size = min_size
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise BRGMError(f"VGG perceptual network expects (B, 3, H, W) images, got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            s = self.min_size / min(h, w)
            x = F.interpolate(x, size=(round(h * s), round(w * s)), mode="bilinear", align_corners=False)
        return self.vgg.lpips_features(x)

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        """LPIPS distance (B,) between image batches in [-1, 1]."""
        return (self(a) - self(b)).pow(2).sum(1)


# ----------------------------------------------------------------------------------------------
# Restricted reading of a TorchScript archive


_DTYPES = {
    "FloatStorage": torch.float32, "DoubleStorage": torch.float64, "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}


def _rebuild_tensor(storage: Tensor, offset: int, size, stride, *rest) -> Tensor:
    if len(size) == 0:
        return storage[offset].clone()
    return torch.as_strided(storage, tuple(size), tuple(stride), offset).clone()


def _rebuild_parameter(data: Tensor, requires_grad: bool = False, *rest) -> Tensor:
    return data


def _as_list(x=()):
    return list(x)


def _restore_type_tag(value, type_str=None):
    return value


# typed containers in TorchScript pickles: rebuilt as plain lists, nothing else
_JIT_LISTS = {"build_intlist": _as_list, "build_doublelist": _as_list, "build_boollist": _as_list,
              "build_tensorlist": _as_list, "build_genericlist": _as_list,
              "restore_type_tag": _restore_type_tag}


def _ordered_dict(*args):
    from collections import OrderedDict

    return OrderedDict(*args)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fp, zf: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(fp)
        self.zf, self.prefix = zf, prefix
        self._cache: dict[str, Tensor] = {}

    def find_class(self, module: str, name: str):
        if module == "__torch__" or module.startswith("__torch__."):
            # torch.jit's pickler emits GLOBAL + EMPTY_TUPLE + NEWOBJ: calling cls.__new__(cls)
            return _ts_type(f"{module}.{name}")
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "collections" and name == "OrderedDict":
            return _ordered_dict
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "torch.jit._pickle" and name in _JIT_LISTS:
            return _JIT_LISTS[name]
        raise BRGMError(f"refusing to load: the file's pickle asks for {module}.{name}, which is not a "
                        "tensor or container (only weights are read; no code is run)")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise BRGMError(f"unsupported storage reference {pid!r} in TorchScript archive")
        dtype, key = pid[1], str(pid[2])
        if not isinstance(dtype, torch.dtype):
            raise BRGMError(f"unsupported storage type {dtype!r} in TorchScript archive")
        if key not in self._cache:
            try:
                raw = self.zf.read(f"{self.prefix}data/{key}")
            except KeyError:
                raise BRGMError(f"TorchScript archive lacks tensor storage data/{key}") from None
            self._cache[key] = torch.frombuffer(bytearray(raw), dtype=dtype) if raw else \
                torch.zeros(0, dtype=dtype)
        return self._cache[key]


_TS_TYPES: dict[str, type] = {}


def _ts_type(qualname: str) -> type:
    """A fresh Python type per TorchScript class name; instances keep only their state."""
    t = _TS_TYPES.get(qualname)
    if t is None:
        t = type("TS_" + re.sub(r"\W", "_", qualname), (_TSObjectBase,), {"ts_class": qualname})
        _TS_TYPES[qualname] = t
    return t


class _TSObjectBase:
    ts_class = ""

    def __init__(self, *args) -> None:
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _walk(obj: Any, path: str, out: list) -> None:
    if isinstance(obj, Tensor):
        out.append((path, obj))
        return
    if isinstance(obj, _TSObjectBase):
        obj = obj.state if obj.state is not None else getattr(obj, "__dict__", {})
    if isinstance(obj, dict):
        for k, v in obj.items():
            _walk(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{path}.{i}" if path else str(i), out)


def read_torchscript_tensors(path: str | Path) -> list[tuple[str, Tensor]]:
    """Named tensors of a TorchScript archive, in pickle order, without executing anything."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BRGMError(f"{str(path)!r} is not a TorchScript archive (zip): {e}") from None
    with zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") <= 1]
        if not pkl:
            raise BRGMError(f"{str(path)!r} has no data.pkl; it is not a TorchScript or torch.save file")
        prefix = pkl[0][: -len("data.pkl")]
        with zf.open(pkl[0]) as f:
            data = io.BytesIO(f.read())
        try:
            root = _RestrictedUnpickler(data, zf, prefix).load()
        except BRGMError:
            raise
        except Exception as e:  # noqa: BLE001
            raise BRGMError(f"cannot read {str(path)!r}: {type(e).__name__}: {e}") from None
    out: list[tuple[str, Tensor]] = []
    _walk(root, "", out)
    return out


def _natural_key(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _match_vgg(named: list[tuple[str, Tensor]], source: str) -> VGG16LPIPS:
    """Build :class:`VGG16LPIPS` from named tensors (conv weights found by shape and name)."""
    weights = [(n, t) for n, t in named if t.ndim == 4 and t.shape[-2:] == (3, 3) and n.endswith("weight")]
    weights.sort(key=lambda nt: _natural_key(nt[0]))
    if len(weights) != 13:
        raise BRGMError(f"{source}: expected the 13 3x3 convolutions of VGG16, found {len(weights)}")
    lookup = dict(named)
    chans, cin = [], 3
    for n, w in weights:
        if w.shape[1] != cin:
            raise BRGMError(f"{source}: convolution {n} takes {w.shape[1]} channels, expected {cin}")
        cin = w.shape[0]
        chans.append(cin)
    conv_names = {n[: -len("weight")] for n, _ in weights}
    lp_named = [(n, t) for n, t in named
                if t.ndim != 4 or t.shape[-2:] == (1, 1)
                if not any(n.startswith(c) for c in conv_names) and "bias" not in n.rsplit(".", 1)[-1]]
    want = [chans[t] for t in TAPS]
    cands = sorted([(n, t) for n, t in lp_named if t.numel() in want and t.dtype.is_floating_point
                    and t.ndim in (1, 3, 4)], key=lambda nt: _natural_key(nt[0]))
    lpips = None
    if len(cands) >= 5:
        picked, k = [], 0
        for n, t in cands:
            if k < 5 and t.numel() == want[k]:
                picked.append(t)
                k += 1
        if k == 5:
            lpips = picked
    vgg = VGG16LPIPS(chans, lpips)
    with torch.no_grad():
        for conv, (n, w) in zip(vgg.convs, weights):
            conv.weight.copy_(w.float())
            b = lookup.get(n[: -len("weight")] + "bias")
            if b is None or b.numel() != w.shape[0]:
                raise BRGMError(f"{source}: convolution {n} has no bias of {w.shape[0]} values")
            conv.bias.copy_(b.float().reshape(-1))
    return vgg


def _load_state_dict_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise BRGMError(f"cannot read {str(path)!r} as a weights-only state dict: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise BRGMError(f"{str(path)!r} does not hold a state dict")
    return sd


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.split("/", 1)[-1].startswith("code/") for n in zf.namelist())


def _torchvision_named(sd: dict, source: str) -> list[tuple[str, Tensor]]:
    out = []
    for k in TORCHVISION_CONV_IDX:
        w, b = sd.get(f"features.{k}.weight"), sd.get(f"features.{k}.bias")
        if w is None or b is None:
            raise BRGMError(f"{source}: not a torchvision VGG16 state dict (no features.{k}.weight/bias)")
        out += [(f"features.{k:02d}.weight", w), (f"features.{k:02d}.bias", b)]
    return out


def _lpips_lins(sd: dict) -> Optional[list[Tensor]]:
    keys = [f"lin{k}.model.1.weight" for k in range(5)]
    if all(k in sd for k in keys):
        return [sd[k].reshape(-1) for k in keys]
    return None


def load_vgg16(path: str | Path, lpips_path: Optional[str | Path] = None) -> VGG16LPIPS:
    """Load a VGG16 (NVIDIA TorchScript ``vgg16.pt`` or torchvision-layout state dict) as
    :class:`VGG16LPIPS`. No code from the file is executed.

    Args:
        path: the VGG16 file.
        lpips_path: optional file with LPIPS linear weights ``lin{0..4}.model.1.weight``
            (torchvision-layout files only; NVIDIA's file carries its own).
    """
    p = Path(path)
    if not p.is_file():
        raise BRGMError(f"VGG16 file {str(p)!r} not found")
    src = f"VGG16 file {str(p)!r}"
    if _is_torchscript(p):
        named = read_torchscript_tensors(p)
        return _match_vgg(named, src)
    sd = _load_state_dict_file(p)
    if "features.0.weight" in sd:
        named = _torchvision_named(sd, src)
        lins = _lpips_lins(sd)
        if lpips_path is not None:
            lins = _lpips_lins(_load_state_dict_file(Path(lpips_path)))
            if lins is None:
                raise BRGMError(f"{str(lpips_path)!r} has no LPIPS weights lin0..lin4.model.1.weight")
        if lins is not None:
            named += [(f"lpips.lin{k}", w) for k, w in enumerate(lins)]
        return _match_vgg(named, src)
    return _match_vgg(list(sd.items()), src)


def load_vgg16_perceptual(path: str | Path, lpips_path: Optional[str | Path] = None,
                          min_size: int = 64, device="cpu") -> VGGPerceptual:
    """``phi`` for the BRGM perceptual likelihood from a local VGG16 file (see :func:`load_vgg16`)."""
    return VGGPerceptual(load_vgg16(path, lpips_path), min_size=min_size).to(device)
