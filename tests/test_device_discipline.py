"""Nothing in inference, the model core or the pipeline creates a tensor on the wrong device.

No GPU is needed to check it. On a CPU-only machine a tensor created without ``device=`` simply
lands on the CPU and every test passes, while on a GPU the same line fails (or silently copies
every step). So two checks that run on the CPU:

1. Static: every call of a torch factory (``torch.zeros``, ``randn``, ``tensor``, ...) in those
   packages either names its ``device`` (or is a ``*_like``), is moved at once (``.to(...)``,
   ``.cuda``), is reduced to a Python number (``float(...)``, ``int(...)``, ``.item()``), or is on the
   reviewed list below, where it is CPU on purpose (seeded ``torch.Generator`` draws on the CPU
   are moved where they are used; prior parameters are moved by ``to(device)``). A new factory
   call without a device fails this test until it is fixed or reviewed.
2. Dynamic: every result tensor of every method, run with the observation on the CPU, is on the
   observation's device (the reverse check of what a GPU run needs: nothing is silently moved).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import brgm_pyro

FACTORIES = {"zeros", "ones", "randn", "rand", "tensor", "full", "arange", "eye", "empty", "linspace",
             "randint", "as_tensor", "randperm", "normal"}
ROOT = Path(brgm_pyro.__file__).parent
CHECKED = ["inference", "pipeline", "models/brgm.py", "models/density.py", "models/latents.py", "reliance.py"]

# (file relative to brgm_pyro, enclosing function): CPU on purpose, and why
REVIEWED = {
    ("reliance.py", "prior_reliance"): "torch.zeros(()) only reaches reliance_from_draws' one-line error (no draws)",
    ("inference/engine.py", "__call__"): "as_tensor of terms that are already tensors on the model's device",
    ("inference/mcmc/langevin.py", "hutchinson_diag"): "seeded CPU Rademacher probes, (... * 2 - 1).to(state.z)",
    ("inference/mcmc/runner.py", "_jitter"): "seeded CPU noise, .to(z0[k]) before use",
    ("inference/mcmc/runner.py", "_laplace_draws"): "seeded CPU draws, .to(v) before use",
    ("inference/mcmc/runner.py", "_initial_points"): "as_tensor(...).detach().to(y)",
    ("inference/result.py", "scalar_summary"): "quantile levels for draws already moved to the CPU for reporting",
    ("inference/sites.py", "_checked"): "user values; initial_values moves them .to(y)",
    ("models/latents.py", "init_value"): "a starting value; initial_values moves it to y's device",
    ("models/latents.py", "draw_init"): "seeded CPU draws; the runner moves them .to(y)",
    ("models/latents.py", "_median"): "reduced to a float",
    ("models/latents.py", "positive_prior"): "prior parameters; ScalarLatent.to(device) moves them (build_model does)",
    ("models/latents.py", "__init__"): "support check of a float on the CPU",
    ("pipeline/tasks.py", "latent_values"): "0-d latent values to simulate a CPU observation before it is moved",
}


def _moved_or_reduced(node: ast.Call, parents: dict) -> bool:
    p = parents.get(node)
    if isinstance(p, ast.Attribute) and p.attr in ("to", "cuda", "item", "tolist", "numpy"):
        return True
    if isinstance(p, ast.Call) and isinstance(p.func, ast.Name) and p.func.id in ("float", "int", "bool"):
        return True
    return False


def _enclosing(node, parents) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node.name
    return "<module>"


def _factory_calls_without_device():
    out = []
    for entry in CHECKED:
        base = ROOT / entry
        for path in ([base] if base.suffix == ".py" else sorted(base.rglob("*.py"))):
            if not path.is_file():
                continue
            tree = ast.parse(path.read_text())
            parents = {c: n for n in ast.walk(tree) for c in ast.iter_child_nodes(n)}
            for n in ast.walk(tree):
                if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                        and isinstance(n.func.value, ast.Name) and n.func.value.id == "torch"
                        and n.func.attr in FACTORIES):
                    continue
                if any(k.arg == "device" for k in n.keywords) or _moved_or_reduced(n, parents):
                    continue
                rel = str(path.relative_to(ROOT))
                out.append((rel, _enclosing(n, parents), n.lineno, ast.unparse(n)[:80]))
    return out


def test_every_factory_call_names_its_device_or_is_reviewed():
    unreviewed = [c for c in _factory_calls_without_device() if (c[0], c[1]) not in REVIEWED]
    assert not unreviewed, "tensors created without device= (fix, or review and list in REVIEWED):\n" + \
        "\n".join(f"  brgm_pyro/{f}:{line} in {fn}: {src}" for f, fn, line, src in unreviewed)


def test_reviewed_list_has_no_stale_entries():
    found = {(c[0], c[1]) for c in _factory_calls_without_device()}
    stale = sorted(set(REVIEWED) - found)
    assert not stale, f"REVIEWED entries with no such call left (remove them): {stale}"


@pytest.mark.parametrize("method", ["map", "vi", "nuts", "mala"])
def test_results_live_on_the_observations_device(method):
    from brgm_pyro.inference import METHODS
    from brgm_pyro.models.brgm import BRGMModel, noise_latent
    from brgm_pyro.models.corruptions import SuperResolution
    from brgm_pyro.models.corruptions.superres import blur_width_latent
    from brgm_pyro.models.generators import LinearGenerator, compute_latent_stats
    from brgm_pyro.models.likelihoods import PixelGaussian
    from brgm_pyro.models.priors import make_prior

    G = LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=8)
    prior = make_prior("brgm", G, compute_latent_stats(G, num_samples=500))
    f = SuperResolution(2, "gauss", gauss_sigma=blur_width_latent(2))
    model = BRGMModel(G, prior, f, [PixelGaussian(noise_latent(guess=0.1))])
    y = torch.zeros(2, 1, 4, 4)
    kw = {"steps": 3, "num_samples": 3} if method in ("map", "vi") else \
        {"steps": 3, "num_samples": 3, "num_chains": 1, "map_steps": 3}
    res = METHODS.get(method)(model, y, progress=False, **kw)
    tensors = [res.image, *res.latents.values(), *((res.draws or {}).values())]
    tensors += [res.samples] if res.samples is not None else []
    assert all(t.device == y.device for t in tensors)
