r"""A normalizing-flow prior on W+ (seed 004, RLS), as a proper Pyro distribution.

Each latent vector of W+ is an independent draw from a density fitted to the generator's mapped
latents w = mapping(z), z ~ N(0, I):

.. math::

    \log p(w) = \sum_{i=1}^{L} \log p_F(w_i), \qquad
    \log p_F(w_i) = \log N(F(u_i) \mid 0, I) + \log\lvert\det \partial F / \partial u\rvert - \sum_k \log\sigma_k,
    \quad u_i = (w_i - \mu) / \sigma

with F a masked autoregressive flow (zuko's MAF: scoring is one pass, sampling d passes) acting
on W standardised per dimension (mu, sigma: the mapped latents' mean and std; the standardisation
is part of the density, its Jacobian is the last term). The site ``w`` is a
:class:`FlowLatent` (event shape (L, d), real support, reparameterised samples), so MAP, VI,
NUTS/HMC and the Langevin samplers run on it unchanged; the colinearity factor and RLS's terms
(:mod:`brgm_pyro.models.priors.rls`) are optional factors.

A fitted flow is stored as safetensors (``brgm train-prior``): tensors = the flow's state dict
plus ``mu``, ``sigma``, ``fisher`` (the diagonal Fisher information of the location, for the
Laplace metric) and ``probe_z``/``probe_w`` (mapped latents of fixed z, which tell whether the
file belongs to a given generator); metadata = ``format``, the architecture (JSON) and the
training summary (JSON). Loading reads only tensors and JSON; nothing in the file is executed.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from torch import Tensor, nn

from brgm_pyro.errors import BRGMError
from brgm_pyro.models.priors.base import Prior

FORMAT_TAG = "brgm-flow-prior"
FORMAT_VERSION = "1"
PROBE_SEED = 20240514
NUM_PROBES = 8


@dataclass
class FlowConfig:
    """Architecture of the flow (what rebuilds it from a file).

    ``w_dim``: d; ``transforms``: MAF blocks (RLS: 5); ``hidden``: widths of each block's MADE
    (RLS: 1024 at d = 512); ``noise``: std of the Gaussian smoothing added to the standardised
    training latents (a generator whose z_dim < w_dim maps onto a z_dim-dimensional manifold,
    whose density in R^d does not exist; the flow fits W convolved with N(0, noise^2 sigma^2)).
    """

    w_dim: int
    transforms: int = 5
    hidden: tuple = (256, 256)
    noise: float = 0.1
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, where: str) -> "FlowConfig":
        try:
            raw = json.loads(text)
            cfg = cls(w_dim=int(raw["w_dim"]), transforms=int(raw["transforms"]),
                      hidden=tuple(int(h) for h in raw["hidden"]), noise=float(raw["noise"]))
        except (ValueError, KeyError, TypeError) as e:
            raise BRGMError(f"{where}: the flow architecture in its metadata is not valid ({type(e).__name__}: "
                            f"{e}); retrain it with `brgm train-prior`") from None
        if cfg.w_dim < 1 or cfg.transforms < 1 or not cfg.hidden or min(cfg.hidden) < 1 or cfg.noise < 0:
            raise BRGMError(f"{where}: the flow architecture {asdict(cfg)} is out of range")
        return cfg

    def to_json(self) -> str:
        return json.dumps({"w_dim": self.w_dim, "transforms": self.transforms, "hidden": list(self.hidden),
                           "noise": self.noise}, sort_keys=True)


def build_maf(cfg: FlowConfig) -> nn.Module:
    """zuko's MAF for ``cfg`` (alternating orders, affine autoregressive transforms)."""
    import zuko

    if cfg.w_dim == 1:  # a MADE needs two features; a 1-D flow is one affine map, use a 2-D one padded
        raise BRGMError("a flow prior needs w_dim >= 2")
    return zuko.flows.MAF(cfg.w_dim, transforms=cfg.transforms, hidden_features=tuple(cfg.hidden))


class WFlow(nn.Module):
    """The density of one latent vector: w (..., d) -> log p_F(w) (...), with F on standardised w.

    Buffers: ``mu``, ``sigma`` (d,) the standardisation; ``fisher`` (d,) E[(d log p / dw)^2] on
    held-out mapped latents (the Laplace metric's diagonal); ``probe_z`` (P, z_dim), ``probe_w``
    (P, d) the generator's mapped latents of fixed z.
    """

    def __init__(self, cfg: FlowConfig, mu: Tensor, sigma: Tensor, z_dim: int = 1) -> None:
        super().__init__()
        self.cfg = cfg
        self.maf = build_maf(cfg)
        d = cfg.w_dim
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32).reshape(d).clone())
        self.register_buffer("sigma", torch.as_tensor(sigma, dtype=torch.float32).reshape(d).clone())
        self.register_buffer("fisher", self.sigma.clone() ** -2)  # Gaussian value until fitted
        self.register_buffer("probe_z", torch.zeros(NUM_PROBES, z_dim))
        self.register_buffer("probe_w", torch.zeros(NUM_PROBES, d))
        self.requires_grad_(False)
        self.summary: dict = {}

    @property
    def w_dim(self) -> int:
        return self.cfg.w_dim

    def standardise(self, w: Tensor) -> Tensor:
        return (w - self.mu) / self.sigma

    def gaussianise(self, w: Tensor) -> Tensor:
        """F(w): (..., d) -> (..., d), approximately N(0, I) for w from the generator's W."""
        return self.maf().transform(self.standardise(w))

    def log_prob(self, w: Tensor) -> Tensor:
        """log p_F(w) in nats per vector: (..., d) -> (...)."""
        return self.maf().log_prob(self.standardise(w)) - self.sigma.log().sum()

    def from_noise(self, eps: Tensor) -> Tensor:
        """F^-1(eps): base noise (..., d) -> latents (..., d) (d sequential passes)."""
        return self.maf().transform.inv(eps) * self.sigma + self.mu

    def mode_guess(self) -> Tensor:
        """F^-1(0), the image of the base distribution's mode: a high-density latent (d,)."""
        with torch.no_grad():
            return self.from_noise(torch.zeros(self.w_dim, device=self.mu.device))


class FlowLatent(dist.TorchDistribution):
    """The site ``w``: L independent vectors, each with density p_F; event shape (L, d).

    ``weight`` multiplies the log density (1: the Bayesian prior; RLS's lambda_w / L otherwise,
    then it is an unnormalised factor and ``sample`` still draws from p_F).
    """

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, wflow: WFlow, num_ws: int, weight: float = 1.0, batch_shape=torch.Size(),
                 validate_args=None) -> None:
        self.wflow, self.num_ws, self.weight = wflow, int(num_ws), float(weight)
        super().__init__(torch.Size(batch_shape), torch.Size((self.num_ws, wflow.w_dim)), validate_args=False)

    def expand(self, batch_shape, _instance=None) -> "FlowLatent":
        return FlowLatent(self.wflow, self.num_ws, self.weight, torch.Size(batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """(..., L, d) -> (...)."""
        return self.weight * self.wflow.log_prob(value).sum(-1)

    def rsample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        return self.wflow.from_noise(torch.randn(shape, device=self.wflow.mu.device))

    @property
    def mean(self) -> Tensor:
        return self.wflow.mu.expand(self.batch_shape + self.event_shape)


class FlowPrior(Prior):
    """prod_i p_F(w_i) (times ``weight``), stating its init, draws, scale and curvature from the flow.

    Args:
        wflow: the fitted :class:`WFlow`. num_ws: L. weight: multiplier of the log density.
    """

    def __init__(self, wflow: WFlow, num_ws: int, weight: float = 1.0) -> None:
        if not weight > 0:
            raise BRGMError(f"the flow prior's weight must be positive, got {weight}")
        self.wflow, self.num_ws, self.w_dim, self.weight = wflow, int(num_ws), wflow.w_dim, float(weight)
        self._dist = None

    def distribution(self) -> FlowLatent:
        if self._dist is None:
            self._dist = FlowLatent(self.wflow, self.num_ws, self.weight)
        return self._dist

    def init_value(self) -> Tensor:
        return self.wflow.mode_guess().expand(self.num_ws, self.w_dim)

    def draw_init(self, num: int, generator: torch.Generator) -> Tensor:
        eps = torch.randn(num, self.num_ws, self.w_dim, generator=generator).to(self.wflow.mu.device)
        with torch.no_grad():
            return self.wflow.from_noise(eps).cpu()

    def reference_scale(self) -> Tensor:
        return self.wflow.sigma.expand(self.num_ws, self.w_dim)

    def curvature(self) -> Tensor:
        return (self.weight * self.wflow.fisher).clamp_min(1e-12).expand(self.num_ws, self.w_dim)

    def to(self, device) -> "FlowPrior":
        self.wflow.to(device)
        self._dist = None
        return self

    def config(self) -> dict:
        return {"flow": json.loads(self.wflow.cfg.to_json()), "weight": self.weight,
                "flow_file": self.wflow.summary.get("path")}


# -- files ----------------------------------------------------------------------------------------------


def probe_latents(generator, num: int = NUM_PROBES) -> tuple[Tensor, Tensor]:
    """Fixed z (seed ``PROBE_SEED``) and their mapped latents: (P, z_dim), (P, d), on the CPU."""
    g = torch.Generator(device="cpu").manual_seed(PROBE_SEED)
    z = torch.randn(num, generator.z_dim, generator=g)
    with torch.no_grad():
        w = generator.mapping(z.to(generator.device()))
    w = w[:, 0] if w.ndim == 3 else w
    return z, w.float().cpu()


def save_flow(wflow: WFlow, path: str | os.PathLike, summary: Optional[dict] = None) -> Path:
    """Write ``wflow`` to ``path`` (safetensors; atomic: a temporary file, then ``os.replace``)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in wflow.state_dict().items()}
    meta = {"format": FORMAT_TAG, "version": FORMAT_VERSION, "config": wflow.cfg.to_json(),
            "summary": json.dumps(summary or {}, sort_keys=True)}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise BRGMError(f"cannot write {path}: {e.strerror or e}") from None
    return path


def load_flow(path: str | os.PathLike, generator=None) -> WFlow:
    """Read a flow prior file; with ``generator``, check that it was fitted to that generator."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise BRGMError(f"flow prior file {path} does not exist; fit one with `brgm train-prior`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several error types
        msg = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise BRGMError(f"{path} is not a readable flow prior file ({type(e).__name__}: {msg}); "
                        "refit it with `brgm train-prior`") from None
    if meta.get("format") != FORMAT_TAG:
        raise BRGMError(f"{path} is not a flow prior file (format {meta.get('format')!r}, expected "
                        f"{FORMAT_TAG!r}); fit one with `brgm train-prior`")
    cfg = FlowConfig.from_json(meta.get("config", ""), str(path))
    if "probe_z" not in tensors:
        raise BRGMError(f"{path}: the flow prior file lacks the tensor probe_z; refit it with `brgm train-prior`")
    wflow = WFlow(cfg, torch.zeros(cfg.w_dim), torch.ones(cfg.w_dim), z_dim=int(tensors["probe_z"].shape[-1]))
    _load_state(wflow, tensors, path)
    try:
        wflow.summary = {**json.loads(meta.get("summary", "{}")), "path": str(path)}
    except ValueError:
        raise BRGMError(f"{path}: the training summary in its metadata is not valid JSON") from None
    if not (torch.isfinite(wflow.sigma).all() and (wflow.sigma > 0).all()):
        raise BRGMError(f"{path}: the stored standard deviations are not all positive and finite")
    if generator is not None:
        check_flow_matches(wflow, generator, path)
    return wflow


def _load_state(wflow: WFlow, tensors: dict, path: Path) -> None:
    expected = wflow.state_dict()
    unknown, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if unknown or missing:
        raise BRGMError(f"{path}: the tensors do not match the flow its metadata describes "
                        f"(unknown {unknown[:3]}, missing {missing[:3]}); refit it with `brgm train-prior`")
    for k, v in expected.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise BRGMError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(v.shape)}")
        if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all():
            raise BRGMError(f"{path}: tensor {k} holds non-finite values; refit it with `brgm train-prior`")
    with torch.no_grad():
        wflow.load_state_dict({k: t.to(expected[k].dtype) for k, t in tensors.items()}, strict=True)


def check_flow_matches(wflow: WFlow, generator, path: str | os.PathLike = "flow prior") -> None:
    """A one-line error unless ``wflow`` was fitted to ``generator`` (same d, same mapped probes)."""
    if wflow.w_dim != generator.w_dim:
        raise BRGMError(f"{path} was fitted to a generator with w_dim={wflow.w_dim}, this one has "
                        f"w_dim={generator.w_dim}; fit a prior for it with `brgm train-prior`")
    if wflow.probe_z.shape[-1] != generator.z_dim:
        raise BRGMError(f"{path} was fitted to a generator with z_dim={wflow.probe_z.shape[-1]}, this one has "
                        f"z_dim={generator.z_dim}; fit a prior for it with `brgm train-prior`")
    _, w = probe_latents(generator, wflow.probe_z.shape[0])
    ref = wflow.probe_w.cpu()
    tol = 1e-3 * float(ref.abs().max().clamp_min(1e-6))
    if not torch.allclose(w, ref, rtol=1e-3, atol=tol):
        err = float((w - ref).abs().max())
        raise BRGMError(f"{path} was fitted to another generator (its mapped probe latents differ by {err:.3g}); "
                        "fit a prior for this one with `brgm train-prior`")


def flow_nats_per_dim(wflow: WFlow, w: Tensor, batch: int = 4096) -> float:
    """Mean log p_F per coordinate (nats) over latents w (N, d)."""
    with torch.no_grad():
        lp = torch.cat([wflow.log_prob(w[i:i + batch]) for i in range(0, w.shape[0], batch)])
    return float(lp.mean()) / wflow.w_dim


def gaussian_nats_per_dim(w: Tensor, mu: Tensor, sigma: Tensor) -> float:
    """Mean log N(w | mu, diag sigma^2) per coordinate (nats): BRGM's prior on one vector."""
    lp = -0.5 * ((w - mu) / sigma).pow(2) - sigma.log() - 0.5 * math.log(2 * math.pi)
    return float(lp.sum(-1).mean()) / w.shape[-1]


__all__ = ["FlowConfig", "WFlow", "FlowLatent", "FlowPrior", "build_maf", "save_flow", "load_flow",
           "check_flow_matches", "probe_latents", "flow_nats_per_dim", "gaussian_nats_per_dim", "FORMAT_TAG"]
