"""One run's whole specification, owned by the library: :class:`RunSpec`.

A run is a task with its options, model choices (:class:`ModelChoice`: prior, pixel noise,
discrepancy), an inference method with its options (:class:`MethodChoice`) and whether the
generator's perceptual network is used. ``brgm reconstruct FILE``, ``brgm reconstruct DIR`` (the
dataset runner), ``brgm demo`` and ``brgm.build_model`` all build their model through
:func:`brgm_pyro.pipeline.core.build_model`, whose defaults (the pixel noise of a task that states
its noise, the discrepancy term of the method) are in one place, so one image builds one model
whichever path it takes. The CLI only turns flags into a :class:`RunSpec`.

What an inference method accepts is read off its registered traits
(:class:`~brgm_pyro.inference.traits.MethodTraits`), never off its name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from brgm_pyro import io
from brgm_pyro.errors import BRGMError
from brgm_pyro.pipeline import core
from brgm_pyro.pipeline.core import method_traits
from brgm_pyro.pipeline.tasks import get_task, number_or_auto


def check_choice(value: str, choices, option: str) -> str:
    """``value`` if it is one of ``choices``, else a one-line error naming them."""
    if value not in choices:
        raise BRGMError(f"{option} {value!r} is not one of: {', '.join(choices)}")
    return value


def set_threads(threads: Optional[int]) -> None:
    """torch.set_num_threads, with a one-line error for nonsense."""
    import torch

    if threads is None:
        return
    if threads < 1:
        raise BRGMError(f"--threads must be at least 1, got {threads}")
    torch.set_num_threads(int(threads))


@dataclass
class ModelChoice:
    """What ``--prior``, ``--sigma-pixel``, ``--noise``, ``--kernel-width`` ... ask of the model.

    The kernel-width fields are recorded here for run.json; the super-resolution task reads and
    checks them (:class:`~brgm_pyro.pipeline.tasks.SuperresTask`). ``discrepancy`` None: the
    method's default, resolved by :meth:`RunSpec.build` (and then recorded here as auto/off).
    """

    prior: str = "brgm"
    sigma_pixel: Optional[str] = None
    noise: str = "gaussian"
    noise_per_image: bool = False
    kernel_width: Optional[str] = None
    simulate_kernel_width: Optional[float] = None
    discrepancy: Optional[str] = None
    prior_options: tuple = ()

    def check(self) -> None:
        from brgm_pyro.models.likelihoods import PIXEL_NOISE
        from brgm_pyro.models.priors import PRIORS

        check_choice(self.prior, PRIORS.names(), "--prior")
        check_choice(self.noise, list(PIXEL_NOISE), "--noise")
        sp = number_or_auto(self.sigma_pixel, "--sigma-pixel")
        if self.noise_per_image and sp != "auto":
            raise BRGMError("--noise-per-image learns one noise level per image: add --sigma-pixel auto")
        self.discrepancy_value()
        self.prior_option_values()

    def prior_option_values(self) -> dict:
        """``--prior-option KEY=VALUE`` (repeatable), checked against the prior factory's named options."""
        from brgm_pyro.models.priors import PRIORS

        if not self.prior_options:
            return {}
        sig = inspect.signature(PRIORS.get(self.prior)).parameters
        known = [k for k, p in sig.items() if k not in ("generator", "stats", "kappa")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        out: dict[str, Any] = {}
        for item in self.prior_options:
            key, sep, text = str(item).partition("=")
            key = key.strip().replace("-", "_")
            if not sep or not key:
                raise BRGMError(f"--prior-option takes KEY=VALUE (e.g. fidelity_scale=0.05); got {item!r}")
            if key not in known:
                raise BRGMError(f"--prior-option {key}: the prior {self.prior!r} takes "
                                f"{', '.join(known) or 'no options'}")
            out[key] = _option_value(text.strip())
        return out

    def discrepancy_value(self):
        """``--discrepancy``: None (off or not given), ``"auto"`` (the generator's stored scale) or tau."""
        d = self.discrepancy
        if d is None or d == "off":
            return None
        if d == "auto":
            return "auto"
        try:
            tau = float(d)
        except ValueError:
            raise BRGMError(f"--discrepancy must be off, auto or a positive number; got {d!r}") from None
        if not tau > 0:
            raise BRGMError(f"--discrepancy must be positive; got {d!r}")
        return tau

    def model_kwargs(self) -> dict:
        """Keyword arguments of :func:`~brgm_pyro.pipeline.core.build_model` for what was chosen; what
        was not (pixel noise, discrepancy) is left out, so that build_model's defaults apply."""
        out: dict[str, Any] = {"prior": self.prior, "noise": self.noise}
        sp = number_or_auto(self.sigma_pixel, "--sigma-pixel")
        if sp == "auto":
            out.update(sigma_pixel="learn", noise_per_image=self.noise_per_image)
        elif sp is not None:
            out["sigma_pixel"] = sp
        if self.discrepancy is not None:
            out["discrepancy"] = self.discrepancy_value()
        if self.prior_options:
            out["prior_options"] = self.prior_option_values()
        return out


def _option_value(text: str):
    """A --prior-option value: true/false, a number, or the text itself (a path, a name)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def model_kwargs_for(choice: ModelChoice, corruption) -> dict:
    """``choice.model_kwargs()`` with :func:`~brgm_pyro.pipeline.core.build_model`'s pixel-noise
    default filled in (kept for scripts; :meth:`RunSpec.build` is the way a run builds its model)."""
    kw = choice.model_kwargs()
    if "sigma_pixel" not in kw and core.task_sigma_pixel(corruption) is not None:
        kw["sigma_pixel"] = core.task_sigma_pixel(corruption)
    return kw


@dataclass
class MethodChoice:
    """The inference method and its options (None: the method's default). Checked against the
    method's registered traits: an option it has no use for is refused, in one line."""

    method: str = "map"
    steps: Optional[int] = None
    num_samples: int = 16
    chains: Optional[int] = None
    workers: int = 1
    lr: Optional[float] = None
    guide: Optional[str] = None
    mass: Optional[str] = None
    max_tree_depth: Optional[int] = None
    particles: Optional[int] = None
    reweight: Optional[str] = None  # VI: "psis" makes the mean and intervals use the draws' PSIS weights

    def check(self, device: str = "cpu", registry=None) -> None:
        """One-line errors for options the method has no use for, or values that make no sense."""
        (registry or core.methods_registry()).get(self.method)
        t = method_traits(self.method, registry)
        m = self.method
        if self.lr is not None and not t.learning_rate:
            raise BRGMError(f"--lr is a learning rate; --method {m} has none (drop --lr)")
        if self.steps is not None and self.steps < 1:
            raise BRGMError(f"--steps must be at least 1, got {self.steps}")
        if self.num_samples < 0:
            raise BRGMError(f"--num-samples must be >= 0, got {self.num_samples}")
        if t.draws and self.num_samples < 1:
            raise BRGMError(f"--method {m} draws the posterior: --num-samples must be at least 1 (with 0 no "
                            f"posterior is written; use --method map for a point estimate)")
        self._check_chains(t, device)
        self._check_kernel(t)
        self._check_particles(t)
        if self.guide is not None:
            from brgm_pyro.inference import GUIDES

            if not t.guide:
                raise BRGMError(f"--guide is the variational family of --method vi; --method {m} has none "
                                f"(drop --guide)")
            check_choice(self.guide, GUIDES.names(), "--guide")
        if self.reweight is not None:
            from brgm_pyro.inference.psis import REWEIGHT_CHOICES

            check_choice(self.reweight, REWEIGHT_CHOICES, "--reweight")
            if not t.guide and self.reweight != "none":
                raise BRGMError(f"--reweight {self.reweight} reweights the draws of a variational guide (--method "
                                f"vi); --method {m} has none (drop --reweight)")

    def _check_chains(self, t, device: str) -> None:
        m = self.method
        if self.chains is not None:
            if not t.chains:
                raise BRGMError(f"--chains is for MCMC methods; --method {m} has no chains (drop --chains)")
            if self.chains < 1:
                raise BRGMError(f"--chains must be at least 1, got {self.chains}")
        if self.workers != 1:
            if not t.chains:
                raise BRGMError(f"--workers runs MCMC chains in parallel; --method {m} has no chains "
                                f"(drop --workers)")
            if self.workers < 1:
                raise BRGMError(f"--workers must be at least 1, got {self.workers}")
            if device != "cpu":
                raise BRGMError("--workers > 1 runs chains in CPU processes; on a GPU drop --workers "
                                "(chains then run one after another on the device)")

    def _check_particles(self, t) -> None:
        """``--particles``: a population method's N (SMC); refused where the traits say it has none."""
        m = self.method
        if self.particles is not None and not t.particles:
            raise BRGMError(f"--particles is the population size of SMC; --method {m} has none (drop it)")
        if t.particles and self.workers != 1:
            raise BRGMError(f"--workers is for MCMC chains; --method {m} moves its particles as one batch (drop it)")
        if self.particles is not None and self.particles < 2:
            raise BRGMError(f"--particles must be at least 2, got {self.particles}")

    def _check_kernel(self, t) -> None:
        from brgm_pyro.inference.mcmc.runner import MASS_CHOICES

        m = self.method
        if self.mass is not None:
            if not t.mass_matrix:
                raise BRGMError(f"--mass is an HMC/NUTS option; --method {m} has no mass matrix (drop it)")
            if self.mass not in MASS_CHOICES:
                raise BRGMError(f"--mass must be one of {', '.join(MASS_CHOICES)}; got {self.mass!r}")
        if self.max_tree_depth is not None:
            if not t.tree_depth:
                raise BRGMError(f"--max-tree-depth is a NUTS option; --method {m} has no trees (drop it)")
            if not 1 <= self.max_tree_depth <= 12:
                raise BRGMError(f"--max-tree-depth must be between 1 and 12 (2^D - 1 gradients per draw), "
                                f"got {self.max_tree_depth}")

    def runner_options(self) -> dict:
        """The method's keyword options that were given (num_chains, workers, guide, mass, max_tree_depth,
        num_particles)."""
        out: dict[str, Any] = {}
        if self.chains is not None:
            out["num_chains"] = self.chains
        if self.particles is not None:
            out["num_particles"] = int(self.particles)
        if self.workers != 1:
            out["workers"] = self.workers
        for key in ("guide", "mass", "max_tree_depth", "reweight"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


def infer_task(task: Optional[str], inputs: list, task_opts: dict, simulate: bool) -> str:
    """``--task`` or its default: inpaint with ``--mask`` or a transparent input, else superres."""
    if task is not None:
        return task
    if task_opts.get("mask"):
        return "inpaint"
    if not simulate and inputs:
        try:  # a transparent hole in the input also means in-painting
            if io.alpha_mask(io.read_image(inputs[0], what="input image")) is not None:
                return "inpaint"
        except BRGMError:
            pass  # reported properly later
    return "superres"


@dataclass
class RunSpec:
    """A run: task and its (resolved) options, model choices, method choices, perceptual term.

    ``check()`` refuses a bad combination in one line before anything is loaded; ``build(G, obs)``
    gives the model every path builds for this run (:func:`~brgm_pyro.pipeline.core.build_model`
    with the method's defaults).
    """

    task: str = "superres"
    task_options: dict = field(default_factory=dict)
    model: ModelChoice = field(default_factory=ModelChoice)
    method: MethodChoice = field(default_factory=MethodChoice)
    percept: Optional[bool] = None  # None: the method's default (core.default_percept)
    simulate: bool = False

    def use_percept(self) -> bool:
        """Whether this run's likelihood has the perceptual term: ``percept``, or the method's default."""
        return core.default_percept(self.method.method) if self.percept is None else bool(self.percept)

    def check(self, device: str = "cpu", registry=None) -> None:
        t = get_task(self.task)
        self.task_options = t.resolve(self.task_options)  # the task's defaults for what was not given
        t.check(self.task_options, self.simulate)
        self.model.check()
        self.method.check(device, registry)
        if self.method.guide is None and t.vi_guide is not None and method_traits(self.method.method, registry).guide:
            self.method.guide = t.vi_guide  # the task's default family (Task.vi_guide; run.json records it)

    def default_discrepancy(self, G, corruption) -> tuple[str, Optional[str]]:
        """(``auto`` or ``off``, a console note or None): what ``--discrepancy`` means when not given."""
        return core.resolve_default_discrepancy(self.method.method, G, self.model.noise, corruption)

    def build(self, G, obs, *, phi: Any = "default", note: Optional[Callable[[str], None]] = None):
        """The model of this run on ``obs`` (an :class:`~brgm_pyro.pipeline.core.Observation`):
        :func:`~brgm_pyro.pipeline.core.build_model` with this method's defaults. ``phi``: "default"
        (G's own network) or a network; none unless :meth:`use_percept`, or for a non-image observation.
        ``note(text)`` receives the console note when the default discrepancy is off for a reason."""
        kw = self.model.model_kwargs()
        if "discrepancy" not in kw and note is not None:
            _, why = self.default_discrepancy(G, obs.corruption)
            if why:
                note(why)
        if not self.use_percept() or not obs.image_observation:
            phi = None
        elif isinstance(phi, str) and phi == "default":
            phi = core.default_phi(G)  # asked for explicitly: not the method's default again
        return core.build_model(G, obs.corruption, phi=phi, method=self.method.method, **kw)


__all__ = ["RunSpec", "ModelChoice", "MethodChoice", "method_traits", "model_kwargs_for", "infer_task",
           "check_choice", "set_threads"]
