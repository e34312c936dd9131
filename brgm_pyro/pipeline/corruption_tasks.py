"""Explicit CLI tasks of the corruptions that need more than their factory's signature.

Each is found through the factory's ``cli_task`` attribute (a lazy ``"module:attr"`` string, so
the corruption files do not import the pipeline; docs/API.md "Tasks"):

* :class:`ColorizeTask`, :class:`DenoiseTask`, :class:`BlindDeblurTask`: the signature's options,
  plus exact observation channels (:meth:`StrictChannels.read_channels`): a colorization
  observation is one gray channel (an RGB file is accepted only when its three channels are
  equal); a denoising/deblurring observation of an RGB generator has three channels (a gray file
  is refused rather than silently repeated: it would ask for a gray reconstruction);
* :class:`DeblurTask`: ``--kernel gauss | motion | KERNEL.npy`` (a user kernel, 1-D separable or 2-D,
  summing to 1, read with ``allow_pickle=False``);
* :class:`CompressedSensingTask`: ``--measurements M`` (or ``--matrix A.npy``, (m, C H W)), the
  image shape taken from the generator; baseline: the minimum-norm least-squares image;
* :class:`ComposeTask`: ``--parts "deblur:sigma=2+superres:factor=4"`` (see :func:`parse_parts`).

Baselines (metrics.json, ``baseline_*``): colorization the gray image replicated to RGB; CS the
pseudo-inverse. Bad input is a one-line BRGMError before anything is written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from brgm_pyro import io
from brgm_pyro.errors import BRGMError
from brgm_pyro.pipeline.tasks import SignatureTask, Task, TaskBuild, TaskInputs, TaskOption, latent_values

GRAY_TOLERANCE = 1.5 / 255  # an RGB file whose channels differ by less is gray (8-bit rounding)


def load_npy(path, what: str) -> np.ndarray:
    """A float64 array from a ``.npy`` file, never unpickling (``allow_pickle=False``); one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise BRGMError(f"{what} file {str(p)!r} does not exist; give a .npy array")
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise BRGMError(f"{what} file {str(p)!r} is not a plain numeric .npy array ({' '.join(str(e).split())[:120]})"
                        ) from None
    except (OSError, EOFError) as e:
        raise BRGMError(f"cannot read {what} file {str(p)!r} as .npy ({type(e).__name__}); save it with numpy.save"
                        ) from None
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "iuf":
        raise BRGMError(f"{what} file {str(p)!r} holds a {getattr(a, 'dtype', type(a))} array; give real numbers")
    return a.astype(np.float64)


class StrictChannels:
    """Observation files must have the channels the corruption produces (see the module docstring)."""

    name: str

    def read_channels(self, arr: np.ndarray, channels: int, path: str) -> tuple[np.ndarray, Optional[str]]:
        c = arr.shape[-1]
        if c == channels:
            return arr, None
        if c == 3 and channels == 1:
            spread = float(np.abs(arr - arr.mean(-1, keepdims=True)).max())
            if spread <= GRAY_TOLERANCE:
                return arr[..., :1], "RGB with equal channels read as gray"
            raise BRGMError(f"input image {path!r} has colour but --task {self.name} observes one gray channel; give "
                            f"the grayscale image, or pass --simulate to make one from a colour image")
        raise BRGMError(f"input image {path!r} has {c} channel(s) but --task {self.name} observes {channels} with this "
                        f"generator; give a {channels}-channel image, or pass --simulate with a clean image")


def _with_help(options: tuple, helps: dict) -> tuple:
    """``options`` with the CLI help of the named ones replaced (docstring lines are written for Python)."""
    return tuple(TaskOption(o.name, o.type, o.default, helps.get(o.name, o.help), o.multiple) for o in options)


PADDING_HELP = "Blur boundary handling: reflect | replicate | circular | zero | valid (smaller observation)."


class ColorizeTask(StrictChannels, SignatureTask):
    def __init__(self) -> None:
        from brgm_pyro.models.corruptions.colorization import Colorization

        super().__init__("colorize", Colorization)
        self.help = "colorization: the observation is the gray (Rec. 601 luma) image, one channel."
        self.options = _with_help(self.options, {"weights": "Luma weights of the gray observation: rec601 | rec709."})

    def baseline(self, y, image_shape) -> Optional[tuple]:
        return "baseline_gray", io.from_model(y.expand(image_shape[0], -1, -1))


class DenoiseTask(StrictChannels, SignatureTask):
    def __init__(self) -> None:
        from brgm_pyro.models.corruptions.denoising import Denoising

        super().__init__("denoise", Denoising)
        self.help = "denoising: the observation is the image plus Gaussian noise of std --sigma ([-1, 1] units)."
        self.options = _with_help(self.options, {"sigma": "noise std in [-1, 1] units (default 0.2)."})


class BlindDeblurTask(StrictChannels, SignatureTask):
    def __init__(self) -> None:
        from brgm_pyro.models.corruptions.deblur import blind_deblur

        super().__init__("deblur_blind", blind_deblur)
        self.options = _with_help(self.options, {"padding": PADDING_HELP})


class DeblurTask(StrictChannels, SignatureTask):
    """Deblurring with a known kernel; ``--kernel`` may be a ``.npy`` file."""

    def __init__(self) -> None:
        from brgm_pyro.models.corruptions.deblur import Blur

        super().__init__("deblur", Blur)
        self.help = "deblurring: the observation is the image convolved with --kernel (gauss | motion | K.npy)."
        self.options = _with_help(self.options, {
            "kernel": "blur kernel: gauss | motion | a .npy array (1-D separable or 2-D, summing to 1).",
            "sigma": "Gaussian blur std in pixels (default 2).", "padding": PADDING_HELP,
            "noise_sigma": "with --simulate: std of the added noise ([-1, 1] units)."})

    def check(self, opts: dict, simulate: bool) -> None:
        super().check(opts, simulate)
        k = str(opts["kernel"])
        if k not in ("gauss", "motion") and not k.lower().endswith(".npy"):
            raise BRGMError(f"--kernel {k!r} is not gauss, motion or a .npy file")

    def build(self, inputs: TaskInputs) -> TaskBuild:
        k = str(inputs.options["kernel"])
        if k.lower().endswith(".npy"):
            arr = load_npy(k, "kernel")
            inputs = TaskInputs(inputs.images, {**inputs.options, "kernel": arr}, inputs.simulate, inputs.image_shape)
        return super().build(inputs)

    def settings(self, opts: dict) -> dict:
        return {**super().settings(opts), "kernel": str(opts["kernel"])}


class CompressedSensingTask(SignatureTask):
    """Compressed sensing of the generator's images: ``--measurements M`` or ``--matrix A.npy``."""

    def __init__(self) -> None:
        from brgm_pyro.models.corruptions.compressed_sensing import CompressedSensing

        super().__init__("cs", CompressedSensing)
        self.help = "compressed sensing: M linear measurements of the whole image (works with --simulate)."
        keep = _with_help([o for o in self.options if o.name not in ("m", "img_shape")], {
            "kind": "measurement matrix: gaussian (seeded N(0, 1/m)) | fourier (subsampled orthonormal real DFT).",
            "matrix_seed": "seed of the measurement matrix / the Fourier rows.",
            "noise_sigma": "with --simulate: std of the added noise ([-1, 1] units)."})
        self.options = (TaskOption("measurements", int, None, "Number of measurements m (1..C H W)."),
                        *keep, TaskOption("matrix", Path, None, "A measurement matrix (m, C H W) as .npy "
                                          "(instead of --measurements and --kind)."))
        self.required = ()

    def check(self, opts: dict, simulate: bool) -> None:
        m, mat = opts.get("measurements"), opts.get("matrix")
        if (m is None) == (mat is None):
            raise BRGMError("--task cs needs --measurements M or --matrix A.npy (one of them)")
        if m is not None and m < 1:
            raise BRGMError(f"--measurements must be at least 1, got {m}")

    def build(self, inputs: TaskInputs) -> TaskBuild:
        from brgm_pyro.models.corruptions.compressed_sensing import CompressedSensing

        o = inputs.options
        kw = {k: o[k] for k in ("kind", "matrix_seed", "noise_sigma") if k in o and o[k] is not None}
        matrix = load_npy(o["matrix"], "CS matrix") if o.get("matrix") is not None else None
        f = CompressedSensing(m=o.get("measurements"), img_shape=tuple(inputs.image_shape), matrix=matrix, **kw)
        self._operator = f  # the baseline needs it (a Task instance serves one observation)
        return TaskBuild(f)

    def size_hint(self, hw, obs_shape, image_shape, opts) -> str:
        return "is an image, but compressed-sensing observations are not; pass --simulate with a clean image"

    def baseline(self, y, image_shape) -> Optional[tuple]:
        """The minimum-norm least-squares image A^+ y, clipped to the image range."""
        f = getattr(self, "_operator", None)
        if f is None:
            return None
        x = f.cpu().pinv(y[None].cpu().double())[0].float().clamp(-1, 1)
        return "baseline_pinv", io.from_model(x)

    def settings(self, opts: dict) -> dict:
        return {**super().settings(opts), "matrix": str(opts["matrix"]) if opts.get("matrix") else None}


def _typed(value: str, opt: TaskOption, part: str):
    if opt.type is bool:
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise BRGMError(f"--parts: {part}: {opt.name}={value!r} is not true or false")
        return value.lower() in ("true", "1", "yes")
    try:
        v = opt.type(value)
    except ValueError:
        raise BRGMError(f"--parts: {part}: {opt.name}={value!r} is not a {opt.type.__name__}") from None
    return [v] if opt.multiple else v


def parse_parts(spec: str) -> list[tuple[str, Task, dict]]:
    """``"deblur:sigma=2+superres:factor=4,kernel=box+inpaint:mask=m.png"`` -> [(name, task, options)].

    Steps are separated by ``+`` and applied left to right; each is a registered task name,
    optionally followed by ``:`` and ``option=value`` pairs separated by ``,`` (the step's own
    task options, with ``_`` or ``-``: ``kernel_width`` = ``kernel-width``). Values are typed by the
    step's options; a file path must not contain ``+`` or ``,``.
    """
    from brgm_pyro.pipeline.tasks import get_task

    if not spec or not spec.strip():
        raise BRGMError('--task compose needs --parts, e.g. --parts "deblur:sigma=2+superres:factor=4"')
    out = []
    for part in spec.split("+"):
        part = part.strip()
        name, _, rest = part.partition(":")
        name = name.strip()
        if name == "compose":
            raise BRGMError("--parts: a composition cannot contain 'compose'; list its steps instead")
        try:
            task = get_task(name)
        except BRGMError:
            from brgm_pyro.pipeline.tasks import tasks

            raise BRGMError(f"--parts: step {name!r} is not a task; use {', '.join(t for t in tasks() if t != 'compose')}"
                            ) from None
        byname = {o.name: o for o in task.options}
        given: dict = {}
        for kv in filter(None, (s.strip() for s in rest.split(","))):
            k, eq, v = kv.partition("=")
            k = k.strip().replace("-", "_")
            if not eq or k not in byname:
                known = ", ".join(byname) or "none"
                raise BRGMError(f"--parts: {part!r}: {kv!r} is not option=value of --task {name} (options: {known})")
            given[k] = _typed(v.strip(), byname[k], part)
        out.append((name, task, task.resolve(given)))
    return out


class ComposeTask(Task):
    """A composition of registered corruptions given on the command line (:func:`parse_parts`)."""

    help = "composition: --parts \"deblur:sigma=2+superres:factor=4\" (steps applied left to right)."
    options = (TaskOption("parts", str, None, 'Steps of the composition, left to right, e.g. '
                          '"deblur:sigma=2+superres:factor=4+inpaint:mask=m.png".'),)

    def check(self, opts: dict, simulate: bool) -> None:
        for _, task, o in parse_parts(opts["parts"]):
            task.check(o, simulate)

    def build(self, inputs: TaskInputs) -> TaskBuild:
        from brgm_pyro.models.corruptions.composition import Compose

        shape, parts, masks, infos, sim = tuple(inputs.image_shape), [], None, [], {}
        steps = parse_parts(inputs.options["parts"])
        for i, (name, task, o) in enumerate(steps):
            task.check_shape(o, shape)
            b = task.build(TaskInputs(inputs.images, o, inputs.simulate, shape))
            b.corruption.check_input(shape)
            if b.masks is not None:
                if i != len(steps) - 1:
                    raise BRGMError(f"--parts: only the last step may have a mask; {name!r} is step {i + 1}")
                masks, infos = b.masks, b.mask_infos
            sim.update(b.sim_params or {})
            parts.append(b.corruption)
            shape = tuple(b.corruption.out_shape(shape))
        return TaskBuild(Compose(parts), masks=masks, mask_infos=infos, sim_params=sim or None)


__all__ = ["ColorizeTask", "DenoiseTask", "DeblurTask", "BlindDeblurTask", "CompressedSensingTask", "ComposeTask",
           "parse_parts", "load_npy", "StrictChannels"]
