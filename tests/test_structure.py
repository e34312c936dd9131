"""The package's shape: no function over 80 lines (a typer command's option list is its signature,
so for commands only the body counts), and no import circle inside brgm_pyro/."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "brgm_pyro"


def _is_command(fn: ast.FunctionDef) -> bool:
    """A typer command: decorated with ``*.command`` or declaring its options as ``typer.Option`` defaults."""
    def call_of(node, names) -> bool:
        return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in names

    defaults = [*fn.args.defaults, *fn.args.kw_defaults]
    return (any(call_of(d, ("command",)) for d in fn.decorator_list)
            or any(call_of(d, ("Option", "Argument")) for d in defaults if d is not None))


def test_no_function_over_80_lines():
    long = []
    for p in sorted(PKG.rglob("*.py")):
        for fn in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            start = fn.body[0].lineno if _is_command(fn) else fn.lineno
            if fn.end_lineno - start + 1 > 80:
                long.append(f"{p.relative_to(PKG)}:{fn.name} ({fn.end_lineno - start + 1} lines)")
    assert not long, long


def _imports(p: Path) -> set[str]:
    """brgm_pyro modules that file ``p`` imports (module level and inside functions)."""
    out = set()
    for n in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
        if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("brgm_pyro"):
            out.add(n.module)
            out |= {f"{n.module}.{a.name}" for a in n.names}
        elif isinstance(n, ast.Import):
            out |= {a.name for a in n.names if a.name.startswith("brgm_pyro")}
    return out


def test_no_module_level_import_circle_between_cli_and_library():
    """The library never imports the CLI (the CLI adapts the library, not the other way round)."""
    bad = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(PKG).parts
        if rel[0] == "cli" or rel == ("__main__.py",):  # python -m brgm_pyro runs the CLI
            continue
        if any(m == "brgm_pyro.cli" or m.startswith("brgm_pyro.cli.") for m in _imports(p)):
            bad.append(str(p.relative_to(PKG)))
    assert not bad, bad
