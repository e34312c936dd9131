"""Read NVIDIA's TensorFlow StyleGAN2 network pickles without executing anything from them.

NVIDIA's TF code (``NVlabs/stylegan2`` and ``NVlabs/stylegan2-ada``; the BRGM authors' TF code and,
through NVIDIA's ``legacy.py``, their PyTorch code too) saves ``pickle.dump((G, D, Gs), f)``: three
``dnnlib.tflib.network.Network`` objects. Each pickles its ``__getstate__`` dict ``{'version': 4,
'name', 'static_kwargs' (the build function's arguments), 'components' (sub-networks), 'build_module_src'
(source text that NVIDIA's ``__setstate__`` execs; never run here), 'build_func_name', 'variables'
(a list of (TF variable name, numpy array))}``. The restricted unpickler of
:mod:`~brgm_pyro.models.generators.nvidia_pickle` turns each into a
:class:`~brgm_pyro.models.generators.safe_pickle.TFNetworkRecord` and each numpy array into raw
numbers (numeric dtypes only).

The generator ``Gs`` (NVIDIA's moving average, their ``G_ema``) is ``G_main`` with the components
``mapping`` (``G_mapping``) and ``synthesis`` (``G_synthesis_stylegan2`` in stylegan2,
``G_synthesis`` in stylegan2-ada). Variables (prefix = component name) map onto our model as NVIDIA's
``legacy.py`` documents, restated here from the TF formulas:

* dense ``Dense{i}/weight`` is [in, out]: ours is its transpose; biases as they are;
* convolutions ``weight`` are [k, k, in, out]: ours ``transpose(3, 2, 0, 1)``; the up-sampling
  convolution ``Conv0_up`` (and ``Skip``) runs as TF's ``conv2d_transpose`` with the spatially flipped
  kernel, so ours is additionally flipped (``w[::-1, ::-1]``);
* styles are ``dense(w, mod_weight) + mod_bias + 1``: ``affine.weight = mod_weight.T``,
  ``affine.bias = mod_bias + 1``;
* ``noise{i}`` [1, 1, r, r] is the constant noise of layer i in TF's order: ``b4.conv1`` is 0,
  ``b{r}.conv0`` is ``2 log2(r) - 5`` and ``b{r}.conv1`` is ``2 log2(r) - 4``;
* ``4x4/Const/const`` [1, C, 4, 4] is ours ``[0]``; ``dlatent_avg`` (of G_main) is ``w_avg``;
* TF's channel counts ``nf(stage) = clip(int(fmap_base / 2^stage), fmap_min, fmap_max)`` at
  resolution ``2^(stage+1)`` are ours with ``channel_base = 2 fmap_base``, ``channel_max = fmap_max``.

Every static argument is used, or refused by name when our model would compute something else
(unknown ones too); every variable is used, or refused by name (only G_main's ``lod``, a training
counter, is dropped).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import Tensor

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.generators.safe_pickle import NDArrayRecord, TFNetworkRecord
from brgm_pyro.models.generators.stylegan2 import check_state_dict
from brgm_pyro.models.generators.stylegan2 import StyleGAN2Generator

# Static arguments by repository: each is a parameter of that repository's build functions.
_COMMON = {"latent_size", "label_size", "dlatent_size", "mapping_layers", "mapping_fmaps", "mapping_lrmul",
           "mapping_nonlinearity", "normalize_latents", "num_channels", "resolution", "fmap_base",
           "fmap_decay", "fmap_min", "fmap_max", "architecture", "nonlinearity", "resample_kernel",
           "mapping_func", "synthesis_func"}
_TF_ARGS = {"stylegan2": _COMMON,
            "stylegan2-ada": _COMMON | {"label_fmaps", "fmap_const", "use_noise", "num_fp16_res", "conv_clamp"}}
# Arguments that change no output in inference: truncation and style mixing (G_main options BRGM does
# not use: it works on W+ directly), the training-time w_avg decay, the noise choice made at run time
# (our noise_mode), fused vs. non-fused modulated convolution (the same function), the activation dtype
# (precision), and progressive-growing structure (ignored by the StyleGAN2 synthesis functions).
_NO_EFFECT = {"truncation_psi", "truncation_cutoff", "truncation_psi_val", "truncation_cutoff_val",
              "dlatent_avg_beta", "style_mixing_prob", "randomize_noise", "fused_modconv", "dtype",
              "structure", "is_training", "is_validation", "return_dlatents"}
_SYNTHESIS_FUNCS = {"G_synthesis_stylegan2": "stylegan2", "G_synthesis": "stylegan2-ada"}
_DEFAULTS = {"stylegan2": dict(mapping_fmaps=512), "stylegan2-ada": dict(mapping_fmaps=None)}
_IGNORED_VARIABLES = {"lod"}  # G_main's level-of-detail counter (training only)


def pick_tf_network(data: Any, key: Optional[str] = None) -> TFNetworkRecord:
    """The generator of a TF pickle: ``Gs`` of ``(G, D, Gs)`` (key None, 'G_ema' or 'Gs'), ``G`` (key 'G')."""
    if isinstance(data, TFNetworkRecord):
        return data
    if len(data) != 3:
        raise BRGMError(f"the pickle holds {len(data)} TensorFlow networks; NVIDIA's hold three, (G, D, Gs)")
    index = {None: 2, "G_ema": 2, "Gs": 2, "G": 0}.get(key)
    if index is None:
        raise BRGMError(f"a TensorFlow pickle holds (G, D, Gs); choose G_ema (= Gs) or G, not {key!r}")
    return data[index]


def _tf_kind(net: TFNetworkRecord) -> tuple[str, TFNetworkRecord, TFNetworkRecord]:
    """(repository, mapping, synthesis) of a TF G_main record; refuse anything else by name."""
    st = net.state
    version, func = st.get("version"), st.get("build_func_name")
    if not isinstance(version, int) or version < 4:
        raise BRGMError(f"TensorFlow network pickle version {version!r}: older than StyleGAN2's (4); "
                        "StyleGAN (v1) networks are not supported")
    if func == "G_style":
        raise BRGMError("this is a StyleGAN (v1) TensorFlow generator (G_style); only StyleGAN2 is supported")
    if func != "G_main":
        raise BRGMError(f"the TensorFlow network {st.get('name')!r} is built by {func!r}, not by StyleGAN2's "
                        "generator G_main (a discriminator?)")
    comps = st.get("components") or {}
    mapping, synthesis = comps.get("mapping"), comps.get("synthesis")
    if not isinstance(mapping, TFNetworkRecord) or not isinstance(synthesis, TFNetworkRecord):
        raise BRGMError("the TensorFlow generator lacks its mapping or synthesis sub-network")
    sfunc, mfunc = synthesis.state.get("build_func_name"), mapping.state.get("build_func_name")
    if sfunc == "G_synthesis_stylegan_revised":
        raise BRGMError("this TensorFlow generator is StyleGAN2 config-a..d (G_synthesis_stylegan_revised, "
                        "progressive growing); only config-e/f synthesis networks are supported")
    if sfunc not in _SYNTHESIS_FUNCS or mfunc != "G_mapping":
        raise BRGMError(f"unknown TensorFlow sub-networks {mfunc!r}/{sfunc!r}; supported: G_mapping with "
                        f"{' or '.join(_SYNTHESIS_FUNCS)}")
    if (set(comps) - {"mapping", "synthesis"}):
        raise BRGMError(f"unknown TensorFlow sub-networks {sorted(set(comps) - {'mapping', 'synthesis'})}")
    return _SYNTHESIS_FUNCS[sfunc], mapping, synthesis


def tf_config(net: TFNetworkRecord) -> dict:
    """StyleGAN2Generator kwargs from a TF G_main record's ``static_kwargs`` (audited, see module doc)."""
    repo, _, _ = _tf_kind(net)
    kw = dict(net.state.get("static_kwargs") or {})
    unknown = sorted(k for k in kw if k not in _TF_ARGS[repo] | _NO_EFFECT)
    if unknown:
        raise BRGMError(f"unknown static arguments of the TensorFlow ({repo}) generator: {', '.join(unknown)}; "
                        "refusing rather than guessing what they do")
    kw = {**_DEFAULTS[repo], **kw}
    _refuse_tf_settings(kw, repo)
    z_dim, w_dim = int(kw.get("latent_size", 512)), int(kw.get("dlatent_size", 512))
    res = int(kw.get("resolution", 1024))
    c_dim = int(kw.get("label_size", 0) or 0)
    base, cmax, cmin = float(kw.get("fmap_base", 16384)), int(kw.get("fmap_max", 512)), int(kw.get("fmap_min", 1))
    if res < 4 or res & (res - 1):
        raise BRGMError(f"TensorFlow generator resolution {res} is not a power of two >= 4")
    stages = range(1, int(math.log2(res)))
    tf_ch = {2 ** (s + 1): int(np.clip(int(base / 2.0 ** s), cmin, cmax)) for s in stages}
    ours = {r: min(int(2 * base) // r, cmax) for r in tf_ch}
    if tf_ch != ours:
        raise BRGMError(f"TensorFlow channel counts {tf_ch} (fmap_base={base:g}, fmap_min={cmin}, "
                        f"fmap_max={cmax}) are not min(channel_base // res, channel_max) for any channel_base")
    if kw.get("fmap_const") not in (None, tf_ch[4]):
        raise BRGMError(f"TensorFlow fmap_const={kw['fmap_const']} (const input channels other than the "
                        f"4x4 block's {tf_ch[4]}) is not supported")
    fmaps = kw.get("mapping_fmaps")
    clamp = kw.get("conv_clamp")
    return dict(z_dim=z_dim, w_dim=w_dim, img_resolution=res, img_channels=int(kw.get("num_channels", 3)),
                c_dim=c_dim, mapping_layers=int(kw.get("mapping_layers", 8)),
                lr_multiplier=float(kw.get("mapping_lrmul", 0.01)),
                embed_features=(None if c_dim == 0 or int(kw.get("label_fmaps") or z_dim) == w_dim
                                else int(kw.get("label_fmaps") or z_dim)),
                layer_features=None if fmaps is None or int(fmaps) == w_dim else int(fmaps),
                channel_base=int(2 * base), channel_max=cmax, num_fp16_res=int(kw.get("num_fp16_res", 0)),
                conv_clamp=None if clamp is None else float(clamp),
                architecture=str(kw.get("architecture", "skip")))


def _refuse_tf_settings(kw: Dict[str, Any], repo: str) -> None:
    bad = []
    for key, ok in (("mapping_nonlinearity", "lrelu"), ("nonlinearity", "lrelu"), ("normalize_latents", True),
                    ("use_noise", True), ("fmap_decay", 1), ("mapping_func", "G_mapping")):
        if key in kw and kw[key] != ok:
            bad.append(f"{key}={kw[key]!r}")
    if "resample_kernel" in kw and list(kw["resample_kernel"] or []) != [1, 3, 3, 1]:
        bad.append(f"resample_kernel={kw['resample_kernel']!r}")
    if kw.get("architecture", "skip") not in ("skip", "orig", "resnet"):
        bad.append(f"architecture={kw['architecture']!r}")
    if repo == "stylegan2" and int(kw.get("label_size", 0) or 0) > 0:
        bad.append(f"label_size={kw['label_size']} (NVIDIA's stylegan2 LabelConcat conditioning; "
                   "stylegan2-ada's LabelEmbed is supported)")
    if bad:
        raise BRGMError(f"unsupported settings of the TensorFlow ({repo}) generator: {', '.join(bad)}")


def tf_variables(net: TFNetworkRecord) -> Dict[str, np.ndarray]:
    """{``component/.../name``: array} of a TF network and its components (NVIDIA's naming)."""
    out: Dict[str, np.ndarray] = {}

    def visit(prefix: str, rec: TFNetworkRecord) -> None:
        for item in rec.state.get("variables") or []:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise BRGMError(f"malformed TensorFlow network {prefix or rec.state.get('name')!r}: "
                                "its variables are not (name, array) pairs")
            name, value = item
            if isinstance(value, NDArrayRecord):
                value = value.array
            elif isinstance(value, (int, float)):
                value = np.asarray(value, dtype=np.float32)
            if not isinstance(value, np.ndarray):
                raise BRGMError(f"TensorFlow variable {prefix}{name} is a {type(value).__name__}, not an array")
            out[prefix + name] = value
        for cname, comp in (rec.state.get("components") or {}).items():
            if not isinstance(comp, TFNetworkRecord):
                raise BRGMError(f"TensorFlow component {prefix}{cname} is not a network")
            visit(f"{prefix}{cname}/", comp)

    visit("", net)
    return out


def _t(a: np.ndarray) -> np.ndarray:
    return a.T


def _conv(a: np.ndarray) -> np.ndarray:
    return a.transpose(3, 2, 0, 1)  # [k, k, in, out] -> [out, in, k, k]


def _upconv(a: np.ndarray) -> np.ndarray:
    return a[::-1, ::-1].transpose(3, 2, 0, 1)  # TF's conv2d_transpose flips the kernel


def _same(a: np.ndarray) -> np.ndarray:
    return a


def tf_name_table(cfg: dict) -> Dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """{our tensor name: (TF variable name, transform)} for a generator of configuration ``cfg``."""
    T: Dict[str, tuple[str, Callable]] = {"w_avg": ("dlatent_avg", _same)}
    for i in range(cfg["mapping_layers"]):
        T[f"mapping_network.fc{i}.weight"] = (f"mapping/Dense{i}/weight", _t)
        T[f"mapping_network.fc{i}.bias"] = (f"mapping/Dense{i}/bias", _same)
    if cfg["c_dim"] > 0:
        T["mapping_network.embed.weight"] = ("mapping/LabelEmbed/weight", _t)
        T["mapping_network.embed.bias"] = ("mapping/LabelEmbed/bias", _same)
    S = "synthesis_network."
    T[S + "b4.const"] = ("synthesis/4x4/Const/const", lambda a: a[0])

    def layer(ours: str, tf: str, noise: int, wfn: Callable) -> None:
        for o, t, f in (("weight", "weight", wfn), ("bias", "bias", _same),
                        ("noise_strength", "noise_strength", _same), ("affine.weight", "mod_weight", _t),
                        ("affine.bias", "mod_bias", lambda a: a + 1)):
            T[f"{S}{ours}.{o}"] = (f"synthesis/{tf}/{t}", f)
        T[f"{S}{ours}.noise_const"] = (f"synthesis/noise{noise}", lambda a: a[0, 0])

    res = cfg["img_resolution"]
    layer("b4.conv1", "4x4/Conv", 0, _conv)
    for r in [2 ** k for k in range(3, int(math.log2(res)) + 1)]:
        k = int(math.log2(r))
        layer(f"b{r}.conv0", f"{r}x{r}/Conv0_up", 2 * k - 5, _upconv)
        layer(f"b{r}.conv1", f"{r}x{r}/Conv1", 2 * k - 4, _conv)
        if cfg["architecture"] == "resnet":
            T[f"{S}b{r}.skip.weight"] = (f"synthesis/{r}x{r}/Skip/weight", _upconv)
    for r in [2 ** k for k in range(2, int(math.log2(res)) + 1)]:
        if cfg["architecture"] == "skip" or r == res:
            for o, t, f in (("weight", "weight", _conv), ("bias", "bias", _same),
                            ("affine.weight", "mod_weight", _t), ("affine.bias", "mod_bias", lambda a: a + 1)):
                T[f"{S}b{r}.torgb.{o}"] = (f"synthesis/{r}x{r}/ToRGB/{t}", f)
    return T


def tf_to_ours(variables: Dict[str, np.ndarray], cfg: dict) -> Dict[str, Tensor]:
    """Our state dict from TF variables; unknown or missing variables are an error naming them."""
    table = tf_name_table(cfg)
    used = {tf for tf, _ in table.values()}
    unknown = sorted(k for k in variables if k not in used and k not in _IGNORED_VARIABLES)
    missing = sorted(tf for tf in used if tf not in variables)
    if unknown or missing:
        parts = ([f"unknown variables {_few(unknown)}"] if unknown else []) + \
                ([f"missing variables {_few(missing)}"] if missing else [])
        raise BRGMError("the TensorFlow variables do not match a StyleGAN2 of this configuration: "
                        + "; ".join(parts))
    out = {}
    for ours, (tf, fn) in table.items():
        a = variables[tf]
        try:
            out[ours] = torch.from_numpy(np.array(fn(a), dtype=np.float32, order="C"))  # 0-d kept 0-d
        except (ValueError, IndexError):
            raise BRGMError(f"TensorFlow variable {tf} has shape {tuple(a.shape)}, "
                            f"which does not fit {ours}") from None
    return out


def _few(names, n: int = 6) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def generator_from_tf(net: TFNetworkRecord) -> StyleGAN2Generator:
    """Our StyleGAN2Generator (fp32, eval mode) from a TF G_main record."""
    cfg = tf_config(net)
    state = tf_to_ours(tf_variables(net), cfg)
    G = StyleGAN2Generator(**cfg, seed=None)
    check_state_dict(state, G)
    with torch.no_grad():
        G.load_state_dict(state, strict=True)
    return G.eval()


__all__ = ["pick_tf_network", "tf_config", "tf_variables", "tf_name_table", "tf_to_ours", "generator_from_tf"]
