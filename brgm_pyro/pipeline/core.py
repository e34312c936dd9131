"""The library pipeline: generator -> observation -> model -> inference -> scores -> files.

``brgm reconstruct``, ``brgm demo`` and the dataset runner are thin adapters over these functions;
a library user calls the same ones (``import brgm_pyro as brgm``; see README "As a library").

* :func:`load_generator` loads a generator (one-line errors for bad files) and remembers what the
  CLI would use with it: its own perceptual network (:func:`default_phi`) and its cached latent
  statistics (:func:`latent_stats`);
* :func:`build_model` is :func:`brgm_pyro.models.brgm.build_model` with those defaults;
* :func:`observe` turns files into an :class:`Observation` for any registered task
  (:mod:`brgm_pyro.pipeline.tasks`);
* :func:`reconstruct` runs a registered inference method with the task's defaults;
* :func:`score` and :func:`write_results` give metrics.json's numbers and the output folder.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np

from brgm_pyro import io
from brgm_pyro.errors import BRGMError
from brgm_pyro.pipeline.tasks import Task, TaskInputs, get_task

DEFAULT_GENERATOR = "builtin:faces64"
DEVICES = ("cpu", "cuda")

# what load_generator learned about a generator (spec, perceptual network, stats), without
# making them submodules of G (that would change its state_dict and save_generator's file)
_LOADED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:K``; a one-line error when CUDA is asked for but absent."""
    import torch

    base = str(device).split(":")[0]
    if base not in DEVICES:
        raise BRGMError(f"--device {device!r} is not one of: {', '.join(DEVICES)}")
    if base == "cuda" and not torch.cuda.is_available():
        raise BRGMError("--device cuda was asked for but CUDA is not available here; use --device cpu")
    return str(device)


def load_generator_checked(spec: str, device: str = "cpu"):
    """``loading.load_generator`` with every failure on a user file turned into one line; eval mode."""
    from brgm_pyro.models.generators.loading import load_generator as _load

    spec = str(spec)
    is_file = not spec.startswith("builtin:")
    if is_file:
        p = Path(spec)
        if not p.exists():
            raise BRGMError(f"generator file {spec!r} does not exist; give a .pkl or .safetensors generator "
                            f"or builtin:NAME (default {DEFAULT_GENERATOR})")
        if p.is_dir():
            raise BRGMError(f"generator {spec!r} is a directory; give a .pkl or .safetensors generator file")
    try:
        G = _load(spec, device=device)
    except BRGMError:
        raise
    except Exception as e:  # a file that is not a generator can fail in many ways
        if not is_file:
            raise
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise BRGMError(f"{spec!r} is not a generator this tool can load ({type(e).__name__}: {reason}); "
                        f"give a StyleGAN2 .pkl or a brgm .safetensors generator") from None
    return G.eval()


def load_generator(spec: str = DEFAULT_GENERATOR, device: str = "cpu", class_index: Optional[int] = None):
    """Load a generator for reconstruction: ``builtin:NAME``, an NVIDIA ``.pkl`` or a ``.safetensors`` file.

    Conditional generators need ``class_index``. The generator remembers its spec, so that
    :func:`build_model` adds its own perceptual network (if it has one) and its cached latent
    statistics, exactly as ``brgm reconstruct`` does.
    """
    from brgm_pyro.models.generators.loading import choose_class

    device = resolve_device(device)
    G = load_generator_checked(spec, device)
    choose_class(G, class_index, required=True)
    _LOADED[G] = {"spec": str(spec)}
    return G


def default_phi(G, spec: Optional[str] = None):
    """The generator's own perceptual network on G's device (builtin faces generators), or None.

    Looked up: a ``default_phi`` attribute/method of the generator, then the bundled faces network
    for ``builtin:faces64``. ``spec`` defaults to the one :func:`load_generator` recorded.
    """
    from torch import nn

    info = _LOADED.get(G, {})
    if "phi" in info:
        return info["phi"]
    spec = spec if spec is not None else info.get("spec")
    phi = getattr(G, "default_phi", None)
    if phi is not None:
        phi = phi() if callable(phi) and not isinstance(phi, nn.Module) else phi
    elif spec == "builtin:faces64":
        from brgm_pyro.models.perceptual import load_faces64_percept

        phi = load_faces64_percept(device=str(G.device()))
    if phi is not None and hasattr(phi, "to"):
        phi = phi.to(G.device())
    if G in _LOADED:
        _LOADED[G]["phi"] = phi
    return phi


def latent_stats(G):
    """G's latent statistics (10,000 seeded mapped samples), cached beside its weights file."""
    from brgm_pyro.models.generators.loading import latent_stats_for

    info = _LOADED.get(G)
    if info is not None and "stats" in info:
        return info["stats"]
    stats = latent_stats_for(G)
    if info is not None:
        info["stats"] = stats
    return stats


def method_traits(method: str, registry=None):
    """What ``method`` can do: the :class:`~brgm_pyro.inference.traits.MethodTraits` it was registered
    with in ``registry`` (default the library's METHODS). A registry without traits (a test's
    stand-in) falls back to the library's entry of that name, then to no traits at all."""
    from brgm_pyro.inference import METHODS, MethodTraits

    t = registry.traits(method) if registry is not None and hasattr(registry, "traits") else None
    if t is None and method in METHODS:
        t = METHODS.traits(method)
    return t if t is not None else MethodTraits()


def task_sigma_pixel(corruption) -> Optional[float]:
    """The pixel noise a model of ``corruption`` assumes when none is chosen, or None (the model's
    default): a corruption that states its noise std (denoising: 0.2) gets max(that std, the
    default 0.05), so the likelihood expects the noise the task makes (G's own misfit dominates
    smaller noise). The one owner of this rule: every path builds through :func:`build_model`."""
    from brgm_pyro.models.brgm import DEFAULT_SIGMA_PIXEL

    sigma = getattr(corruption, "noise_sigma", None)
    return max(float(sigma), DEFAULT_SIGMA_PIXEL) if sigma else None


def default_discrepancy(method: str, G, noise: str) -> str:
    """``--discrepancy``'s default: ``auto`` when the generator has a stored scale (``brgm
    fit-discrepancy``; bundled for builtin:faces64) and the noise is Gaussian, because without it the
    intervals of real images are too narrow (docs/calibration.md) and MAP discards what the data say
    about pixels G cannot draw (docs/vs_reference.md); else ``off``."""
    return resolve_default_discrepancy(method, G, noise)[0]


def resolve_default_discrepancy(method: str, G, noise: str, corruption=None) -> tuple[str, Optional[str]]:
    """(``auto`` or ``off``, a console note or None): :func:`default_discrepancy`, and ``off`` with a
    note when ``corruption`` infers parameters as a function of which it cannot state diag(A A^T)
    (e.g. a composition with a blind part): the default must never make a run fail."""
    from brgm_pyro.models.discrepancy import discrepancy_path

    # every library method declares discrepancy_default: posterior draws need the term for honest
    # intervals (docs/calibration.md), and MAP's image G(w*) + E[e | w*, y] is the joint MAP of the
    # clean image (+1.0 dB on in-painting, docs/vs_reference.md)
    p = discrepancy_path(G)
    wanted = method_traits(method).discrepancy_default
    if not (wanted and noise == "gaussian" and p is not None and p.exists()):
        return "off", None
    if corruption is not None and not states_gram(corruption, tuple(G.image_shape)):
        return "off", (f"note: no discrepancy term (--discrepancy off): the corruption {corruption.name!r} infers "
                       "parameters as a function of which it does not state diag(A A^T)")
    return "auto", None


def default_percept(method: str) -> bool:
    """``--percept``'s default for ``method``: on for methods without posterior draws (MAP), off for
    methods with draws (their traits say ``draws``). The term reads the observation a second time
    (phi(y) beside y), so for methods with draws it narrows the posterior without a model of how y
    arose: 90 % coverage 0.79 with it, 0.93 without on validation x8 SR (docs/calibration.md, "The
    perceptual term and methods with draws"); MAP keeps it (a sharper point estimate)."""
    return not method_traits(method).draws


def states_gram(corruption, image_shape: tuple) -> bool:
    """Whether ``corruption`` states diag(A A^T) at its latents' starting values (what a discrepancy
    term needs); corruptions without latents always can (the exact generic computation)."""
    import torch

    lats = corruption.latents()
    if not lats:
        return True
    dev = next((b.device for b in corruption.buffers()), torch.device("cpu"))  # where its operator lives
    params = {lat.name: torch.as_tensor(float(lat.init), device=dev) for lat in lats}
    try:
        corruption.gram_diagonal(tuple(image_shape), params)
    except BRGMError:
        return False
    return True


def build_model(generator, corruption, *, phi: Any = "default", stats: Any = "cached", method: str = "map",
                **kwargs):
    """The BRGM model ``brgm reconstruct`` builds: ``phi="default"`` adds the generator's own
    perceptual network where :func:`default_percept` says so for ``method`` (None: no perceptual
    term), ``stats="cached"`` its cached latent statistics;
    without ``sigma_pixel`` the task's noise rule applies (:func:`task_sigma_pixel`), without
    ``discrepancy`` the default of ``method`` (:func:`resolve_default_discrepancy`; None: off).
    Other keyword arguments go to :func:`brgm_pyro.models.brgm.build_model` (``prior``, ``noise``,
    ``kappa``, ...). ``corruption``: a Corruption, or an :class:`Observation`."""
    from brgm_pyro.models.brgm import build_model as _build

    if isinstance(corruption, Observation):
        corruption = corruption.corruption
    if "sigma_pixel" not in kwargs and task_sigma_pixel(corruption) is not None:
        kwargs["sigma_pixel"] = task_sigma_pixel(corruption)
    if "discrepancy" not in kwargs:
        d, _ = resolve_default_discrepancy(method, generator, kwargs.get("noise", "gaussian"), corruption)
        kwargs["discrepancy"] = "auto" if d == "auto" else None
    if isinstance(phi, str):
        if phi != "default":
            raise BRGMError(f"phi must be a network, None or 'default'; got {phi!r}")
        # observations that are not images (compressed sensing) have no perceptual features
        wanted = default_percept(method)
        phi = default_phi(generator) if wanted and getattr(corruption, "image_observation", True) else None
    if isinstance(stats, str):
        if stats != "cached":
            raise BRGMError(f"stats must be LatentStats, None or 'cached'; got {stats!r}")
        stats = latent_stats(generator)
    return _build(generator, corruption, phi=phi, stats=stats, **kwargs)


@dataclass
class Observation:
    """Observations ready for the model, and what is needed to write and score them.

    ``y``: torch (B, *obs_shape) in [-1, 1] (in-painting: missing pixels 0); ``masks``: (B, H, W)
    bool, True = observed, or None; ``truth``: (B, H, W, C) in [0, 1] when simulated; ``inputs``
    and ``mask_infos``: what run.json records of the files; ``names``: one per image.
    """

    y: Any
    corruption: Any
    task: Task
    options: dict
    simulate: bool
    masks: Optional[np.ndarray] = None
    truth: Optional[np.ndarray] = None
    inputs: list = field(default_factory=list)
    mask_infos: list = field(default_factory=list)
    names: list = field(default_factory=list)

    @property
    def image_observation(self) -> bool:
        return bool(getattr(self.corruption, "image_observation", True))

    def to(self, device) -> "Observation":
        self.y = self.y.to(device)
        self.corruption = self.corruption.to(device)
        return self


def _read_inputs(paths: Sequence, task: Task, obs_shape: tuple, image_shape: tuple, simulate: bool,
                 opts: dict) -> tuple[list, list, list]:
    """(arrays, infos, truths) of the input files, channel-matched and size-checked."""
    C, R = image_shape[0], image_shape[-1]
    arrays, infos, truths = [], [], []
    for p in paths:
        img = io.read_image(p, what="input image")
        if simulate or not hasattr(task, "read_channels"):
            arr, note = io.match_channels(img.array, C if simulate else obs_shape[0])
        else:  # the task states which observation channels it accepts (e.g. colorization: one gray channel)
            arr, note = task.read_channels(img.array, obs_shape[0], img.path)
        info = img.info()
        if note:
            info["conversions"].append(note)
        info["sha256"] = io.sha256(img.path)
        if simulate:
            arr, notes = io.center_crop_resize(arr, R)
            info["conversions"] += notes
            io.check_not_constant(arr, img.path, "input image")
            truths.append(arr)
        elif img.size != tuple(obs_shape[1:]):
            raise BRGMError(f"input image {img.path!r} " + task.size_hint(img.size, obs_shape, image_shape, opts))
        arrays.append(arr)
        infos.append(info)
    return arrays, infos, truths


def observe(inputs: Sequence, generator, task: str = "superres", *, simulate: bool = False, seed: int = 0,
            names: Optional[Sequence[str]] = None, **options) -> Observation:
    """Observations of the registered ``task`` from image files (clean images with ``simulate``).

    ``options`` are the task's (e.g. ``factor=8, kernel="bicubic"``; ``mask=[path]``); unknown ones
    are refused. With ``simulate`` each file is centre-cropped and resized to the generator, and
    corrupted here (seeded ``seed`` where the corruption adds noise). Returns an :class:`Observation`.
    """
    import torch

    paths = [Path(p) for p in inputs]
    if not paths:
        raise BRGMError("no INPUT image given; give one or more PNG/JPEG files")
    t = get_task(task) if isinstance(task, str) else task
    known = {o.name for o in t.options}
    extra = sorted(k for k, v in options.items() if k not in known and v not in (None, [], ()))
    if extra:
        raise BRGMError(f"--task {t.name} has no option {', '.join('--' + e.replace('_', '-') for e in extra)}")
    opts = t.resolve(options)
    t.check(opts, simulate)
    image_shape = tuple(generator.image_shape)
    t.check_shape(opts, image_shape)
    imgs = [io.read_image(p, what="input image") for p in paths]
    build = t.build(TaskInputs(imgs, opts, simulate, image_shape))
    corruption = build.corruption
    corruption.check_input(image_shape)
    obs_shape = t.observation_shape(corruption, image_shape)
    if not simulate and not getattr(corruption, "image_observation", True):
        raise BRGMError(f"--task {t.name} observations are not images; pass --simulate with clean images")
    arrays, infos, truths = _read_inputs(paths, t, obs_shape, image_shape, simulate, opts)
    masks = build.masks
    if not simulate:
        for arr, img, m in zip(arrays, imgs, masks if masks is not None else [None] * len(imgs)):
            io.check_not_constant(arr, img.path, "input image", mask=m)
    if simulate:
        x = torch.stack([io.to_model(a) for a in truths])
        with torch.no_grad():
            if build.sim_params is not None or not hasattr(corruption, "simulate"):
                y = corruption(x, build.sim_params)
            else:
                y = corruption.simulate(x, generator=torch.Generator().manual_seed(int(seed)))
    else:
        y = torch.stack([io.to_model(a) for a in arrays])
    if masks is not None:
        y = y * torch.from_numpy(masks[:, None]).to(y.dtype)  # missing pixels: 0 (mid-grey)
    return Observation(y=y, corruption=corruption, task=t, options=opts, simulate=simulate, masks=masks,
                       truth=np.stack(truths) if simulate else None, inputs=infos, mask_infos=build.mask_infos,
                       names=list(names) if names is not None else io.stems(paths))


def methods_registry():
    """The registered inference methods (MAP, VI and the MCMC samplers)."""
    from brgm_pyro.inference import METHODS

    return METHODS


def method_options(obs: Optional[Observation], method: str, lr: Optional[float] = None) -> dict:
    """Options the pipeline adds for ``method``: ``lr`` if given, else the task's MAP defaults."""
    if lr is not None:
        return {"lr": lr}
    if method == "map" and obs is not None and obs.task.map_options:
        return dict(obs.task.map_options)
    return {}


def reconstruct(model, y: Union[Observation, Any], method: str = "map", *, steps: Optional[int] = None,
                num_samples: int = 16, seed: int = 0, progress: bool = False, lr: Optional[float] = None,
                runner: Optional[Callable] = None, **options):
    """Run a registered inference method on ``y`` (a tensor (B, *obs_shape) or an :class:`Observation`).

    Returns an :class:`~brgm_pyro.inference.InferenceResult`. ``options`` go to the method (e.g.
    ``guide="lowrank"``, ``init_w=...`` for VI; ``num_chains``, ``workers`` for MCMC).
    """
    obs = y if isinstance(y, Observation) else None
    yt = obs.y if obs is not None else y
    device = model.generator.device()
    fn = runner or methods_registry().get(method)
    opts = {**method_options(obs, method, lr), **options}
    return fn(model, yt.to(device), steps=steps, num_samples=num_samples, seed=seed, progress=progress, **opts)


__all__ = ["DEFAULT_GENERATOR", "default_discrepancy", "resolve_default_discrepancy", "states_gram", "method_traits", "task_sigma_pixel", "Observation", "load_generator", "load_generator_checked", "default_phi",
           "default_percept", "latent_stats", "build_model", "observe", "reconstruct", "methods_registry", "method_options",
           "resolve_device"]
