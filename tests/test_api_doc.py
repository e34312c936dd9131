"""docs/API.md against the code: every call it shows, ``name(args)`` in backticks, names something
importable (the section's module, ``brgm.``/``brgm_pyro.`` paths, or ``Class.method``), and every
parameter it shows exists with the default it shows (issue 26: the page had drifted in 4+ places)."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "API.md"
CALL = re.compile(r"`((?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*)\(([^`]*?)\)(?:\s*->[^`]*)?`")
SECTION = re.compile(r"^## .*?`(brgm_pyro[\w.]*)`", re.M)
# calls that are not Python names of the package (shell-like notation, attributes of results, ...)
NOT_NAMES = {"runner", "model", "fn", "deco", "write", "factory", "sample", "forward", "mapping", "synthesis",
             "observe", "log_prob", "pointwise_log_prob", "render", "predict", "log_joint", "out_shape",
             "check_input", "config", "device", "draw_init", "init_values", "draw_inits", "site_terms",
             "mean_image", "std_image", "scalar_summary", "latents", "check", "check_shape", "build",
             "observation_shape", "size_hint", "extra_outputs", "baseline", "settings", "read_channels", "diag",
             "TaskInputs", "TaskBuild", "TaskOption", "atomic_path", "load_generator", "obs_variance", "simulate",
             "corruption", "latent_sites"}


def _calls() -> list[tuple[str, str, str]]:
    """(module of the section, name, shown arguments) of every call in the page."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    bounds = [(m.start(), m.group(1)) for m in SECTION.finditer(text)] + [(len(text), None)]
    starts = [(0, "brgm_pyro")] + bounds
    for (a, mod), (b, _) in zip(starts, starts[1:]):
        for m in CALL.finditer(text[a:b]):
            out.append((mod or "brgm_pyro", m.group(1), m.group(2)))
    return out


def _resolve(module: str, name: str):
    parts = name.split(".")
    if parts[0] == "brgm":
        parts[0] = "brgm_pyro"
    if parts[0] == "brgm_pyro":
        for i in range(len(parts), 0, -1):  # the longest importable module prefix
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            for p in parts[i:]:
                obj = getattr(obj, p)
            return obj
    for mod in [module, *_MODULES]:  # the section's module, then every module the page names
        try:
            obj = importlib.import_module(mod)
            for p in parts:
                obj = getattr(obj, p)
            return obj
        except (ImportError, AttributeError):
            continue
    raise AttributeError(f"found in none of {module} and the modules the page names")


def _modules() -> list[str]:
    """Every ``brgm_pyro.x.y`` module named in the page (bullets introduce names by their module)."""
    found = re.findall(r"`(brgm_pyro(?:\.\w+)*)", DOC.read_text(encoding="utf-8"))
    out = []
    for m in dict.fromkeys(found):
        try:
            importlib.import_module(m)
            out.append(m)
        except ImportError:
            continue
    return out + ["brgm_pyro.models.brgm", "brgm_pyro.models.corruptions.base", "brgm_pyro.models.priors.base",
                  "brgm_pyro.models.likelihoods.base"]


_MODULES = _modules()


def _pieces(args: str) -> list[str]:
    return [p.strip() for p in re.split(r",(?![^()\[\]]*[)\]])", args) if p.strip()]


def _leading(args: str) -> list[str]:
    """The parameter names the page shows before its first ``...``, ``*`` or value: they claim to be
    the signature's first parameters, in order."""
    out = []
    for piece in _pieces(args):
        m = re.fullmatch(r"([A-Za-z_]\w*)\s*(?:=\s*(.+))?", piece)
        if not m:
            break
        out.append(m.group(1))
    return out


def _shown_params(args: str) -> list[tuple[str, object]]:
    """(name, shown default or ...) of each ``name`` / ``name=default`` the page shows."""
    out = []
    for piece in _pieces(args):
        m = re.fullmatch(r"([a-z_]\w*)\s*(?:=\s*(.+))?", piece)
        if not m:
            continue  # ``...``, ``*``, ``**kw``, a value, an alternative list
        shown = ...
        if m.group(2) is not None:
            try:
                shown = ast.literal_eval(m.group(2))
            except (ValueError, SyntaxError):
                shown = ...  # an expression or alternatives ("0.05|'learn'"): the name is checked only
        out.append((m.group(1), shown))
    return out


CASES = [c for c in _calls() if c[1].split(".")[-1] not in NOT_NAMES]


def test_the_page_shows_calls():
    assert len(CASES) > 30


@pytest.mark.parametrize("module,name,args", CASES, ids=[f"{c[1]}" for c in CASES])
def test_every_call_the_page_shows_exists_with_its_parameters(module, name, args):
    try:
        obj = _resolve(module, name)
    except (ImportError, AttributeError) as e:
        raise AssertionError(f"docs/API.md names `{name}` (section {module}): {e}") from None
    if not callable(obj):
        return
    sig = inspect.signature(obj)
    params = sig.parameters
    takes_kwargs = any(p.kind == p.VAR_KEYWORD for p in params.values())
    named = [k for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and k != "self"]
    lead = _leading(args)
    if lead and not (takes_kwargs and any(k not in named for k in lead)):
        assert named[:len(lead)] == lead, f"`{name}({args})`: its parameters begin {named[:len(lead) + 1]}"
    for pname, shown in _shown_params(args):
        if pname not in params:
            assert takes_kwargs, f"`{name}` has no parameter {pname!r} (its parameters: {list(params)})"
            continue
        default = params[pname].default
        if shown is not ... and default is not inspect.Parameter.empty:
            assert default == shown, f"`{name}`: {pname} defaults to {default!r}, the page shows {shown!r}"
