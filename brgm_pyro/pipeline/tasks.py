"""Tasks: how a registered corruption becomes ``brgm reconstruct --task NAME`` (and ``brgm.observe``).

Every name in the corruption registry (:data:`brgm_pyro.models.corruptions.CORRUPTIONS`) is a task.
What the command needs from it, in order of precedence:

1. an explicit :class:`Task` subclass, found as the registered factory's ``cli_task`` attribute (a
   class, an instance, or a ``"module:attr"`` string resolved lazily) or in :data:`BUILTIN_TASKS`
   (super-resolution, in-painting and identity live here);
2. otherwise a :class:`SignatureTask`, read off the factory's signature: every parameter whose
   default (or annotation) is an int, float, str or bool becomes a CLI option ``--name`` (typed,
   with the factory's default, help from the docstring's ``Args:`` entry); parameters of other
   types must have defaults, else the corruption is not a CLI task. The observation shape is the
   corruption's ``out_shape``, its channel count ``obs_channels`` (a one-channel observation is
   read as one channel), simulation uses ``corruption.simulate`` when it exists.

A :class:`Task` states: ``options`` (:class:`TaskOption`), ``check`` (cheap option checks, before
anything is loaded), ``build`` (the corruption from options and the already-read input files, plus
per-image masks), ``observation_shape``, ``size_hint`` (the one-line advice for a wrongly sized
file), ``extra_outputs`` (per-image PNGs beside the reconstruction, e.g. in-painting's
composite), ``baseline`` (the classical baseline scored in metrics.json) and ``settings`` (what
run.json records). See docs/API.md ("Tasks").
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union, get_args, get_origin

import numpy as np

from brgm_pyro import io
from brgm_pyro.errors import BRGMError

SUPERRES_KERNELS = ("box", "bicubic", "gauss")


@dataclass(frozen=True)
class TaskOption:
    """One option a task reads. ``name`` is a Python identifier (CLI flag ``--name-with-dashes``)."""

    name: str
    type: type  # int | float | str | bool | Path
    default: Any = None
    help: str = ""
    multiple: bool = False  # a repeatable option (a list)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass
class TaskInputs:
    """What :meth:`Task.build` gets. ``images``: the input files, read (float (H, W, C) in [0, 1]);
    ``image_shape``: the generator's (C, H, W); ``simulate``: the inputs are clean images."""

    images: list
    options: dict
    simulate: bool
    image_shape: tuple


@dataclass
class TaskBuild:
    """What :meth:`Task.build` returns. ``masks``: (B, H, W) bool, True = observed (in-painting), or
    None; ``sim_params``: values of the corruption's latents used to simulate (or None)."""

    corruption: Any
    masks: Optional[np.ndarray] = None
    mask_infos: list = field(default_factory=list)
    sim_params: Optional[dict] = None


class Task:
    """A CLI/pipeline task over one registered corruption (see the module docstring)."""

    name: str = "task"
    help: str = ""
    options: tuple = ()
    #: MAP options used when the user gives no --lr (inversion optimises harder: docs/defaults.md)
    map_options: Optional[dict] = None
    #: the variational family of ``--method vi`` on this task when ``--guide`` is not given (None: VI's
    #: own default, ``normal``): the cheapest guide whose 90 % intervals were calibrated on this task's
    #: validation images (docs/calibration.md, "Defaults per task"); applied by RunSpec.check
    vi_guide: Optional[str] = None

    def defaults(self) -> dict:
        return {o.name: ([] if o.multiple else o.default) for o in self.options}

    def resolve(self, given: dict) -> dict:
        """This task's options: the given values (None = not given) over the defaults."""
        out = self.defaults()
        for o in self.options:
            v = given.get(o.name)
            if v is not None and not (o.multiple and len(v) == 0):
                out[o.name] = list(v) if o.multiple else v
        return out

    def check(self, opts: dict, simulate: bool) -> None:
        """Cheap checks of the options (one-line BRGMError), before anything is loaded."""

    def check_shape(self, opts: dict, image_shape: tuple) -> None:
        """Checks that need the generator's image shape (C, H, W)."""

    def build(self, inputs: TaskInputs) -> TaskBuild:
        raise NotImplementedError

    def observation_shape(self, corruption, image_shape: tuple) -> tuple:
        """(C, h, w) of an observation for the generator's (C, H, W)."""
        return tuple(corruption.out_shape(tuple(image_shape)))

    def size_hint(self, hw: tuple, obs_shape: tuple, image_shape: tuple, opts: dict) -> str:
        h, w = hw
        _, oh, ow = obs_shape
        return (f"is {h}x{w} but --task {self.name} with the {image_shape[1]}x{image_shape[2]} generator needs a "
                f"{oh}x{ow} observation; resize or crop it, or pass --simulate to corrupt a clean image")

    def extra_outputs(self, observed: np.ndarray, recon: np.ndarray, mask: Optional[np.ndarray]) -> dict:
        """Extra per-image images (name -> (H, W, C) in [0, 1]) written beside the reconstruction
        and scored in metrics.json."""
        return {}

    def baseline(self, y, image_shape: tuple) -> Optional[tuple]:
        """(name, (H, W, C) in [0, 1]) of the classical baseline for observation y (C, h, w), or None."""
        return None

    def settings(self, opts: dict) -> dict:
        """What run.json records of the options (JSON-able)."""
        return {k: ([str(x) for x in v] if isinstance(v, list) else (str(v) if isinstance(v, Path) else v))
                for k, v in opts.items()}


def _masks_for(inputs: TaskInputs, paths: Sequence) -> tuple[np.ndarray, list]:
    """Per-image in-painting masks (B, H, W), True = observed, and what run.json says of them."""
    C, R, _ = inputs.image_shape
    per_image, infos = [], []
    if paths:
        loaded = []
        for mp in paths:
            if inputs.simulate:
                m, minfo = io.read_mask(mp)
                if m.shape != (R, R):  # a mask drawn on the original clean image: the same crop + resize
                    if m.shape not in {im.size for im in inputs.images}:
                        raise BRGMError(f"mask {str(mp)!r} is {m.shape[0]}x{m.shape[1]}; with --simulate give a "
                                        f"{R}x{R} mask or one of the clean image's size ({io.MASK_HINT})")
                    r, _ = io.center_crop_resize(m[:, :, None].astype(np.float32), R)
                    m = r[:, :, 0] >= 0.5
                    if m.all() or not m.any():
                        raise BRGMError(f"mask {str(mp)!r} resized to {R}x{R} has no missing or no observed pixel "
                                        f"left; give a {R}x{R} mask ({io.MASK_HINT})")
            else:
                m, minfo = io.read_mask(mp, (R, R), size_of=f"the {R}x{R} observation")
            loaded.append(m)
            infos.append({**minfo.info(), "missing_fraction": float((~m).mean())})
        per_image = loaded * len(inputs.images) if len(loaded) == 1 else loaded
        return np.stack(per_image), infos
    for img in inputs.images:
        m = None if inputs.simulate else io.alpha_mask(img)
        if m is None and not inputs.simulate:
            raise BRGMError(f"in-painting {img.path!r} needs a mask: pass --mask MASK.png ({io.MASK_HINT}), or give a "
                            f"PNG whose transparent pixels mark the missing region")
        if m is None:
            m = io.default_mask(R)
            infos.append({"path": None, "source": "default: centred square hole, half the side",
                          "missing_fraction": float((~m).mean())})
        else:
            infos.append({"path": img.path, "source": "transparent pixels of the input",
                          "missing_fraction": float((~m).mean())})
        per_image.append(m)
    return np.stack(per_image), infos


def number_or_auto(value: Optional[str], option: str) -> Optional[Any]:
    """None, the string 'auto', or a positive float; a one-line error otherwise."""
    if value is None or value == "auto":
        return value
    try:
        v = float(value)
    except ValueError:
        raise BRGMError(f"{option} must be a positive number or 'auto'; got {value!r}") from None
    if not v > 0:
        raise BRGMError(f"{option} must be positive; got {value}")
    return v


class SuperresTask(Task):
    name = "superres"
    help = "x<factor> super-resolution: the observation is the image blurred by --kernel and sub-sampled."
    options = (
        TaskOption("factor", int, 8, "Super-resolution factor; must divide the generator resolution."),
        TaskOption("kernel", str, "box", "Down-sampling kernel: box | bicubic | gauss."),
        TaskOption("kernel_width", str, None, "With --kernel gauss: the kernel's std in input pixels (default "
                   "factor/2), or 'auto' to infer it (blind)."),
        TaskOption("simulate_kernel_width", float, None, "With --simulate and --kernel-width auto: the width "
                   "used to make the observation."),
    )

    def check(self, opts: dict, simulate: bool) -> None:
        if opts["kernel"] not in SUPERRES_KERNELS:
            raise BRGMError(f"--kernel {opts['kernel']!r} is not one of: {', '.join(SUPERRES_KERNELS)}")
        kw = number_or_auto(opts["kernel_width"], "--kernel-width")
        if kw is not None and opts["kernel"] != "gauss":
            raise BRGMError("--kernel-width is the width of the Gaussian kernel: use it with --task superres "
                            "--kernel gauss")
        skw = opts["simulate_kernel_width"]
        if skw is not None:
            if not (simulate and kw == "auto"):
                raise BRGMError("--simulate-kernel-width makes a blind observation: use it with --simulate and "
                                "--kernel-width auto")
            if not skw > 0:
                raise BRGMError(f"--simulate-kernel-width must be positive; got {skw}")
        f = opts["factor"]
        if f < 1:
            raise BRGMError(f"--factor must be a positive integer, got {f}")
        if f == 1:
            raise BRGMError("--factor 1 is no super-resolution; use --task none, or a factor such as 4 or 8")

    def check_shape(self, opts: dict, image_shape: tuple) -> None:
        superres_factor_check(image_shape[-1], opts["factor"])

    def build(self, inputs: TaskInputs) -> TaskBuild:
        from brgm_pyro.models.corruptions import make_corruption
        from brgm_pyro.models.corruptions.superres import blur_width_latent

        o = inputs.options
        kw = number_or_auto(o["kernel_width"], "--kernel-width")
        width = blur_width_latent(o["factor"]) if kw == "auto" else kw
        corruption = make_corruption("superres", factor=o["factor"], kernel=o["kernel"], gauss_sigma=width)
        return TaskBuild(corruption, sim_params=latent_values(corruption, o["simulate_kernel_width"]))

    def size_hint(self, hw, obs_shape, image_shape, opts) -> str:
        h, w = hw
        R, factor = image_shape[-1], opts["factor"]
        need = R // factor
        tips = [f"give a {need}x{need} image"]
        if (h, w) == (R, R):
            tips.append("use --task inpaint (with --mask) or --task none for a full-size image")
        elif h == w and R % h == 0 and R // h > 1:
            tips.append(f"use --factor {R // h} for this {h}x{w} image")
        tips.append("or pass --simulate to corrupt a clean image yourself")
        return (f"is {h}x{w} but x{factor} super-resolution with the {R}x{R} generator needs a {need}x{need} "
                f"observation; " + ", ".join(tips))

    def baseline(self, y, image_shape) -> Optional[tuple]:
        from brgm_pyro.pipeline.baselines import bicubic_upsample

        up = bicubic_upsample(y[None], image_shape[-1])[0]
        return "baseline_bicubic", io.from_model(up)


class InpaintTask(Task):
    name = "inpaint"
    help = "in-painting: missing pixels (black in --mask, or transparent in the input) are not observed."
    options = (TaskOption("mask", Path, None, "In-painting mask (white = observed, black = missing); once for all "
                          "inputs or once per input.", multiple=True),)

    def build(self, inputs: TaskInputs) -> TaskBuild:
        import torch

        from brgm_pyro.models.corruptions import make_corruption

        paths = inputs.options["mask"]
        if len(paths) not in (0, 1, len(inputs.images)):
            raise BRGMError(f"{len(paths)} masks for {len(inputs.images)} inputs; give one --mask for all inputs or "
                            f"one per input")
        masks, infos = _masks_for(inputs, paths)
        same = all(np.array_equal(masks[0], m) for m in masks[1:])
        corruption = make_corruption("inpaint", mask=torch.from_numpy(masks[0] if same else masks[:, None]))
        return TaskBuild(corruption, masks=masks, mask_infos=infos)

    def size_hint(self, hw, obs_shape, image_shape, opts) -> str:
        h, w = hw
        R = image_shape[-1]
        return (f"is {h}x{w} but the {R}x{R} generator needs a {R}x{R} observation for --task {self.name}; resize "
                f"or crop it to {R}x{R}, or pass --simulate to centre-crop and resize a clean image")

    def extra_outputs(self, observed, recon, mask) -> dict:
        from brgm_pyro import figures

        return {"composite": figures.composite(observed, recon, mask)}


class IdentityTask(InpaintTask):
    name = "none"
    help = "inversion: the observation is the clean image (W+ inversion)."
    options = ()

    @property
    def map_options(self) -> dict:
        from brgm_pyro.inference.map import INVERSION_MAP_OPTIONS

        # inversion: nothing to in-fill, so no early stop to protect; optimise harder (docs/defaults.md)
        return dict(INVERSION_MAP_OPTIONS)

    def build(self, inputs: TaskInputs) -> TaskBuild:
        from brgm_pyro.models.corruptions import make_corruption

        return TaskBuild(make_corruption("none"))

    def extra_outputs(self, observed, recon, mask) -> dict:
        return {}


def superres_factor_check(resolution: int, factor: int) -> None:
    if factor < 1:
        raise BRGMError(f"--factor must be a positive integer, got {factor}")
    if factor == 1:
        raise BRGMError("--factor 1 is no super-resolution; use --task none, or a factor such as 4 or 8")
    if resolution % factor:
        ok = [f for f in range(2, resolution + 1) if resolution % f == 0]
        raise BRGMError(f"--factor {factor} does not divide the generator's resolution {resolution}; "
                        f"use one of {', '.join(map(str, ok))}")


def latent_values(corruption, value: Optional[float] = None) -> Optional[dict]:
    """Values of the corruption's latents to simulate with: ``value`` or each latent's prior guess."""
    lats = corruption.latents()
    if not lats:
        return None
    import torch

    return {lat.name: torch.tensor(float(value) if value is not None else lat.init) for lat in lats}


BUILTIN_TASKS: dict[str, Callable[[], Task]] = {"superres": SuperresTask, "inpaint": InpaintTask,
                                               "none": IdentityTask}

_SCALARS = (int, float, str, bool)


def _scalar_type(param: inspect.Parameter) -> Optional[type]:
    """The CLI type of a factory parameter (int/float/str/bool), or None if it is not one."""
    if param.default is not inspect.Parameter.empty and param.default is not None:
        return type(param.default) if isinstance(param.default, _SCALARS) else None
    ann = param.annotation
    if get_origin(ann) is Union:  # Optional[float] etc.
        args = [a for a in get_args(ann) if a is not type(None)]
        ann = args[0] if len(args) == 1 else None
    return ann if ann in _SCALARS else None


def _arg_help(doc: str, name: str) -> str:
    """The docstring's ``Args:`` entry of ``name`` (first line), or ''."""
    m = re.search(rf"^\s*{re.escape(name)}(?:\s*\([^)]*\))?:\s*(.+)$", doc or "", re.M)
    return m.group(1).strip() if m else ""


class SignatureTask(Task):
    """A task read off a registered corruption factory's signature (see the module docstring)."""

    def __init__(self, name: str, factory: Callable) -> None:
        self.name, self.factory = name, factory
        doc = inspect.getdoc(factory) or ""
        self.help = doc.split("\n")[0] if doc else f"the registered corruption {name!r}"
        try:
            sig = inspect.signature(factory, eval_str=True)
        except (TypeError, ValueError, NameError):
            sig = inspect.signature(factory)
        opts, required = [], []
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
                continue
            t = _scalar_type(p)
            has_default = p.default is not inspect.Parameter.empty
            if t is None:
                if not has_default:
                    raise TypeError(f"parameter {p.name!r} is not a CLI type")
                continue  # a tensor/array parameter with a default: not on the command line
            opts.append(TaskOption(p.name, t, p.default if has_default else None,
                                   _arg_help(doc, p.name) or f"{name}: {p.name}"))
            if not has_default:
                required.append(p.name)
        self.options, self.required = tuple(opts), tuple(required)

    def check(self, opts: dict, simulate: bool) -> None:
        for r in self.required:
            if opts.get(r) is None:
                raise BRGMError(f"--task {self.name} needs --{r.replace('_', '-')}")

    def build(self, inputs: TaskInputs) -> TaskBuild:
        kw = {k: v for k, v in inputs.options.items() if v is not None}
        try:
            corruption = self.factory(**kw)
        except BRGMError:
            raise
        except (TypeError, ValueError) as e:
            raise BRGMError(f"--task {self.name}: {' '.join(str(e).split())}") from None
        return TaskBuild(corruption, sim_params=latent_values(corruption))


def _resolve(spec: Any) -> Any:
    if isinstance(spec, str) and ":" in spec:
        mod, attr = spec.split(":", 1)
        return getattr(importlib.import_module(mod), attr)
    return spec


def get_task(name: str) -> Task:
    """The task of the registered corruption ``name`` (BRGMError naming the choices if unknown)."""
    table = tasks()
    if name not in table:
        raise BRGMError(f"--task {name!r} is not one of: {', '.join(table)}")
    return table[name]


def tasks() -> dict[str, Task]:
    """Every task, in registry order (builtins first): name -> :class:`Task`."""
    from brgm_pyro.models.corruptions import CORRUPTIONS

    out: dict[str, Task] = {}
    for name in [*[n for n in BUILTIN_TASKS if n in CORRUPTIONS], *CORRUPTIONS.names()]:
        if name in out:
            continue
        factory = CORRUPTIONS.get(name)
        spec = _resolve(getattr(factory, "cli_task", None)) or BUILTIN_TASKS.get(name)
        if spec is None:
            try:
                out[name] = SignatureTask(name, factory)
            except (TypeError, ValueError):
                continue  # a factory that needs an array: not a CLI task unless it declares one
            continue
        task = spec() if isinstance(spec, type) else spec
        task.name = name
        out[name] = task
    return out


def merged_options(table: dict[str, Task], reserved: Sequence[str] = ()) -> dict[str, tuple]:
    """Every task option once, for the CLI: parameter name -> (option, [(task, option name), ...]).

    Two tasks may share an option name only with the same type (else TypeError); a shared option's
    CLI default is None (each task applies its own default). An option whose name is ``reserved``
    (a command option such as ``--seed``) is exposed as ``--<task>-<name>``.
    """
    out: dict[str, tuple] = {}
    for tname, task in table.items():
        for o in task.options:
            key = o.name if o.name not in reserved else f"{tname}_{o.name}"
            if key in out:
                prev, users = out[key]
                if (prev.type, prev.multiple) != (o.type, o.multiple):
                    raise TypeError(f"tasks {users[0][0]!r} and {tname!r} both declare --{o.name} with different "
                                    f"types")
                users.append((tname, o.name))
                helps = prev.help if o.help in prev.help else f"{prev.help} | {tname}: {o.help}"  # each task's own
                if prev.default != o.default or helps != prev.help:
                    default = prev.default if prev.default == o.default else None
                    out[key] = (TaskOption(key, o.type, default, helps, o.multiple), users)
            else:
                out[key] = (TaskOption(key, o.type, o.default, o.help, o.multiple), [(tname, o.name)])
    return out
