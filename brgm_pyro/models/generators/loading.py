"""Load and save generators: ``load_generator(spec)``, ``save_generator(G, path)``.

Specs accepted by :func:`load_generator`:

* ``builtin:NAME``: a factory registered in :data:`BUILTIN_GENERATORS`
  (``@BUILTIN_GENERATORS.register("name")`` on a function returning a Generator, here or in a
  module ``brgm_pyro/models/generators/builtin_<name>.py``, imported on the first builtin lookup);
* an NVIDIA StyleGAN2 network pickle: PyTorch (stylegan2-ada-pytorch, or the stylegan3 repository's
  ``--cfg=stylegan2``) or TensorFlow (stylegan2, stylegan2-ada), read by the restricted unpickler of
  :mod:`~brgm_pyro.models.generators.nvidia_pickle` (TF ones mapped by
  :mod:`~brgm_pyro.models.generators.tf_pickle`); nothing in it is executed; ``G_ema``/``Gs`` is used;
* our format, ``.safetensors``: the state dict as tensors, and in the file's metadata
  ``format = "brgm-generator"``, ``class`` (e.g. ``StyleGAN2Generator``) and ``config`` (JSON of
  the constructor kwargs). A JSON file beside it (``<file>.json``: ``{"class": ..., "config": ...}``)
  is used when the metadata has no config;
* a torch state dict saved with ``torch.save`` (``.pt``/``.pth``), read with ``weights_only=True``:
  either ``{"class": ..., "config": {...}, "state_dict": {...}}``, or a bare StyleGAN2 state dict
  (our names or NVIDIA's ``synthesis.*``/``mapping.*`` names) whose configuration is taken from a
  JSON beside it or, failing that, inferred from the tensor shapes (``conv_clamp`` cannot be inferred
  and is then None).

The file type is recognised from its first bytes, not its extension. Every bad input raises
:class:`~brgm_pyro.errors.BRGMError` with one line saying what is wrong and what would be right.

:func:`latent_stats_for` computes (10,000 seeded samples) or loads the latent statistics, cached in
``<weights>.latent_stats.safetensors`` beside the weights when that directory is writable.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.base import Generator
from brgm_pyro.models.generators.conv import ConvGenerator
from brgm_pyro.models.generators.linear import LinearGenerator
from brgm_pyro.models.generators.stats import LatentStats, compute_latent_stats
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator
from brgm_pyro.registry import Registry

BUILTIN_GENERATORS: Registry[Generator] = Registry("builtin generator")

#: Generator classes that can be rebuilt from a saved ``config`` (name -> class).
GENERATOR_CLASSES: Dict[str, Callable[..., Generator]] = {
    "StyleGAN2Generator": StyleGAN2Generator,
    "ConvGenerator": ConvGenerator,
    "LinearGenerator": LinearGenerator,
}

FORMAT_TAG = "brgm-generator"
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_KINDS = "an NVIDIA network pickle (.pkl), a brgm .safetensors file, a torch state dict (.pt/.pth) or builtin:NAME"


@BUILTIN_GENERATORS.register("conv16")
def _builtin_conv16() -> Generator:
    """A tiny random 16x16 RGB ConvGenerator (tests, examples)."""
    return ConvGenerator(img_resolution=16, img_channels=3, w_dim=16, z_dim=16, channels=16, seed=0)


_DISCOVERED = False


def _discover_builtins() -> None:
    """Import every ``builtin_*`` module of this package once, so that their
    ``@BUILTIN_GENERATORS.register`` decorators have run (lazily: they import this module)."""
    global _DISCOVERED
    if _DISCOVERED:
        return
    _DISCOVERED = True
    import importlib
    import pkgutil

    import brgm_pyro.models.generators as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name.startswith("builtin_"):
            importlib.import_module(f"{pkg.__name__}.{info.name}")


# -- public API ----------------------------------------------------------------------------------------


def load_generator(spec: Any, device: str | torch.device = "cpu",
                   class_index: Optional[int] = None) -> Generator:
    """Load a generator from ``spec`` (see the module docstring) onto ``device``, in eval mode,
    with its weights frozen (``requires_grad=False``: BRGM infers latents, it does not train G;
    call ``G.requires_grad_(True)`` to fine-tune).

    ``class_index`` K chooses the class of a conditional generator (``c_dim > 0``): its mapping
    network, and so the latent statistics, are those of class K. Giving it for an unconditional
    generator, or out of range, is an error.

    Loaded generators carry ``source_path`` (the file, or None for builtins), used by
    :func:`latent_stats_for` to place its cache.
    """
    G = _load_any(spec)
    choose_class(G, class_index)
    return G.to(device)


def choose_class(G: Generator, class_index: Optional[int], required: bool = False) -> Generator:
    """Set the class K of a conditional generator (``G.class_index``); None leaves it unset.

    A class for an unconditional generator, or out of range, is an error; so is no class for a
    conditional one when ``required`` (the CLI: its statistics and mapping need one)."""
    c_dim = int(getattr(G, "c_dim", 0) or 0)
    if class_index is None:
        if required and c_dim > 0 and getattr(G, "class_index", None) is None:
            raise BRGMError(f"this generator is conditional ({c_dim} classes): choose one with --class K "
                            f"(0..{c_dim - 1})")
        return G
    if c_dim == 0 or not hasattr(type(G), "class_index"):
        raise BRGMError(f"--class {class_index} was given, but this {type(G).__name__} is unconditional (c_dim=0)")
    G.class_index = class_index
    return G


def _load_any(spec: Any) -> Generator:
    if isinstance(spec, Generator):
        return spec
    s = os.fspath(spec) if isinstance(spec, (str, os.PathLike)) else None
    if s is None:
        raise BRGMError(f"a generator spec must be a path or builtin:NAME, got {type(spec).__name__}")
    if s.startswith("builtin:"):
        _discover_builtins()
        G = BUILTIN_GENERATORS.build(s[len("builtin:"):])
        if getattr(G, "source_path", None) is None:
            G.source_path = None
    else:
        path = Path(s)
        if not path.exists():
            _discover_builtins()
            names = ", ".join(f"builtin:{n}" for n in BUILTIN_GENERATORS.names())
            raise BRGMError(f"generator file {s} does not exist; give {_KINDS} (builtins: {names})")
        if path.is_dir():
            raise BRGMError(f"{s} is a directory; give a generator file: {_KINDS}")
        G = _load_file(path)
        G.source_path = str(path)
    G.eval().requires_grad_(False)
    return G


def save_generator(generator: Generator, path: str | os.PathLike) -> Path:
    """Write ``generator`` as safetensors (weights) with ``format``/``class``/``config`` metadata.

    Written to a temporary file in the same directory and moved into place with ``os.replace``,
    so readers never see a half-written file. Returns the path.
    """
    from safetensors.torch import save_file

    cls = type(generator).__name__
    if cls not in GENERATOR_CLASSES:
        raise BRGMError(f"cannot save a {cls}: only {', '.join(GENERATOR_CLASSES)} can be rebuilt from a config")
    try:
        cfg_json = json.dumps(generator.config(), sort_keys=True)
    except TypeError as e:
        raise BRGMError(f"the config of this {cls} is not JSON-serialisable: {e}") from None
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in generator.state_dict().items()}
    path = Path(path)
    if path.suffix != ".safetensors":
        raise BRGMError(f"{path}: our weight files end in .safetensors")
    from brgm_pyro.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            save_file(tensors, tmp, metadata={"format": FORMAT_TAG, "version": "1", "class": cls,
                                              "config": cfg_json})
    except OSError as e:
        raise BRGMError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def latent_stats_for(generator: Generator, path: Optional[str | os.PathLike] = None,
                     num_samples: int = 10_000, seed: int = 0) -> LatentStats:
    """Latent statistics of ``generator`` (``num_samples`` seeded draws through its mapping network).

    ``path`` is the weights file (default: ``generator.source_path``). The statistics are cached in
    ``<weights>.latent_stats.safetensors`` (``<weights>.class<K>.latent_stats.safetensors`` for class K
    of a conditional generator, see ``class_index``) when that directory is writable; a cache older
    than the weights is recomputed. Without a path they are cached in memory only. The stored running
    mean of NVIDIA's networks is ``generator.w_avg`` (StyleGAN2Generator) and is not changed here.
    """
    if path is None:
        path = getattr(generator, "source_path", None)
    cache = None
    if path is not None:
        weights = Path(path)
        k = getattr(generator, "class_index", None)
        tag = "" if k is None else f".class{k}"
        candidate = weights.with_name(weights.name + tag + ".latent_stats.safetensors")
        if candidate.exists() and weights.exists() and candidate.stat().st_mtime < weights.stat().st_mtime:
            try:
                candidate.unlink()  # stale: the weights changed after the cache was written
            except OSError:
                pass
        if candidate.exists() or os.access(weights.parent if str(weights.parent) else ".", os.W_OK):
            cache = candidate
    return compute_latent_stats(generator, num_samples=num_samples, seed=seed, cache_path=cache)


def flow_prior_path(generator: Generator, path: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """Where the flow prior of ``generator`` lies (or would lie): ``<weights>.flow_prior.safetensors``
    beside its weights (``<weights>.class<K>.flow_prior.safetensors`` for class K), the way the latent
    statistics are found; None for a generator without a weights file. Written by ``brgm train-prior``,
    read by ``--prior flow`` / ``rls`` (:mod:`brgm_pyro.models.priors.flow`)."""
    return sidecar_path(generator, ".flow_prior.safetensors", path)


def sidecar_path(generator: Generator, suffix: str, path: Optional[str | os.PathLike] = None) -> Optional[Path]:
    """``<weights><.class K><suffix>`` beside the generator's weights file (``path``, default its
    ``source_path``), where its per-generator files live; None for a generator without a weights file."""
    path = getattr(generator, "source_path", None) if path is None else path
    if path is None:
        return None
    weights = Path(path)
    k = getattr(generator, "class_index", None)
    return weights.with_name(weights.name + ("" if k is None else f".class{k}") + suffix)


# -- file formats --------------------------------------------------------------------------------------


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise BRGMError(f"cannot read {path}: {e.strerror or e}") from None
    if not head:
        raise BRGMError(f"{path} is empty; expected {_KINDS}")
    if head.startswith(b"PK\x03\x04"):
        return "torch"
    if head.startswith(_TORCH_LEGACY_MAGIC):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:1] == b"\x80":
        return "pickle"
    raise BRGMError(f"{path} is not a recognised generator file; expected {_KINDS}")


def _load_file(path: Path) -> Generator:
    kind = _sniff(path)
    if kind == "pickle":
        from brgm_pyro.models.generators.nvidia_pickle import load_nvidia_pickle

        return load_nvidia_pickle(path)
    if kind == "safetensors":
        return _load_safetensors(path)
    return _load_torch(path)


def _sidecar(path: Path) -> Optional[dict]:
    for side in (path.with_name(path.name + ".json"), path.with_suffix(".json")):
        if side.is_file():
            try:
                data = json.loads(side.read_text())
            except (OSError, ValueError) as e:
                raise BRGMError(f"{side} is not valid JSON ({e}); it should hold "
                                '{"class": ..., "config": {...}}') from None
            if not isinstance(data, dict):
                raise BRGMError(f"{side} should hold a JSON object {{\"class\": ..., \"config\": {{...}}}}")
            return data
    return None


def _load_safetensors(path: Path) -> Generator:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types
        raise BRGMError(f"{path} is not a readable safetensors file ({_one_line(e)}); "
                        f"write it with `brgm convert` or save_generator") from None
    cls, cfg = meta.get("class"), meta.get("config")
    if cfg is not None:
        try:
            cfg = json.loads(cfg)
        except ValueError:
            raise BRGMError(f"{path}: the config in its metadata is not valid JSON") from None
    else:
        side = _sidecar(path)
        if side is not None:
            cls, cfg = side.get("class", cls), side.get("config")
    return _build(path, cls, cfg, tensors)


def _load_torch(path: Path) -> Generator:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError, ...
        raise BRGMError(f"{path} is not a loadable torch state dict ({_one_line(e)}); "
                        f"save a state dict with torch.save(G.state_dict(), path)") from None
    if not isinstance(obj, dict):
        raise BRGMError(f"{path} holds a {type(obj).__name__}, not a state dict (a dict of tensors)")
    cls = cfg = None
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        cls, cfg, obj = obj.get("class"), obj.get("config"), obj["state_dict"]
    if cfg is None:
        side = _sidecar(path)
        if side is not None:
            cls, cfg = side.get("class", cls), side.get("config")
    bad = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if bad:
        raise BRGMError(f"{path}: entries {', '.join(map(str, bad[:5]))} are not tensors; expected a state dict")
    return _build(path, cls, cfg, obj)


def _build(path: Path, cls: Optional[str], cfg: Optional[dict], tensors: Dict[str, Tensor]) -> Generator:
    nvidia_names = any(k.startswith(("synthesis.", "mapping.")) for k in tensors)
    if cfg is None:
        if cls not in (None, "StyleGAN2Generator"):
            raise BRGMError(f"{path}: no config for a {cls}; put it in the metadata or in {path.name}.json")
        if not any(k.startswith(("synthesis", "mapping")) for k in tensors):
            raise BRGMError(f"{path} has no generator config and its tensors are not a StyleGAN2's; "
                            f"save it with save_generator or add {path.name}.json")
        cls, cfg = "StyleGAN2Generator", infer_stylegan2_config(_to_nvidia_names(tensors), path)
    cls = cls or "StyleGAN2Generator"
    if cls not in GENERATOR_CLASSES:
        raise BRGMError(f"{path}: unknown generator class {cls!r}; known: {', '.join(GENERATOR_CLASSES)}")
    if not isinstance(cfg, dict):
        raise BRGMError(f"{path}: the generator config must be a JSON object of constructor arguments")
    try:
        G = GENERATOR_CLASSES[cls](**cfg)
    except BRGMError as e:
        raise BRGMError(f"{path}: {e}") from None
    except TypeError as e:
        raise BRGMError(f"{path}: the config does not fit {cls} ({e})") from None
    if nvidia_names and isinstance(G, StyleGAN2Generator):
        from brgm_pyro.models.generators.nvidia_pickle import nvidia_to_ours

        try:
            tensors = nvidia_to_ours(tensors, G)
        except BRGMError as e:
            raise BRGMError(f"{path}: {e}") from None
    expected = G.state_dict()
    unknown = sorted(set(tensors) - set(expected))
    missing = sorted(set(expected) - set(tensors))
    if unknown or missing:
        parts = ([f"unknown tensors {_few(unknown)}"] if unknown else []) + \
                ([f"missing tensors {_few(missing)}"] if missing else [])
        raise BRGMError(f"{path}: the weights do not match {cls}: {'; '.join(parts)}")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise BRGMError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
    with torch.no_grad():
        G.load_state_dict({k: t.to(expected[k].dtype) for k, t in tensors.items()}, strict=True)
    return G


def _to_nvidia_names(tensors: Dict[str, Tensor]) -> Dict[str, Tensor]:
    out = {}
    for k, v in tensors.items():
        if k == "w_avg":
            k = "mapping.w_avg"
        k = re.sub(r"^synthesis_network\.", "synthesis.", k)
        k = re.sub(r"^mapping_network\.", "mapping.", k)
        out[k] = v
    return out


def infer_stylegan2_config(tensors: Dict[str, Tensor], path: Path | str = "weights") -> dict:
    """StyleGAN2Generator kwargs from the shapes of a state dict under NVIDIA names.

    channel_base/channel_max are recovered from the channels per resolution
    (``min(channel_base // r, channel_max)``); conv_clamp is unknowable (None).
    """
    try:
        res = sorted({int(m.group(1)) for k in tensors if (m := re.match(r"synthesis\.b(\d+)\.", k))})
        top = res[-1]
        ch = {r: int(tensors[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in res}
        img_channels = int(tensors[f"synthesis.b{top}.torgb.weight"].shape[0])
        w_dim = int(tensors[f"synthesis.b{top}.conv1.affine.weight"].shape[1])
        fcs = sorted(int(m.group(1)) for k in tensors if (m := re.match(r"mapping\.fc(\d+)\.weight$", k)))
        embed = tensors.get("mapping.embed.weight")
        e_dim = 0 if embed is None else int(embed.shape[0])
        z_dim = int(tensors["mapping.fc0.weight"].shape[1]) - e_dim
        hidden = int(tensors["mapping.fc0.weight"].shape[0]) if len(fcs) > 1 else w_dim
    except (IndexError, KeyError, ValueError) as e:
        raise BRGMError(f"{path}: cannot infer the StyleGAN2 configuration from the tensor names "
                        f"(missing {e}); add {Path(path).name}.json with the config") from None
    channel_max = max(ch.values())
    below = [r for r in res if ch[r] < channel_max]
    channel_base = ch[below[-1]] * below[-1] if below else channel_max * top
    if any(min(channel_base // r, channel_max) != ch[r] for r in res):
        raise BRGMError(f"{path}: the channel counts {ch} do not follow min(channel_base // res, "
                        f"channel_max); add {Path(path).name}.json with the config")
    cfg = dict(z_dim=z_dim, w_dim=w_dim, img_resolution=top, img_channels=img_channels,
               mapping_layers=len(fcs), channel_base=channel_base, channel_max=channel_max)
    if any(re.match(r"synthesis\.b\d+\.skip\.weight$", k) for k in tensors):
        cfg["architecture"] = "resnet"
    elif top > 4 and f"synthesis.b{top // 2}.torgb.weight" not in tensors:
        cfg["architecture"] = "orig"
    if embed is not None:
        cfg["c_dim"] = int(embed.shape[1])
        if e_dim != w_dim:
            cfg["embed_features"] = e_dim
    if hidden != w_dim:
        cfg["layer_features"] = hidden
    return cfg


def _few(names, n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


__all__ = ["BUILTIN_GENERATORS", "GENERATOR_CLASSES", "load_generator", "choose_class", "save_generator",
           "latent_stats_for", "flow_prior_path", "sidecar_path", "infer_stylegan2_config"]
