"""Documented commands are tests: every ```bash and ```python block of README.md and docs/*.md.

* ``brgm ...`` commands run in-process (Typer's CliRunner) in their smallest form: the same
  command with fewer steps and draws, one thread, one worker, a fresh ``--out`` each, inside a
  temporary folder holding the inputs the docs name (``small.png`` 8x8, ``small16.png`` 16x16,
  64x64 faces from :mod:`brgm_pyro.data.faces` for ``clean.png`` and the other full-size images, a
  mask, kernels, a measurement matrix); a later command's ``out/...`` path points at the earlier
  command's folder. A command that fails as written fails here.
* ``python benchmarks/X.py ...`` (the commands behind published figures, hours each): every
  ``--option`` they use must be one the script's ``--help`` lists.
* Anything else (pip, torchrun, a GPU, a network the user has) must carry the marker comment
  ``# illustrative: REASON`` on its line, or the whole block ``<!-- illustrative: REASON -->`` on
  the line before its fence.
* ```python blocks run with ``steps=``, ``num_samples=`` and ``num_chains=`` made small; a
  fragment that uses names defined elsewhere gets the preamble in PREAMBLES.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(bash|python)[ \t]*\n(.*?)^```", re.S | re.M)
MARK = re.compile(r"#.*?\billustrative:\s*(\S.*)$")
BLOCK_MARK = re.compile(r"<!--\s*illustrative:\s*(.+?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    doc: str  # path relative to the repository
    line: int  # of the fence
    lang: str
    text: str
    illustrative: str | None  # the block's reason, if marked

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


def doc_blocks(paths=DOCS) -> list[Block]:
    out = []
    for p in paths:
        s = p.read_text(encoding="utf-8")
        for m in FENCE.finditer(s):
            line = s.count("\n", 0, m.start()) + 1
            before = s[:m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            mark = BLOCK_MARK.search(before)
            out.append(Block(str(p.relative_to(ROOT)), line, m.group(1), m.group(2),
                             mark.group(1) if mark else None))
    return out


def block_commands(text: str) -> list[tuple[str, str | None]]:
    """(command, illustrative reason or None) of a bash block: continuation lines joined, comment
    lines dropped; a marker comment on any line of a command marks the command."""
    cmds, cur, reason = [], "", None
    for raw in text.splitlines():
        m = MARK.search(raw)
        if m:
            reason = m.group(1).strip()
        line = raw.rstrip()
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            reason = None if not cur else reason
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        cmds.append(((cur + line).strip(), reason))
        cur, reason = "", None
    return cmds


# --- the inputs the docs name, made here --------------------------------------------------------
def _face(i: int = 0, size: int = 64) -> Image.Image:
    from brgm_pyro.data.faces import face_image_uint8

    img = Image.fromarray(face_image_uint8(64 + i, split="train"))
    return img if size == 64 else img.resize((size, size), Image.BICUBIC)


def make_inputs(d: Path) -> None:
    _face(0, 8).save(d / "small.png")
    _face(0, 16).save(d / "small16.png")
    for name in ("clean.png", "face.png", "photo.png", "blurred.png", "noisy.png", "y.png"):
        _face(1).save(d / name)
    _face(1).convert("L").save(d / "gray.png")
    from brgm_pyro.data.fashion_mnist import shipped_subset

    Image.fromarray(shipped_subset("test")[0][0]).save(d / "shirt.png")  # a Fashion-MNIST test photograph
    mask = np.full((64, 64), 255, np.uint8)
    mask[20:44, 16:48] = 0
    Image.fromarray(mask).save(d / "mask.png")
    t = np.arange(-2, 3)
    k = np.exp(-0.5 * (t[:, None] ** 2 + t[None, :] ** 2) / 1.5 ** 2)
    for name in ("kernel.npy", "k.npy"):
        np.save(d / name, k / k.sum())
    np.save(d / "A.npy", np.random.default_rng(0).normal(0, 1 / 8, (64, 3 * 64 * 64)).astype(np.float32))
    (d / "faces").mkdir()
    for i in range(2):
        _face(2 + i, 8).save(d / "faces" / f"face_{i}.png")


# --- smallest forms -------------------------------------------------------------------------------
def _set(args: list[str], opt: str, value: str | None, only_if_present: bool = False) -> list[str]:
    """Replace ``opt``'s value (or add the flag/option when absent, unless only_if_present)."""
    if opt in args:
        i = args.index(opt)
        if value is not None:
            args[i + 1] = value
        return args
    if only_if_present:
        return args
    return args + ([opt] if value is None else [opt, value])


def smallest(args: list[str], tmp: Path, n: int) -> list[str]:
    """The command ``brgm ARGS`` with the smallest budgets (see the module docstring)."""
    cmd = args[0]
    a = list(args)
    if cmd == "reconstruct":
        method = a[a.index("--method") + 1] if "--method" in a else "map"
        dataset = (tmp / a[1]).is_dir() or a[1].endswith(".csv")
        a = _set(a, "--steps", "2")
        a = _set(a, "--num-samples", "2")
        if method in ("sgld", "psgld", "mala", "hmc", "nuts"):
            a = _set(a, "--chains", "2")
        a = _set(a, "--workers", "1", only_if_present=True)
        if method == "nuts" and not dataset:
            a = _set(a, "--max-tree-depth", "2")
        if not dataset:  # a dataset run takes the default number of prior draws
            a = _set(a, "--reliance-draws", "4")
        a = _set(a, "--threads", "1")
        a = _set(a, "-q", None)
    elif cmd == "compare":  # SMC under every model: few particles, runs and moves; a file of the test's own
        for opt, v in (("--particles", "8"), ("--chains", "2"), ("--steps", "1"), ("--threads", "1"),
                       ("--out", str(tmp / f"compare_{n}.json"))):
            a = _set(a, opt, v)
        a = _set(a, "-q", None)
    elif cmd == "demo":
        a = _set(_set(_set(a, "--quick", None), "--steps", "2"), "--threads", "1")
    elif cmd == "fit-discrepancy":  # never the bundled file: a file of the test's own
        a = _set(_set(_set(a, "--num-images", "2"), "--steps", "3"), "--threads", "1")
        a = _set(a, "--out", str(tmp / f"discrepancy_{n}.json"))
    elif cmd == "train-prior":
        for opt, v in (("--steps", "3"), ("--num-train", "256"), ("--num-val", "64"), ("--batch-size", "64"),
                       ("--eval-every", "2"), ("--threads", "1"), ("--out", str(tmp / f"prior_{n}.safetensors"))):
            a = _set(a, opt, v)
    return a


def _fresh_outs(args: list[str], outs: dict[str, str], n: int) -> list[str]:
    """A new folder for each --out (the docs reuse out/); later paths under a documented out/
    point at the folder its last command wrote."""
    a = []
    for tok in args:
        for doc_out, real in outs.items():
            if tok.startswith(doc_out) and tok != doc_out:
                tok = real + tok[len(doc_out):]
        a.append(tok)
    for opt in ("--out",):
        if opt in a and a[0] in ("reconstruct", "demo"):
            i = a.index(opt)
            doc_out = a[i + 1].rstrip("/") + "/"
            outs[doc_out] = a[i + 1] = f"run{n}/"
    return a


def run_brgm(args: list[str]):
    from typer.testing import CliRunner

    from brgm_pyro.cli import app

    return CliRunner().invoke(app, args)


@lru_cache(maxsize=None)
def script_help(script: str) -> str:
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script} --help failed: {r.stderr[-1500:]}"
    return r.stdout


def check_command(cmd: str, reason: str | None, tmp: Path, n: int, outs: dict[str, str]) -> str:
    """Run or check one documented command; return what was done (for the log)."""
    if reason:
        return f"illustrative ({reason}): {cmd}"
    toks = shlex.split(cmd, comments=True)
    while toks and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", toks[0]):  # PYTHONPATH=. OMP_NUM_THREADS=1 ...
        toks = toks[1:]
    if toks[:1] == ["brgm"]:
        args = smallest(_fresh_outs(toks[1:], outs, n), tmp, n)
        res = run_brgm(args)
        err = res.stderr if res.stderr_bytes is not None else ""
        assert res.exit_code == 0, (f"documented command failed (exit {res.exit_code}): {cmd}\nran: brgm "
                                    f"{shlex.join(args)}\n{res.output[-1500:]}{err[-1500:]}")
        return f"ran: brgm {shlex.join(args)}"
    if toks[:3] == ["python", "-m", "pytest"]:  # the named test files must exist
        missing = [t.split("::")[0] for t in toks[3:] if t.startswith("tests/") and not (ROOT / t.split("::")[0]).exists()]
        assert not missing, f"{cmd}: no such test file(s) {missing}"
        return f"test files checked: {cmd}"
    if toks[:1] == ["python"] and len(toks) > 1 and toks[1].startswith(("benchmarks/", "examples/")):
        helptext = script_help(toks[1])
        unknown = [t.split("=")[0] for t in toks[2:] if t.startswith("--") and t.split("=")[0] not in helptext]
        assert not unknown, f"{cmd}: {toks[1]} has no option(s) {unknown}"
        return f"options checked: {cmd}"
    raise AssertionError(f"documented command neither runnable here (brgm ..., python benchmarks|examples/..., "
                         f"python -m pytest) nor marked "
                         f"'# illustrative: REASON': {cmd}")


# --- python blocks --------------------------------------------------------------------------------
PREAMBLES = {
    "docs/flow_prior.md": ("import brgm_pyro as brgm\nfrom brgm_pyro.models.brgm import build_model\n"
                           "from brgm_pyro.models.corruptions import SuperResolution\n"
                           "G = brgm.load_generator('builtin:faces64')\nf = SuperResolution(8)\n"),
    "docs/mcmc.md": ("import torch\nfrom brgm_pyro.models.brgm import build_model\n"
                     "from brgm_pyro.models.corruptions import SuperResolution\n"
                     "from brgm_pyro.models.generators import LinearGenerator\n"
                     "model = build_model(LinearGenerator(num_ws=2, w_dim=3, img_channels=1, img_resolution=4), "
                     "SuperResolution(2), prior='gaussian', sigma_pixel=0.1)\n"
                     "y = torch.zeros(1, *model.obs_shape)\n"),
}


def small_python(text: str) -> str:
    text = re.sub(r"\bsteps=\d+", "steps=2", text)
    text = re.sub(r"\bnum_samples=\d+", "num_samples=2", text)
    return re.sub(r"\bnum_chains=\d+", "num_chains=1", text)


BLOCKS = doc_blocks()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The inputs, and the budgets no option reaches made small: the MAP that starts MCMC and the
    Gauss-Newton passes of its Laplace metric."""
    make_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("brgm_pyro.inference.map.DEFAULT_MAP_STEPS", 3)
    monkeypatch.setattr("brgm_pyro.inference.mcmc.runner.DEFAULT_LAPLACE_PASSES", 16)
    return tmp_path


# Documented commands that fail today for a bug fixed elsewhere: (doc, part of the command) -> why.
# Strict: such a command must still fail here; once it passes, remove its entry.
KNOWN_FAILURES: dict = {}


def _known(block: Block, cmd: str):
    return next((why for (doc, part), why in KNOWN_FAILURES.items() if doc == block.doc and part in cmd), None)


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "bash"], ids=lambda b: b.id)
def test_bash_block(block: Block, workdir: Path):
    if block.illustrative:
        pytest.skip(f"illustrative: {block.illustrative}")
    outs: dict[str, str] = {}
    known = []
    for n, (cmd, reason) in enumerate(block_commands(block.text)):
        why = _known(block, cmd)
        if why is None:
            print(check_command(cmd, reason, workdir, n, outs))
            continue
        with pytest.raises(AssertionError, match="documented command failed"):
            check_command(cmd, reason, workdir, n, outs)  # passes: drop its KNOWN_FAILURES entry
        known.append(why)
    if known:
        pytest.xfail("; ".join(known))


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "python"], ids=lambda b: b.id)
def test_python_block(block: Block, workdir: Path):
    if block.illustrative:
        pytest.skip(f"illustrative: {block.illustrative}")
    code = PREAMBLES.get(block.doc, "") + small_python(block.text)
    exec(compile(code, f"{block.id} (as run by the test)", "exec"), {"__name__": "__docs__"})


def test_the_parser_finds_the_blocks_and_joins_continuations():
    """The extraction itself: a block of three commands, one continued and one marked."""
    cmds = block_commands("# a comment\nbrgm reconstruct a.png \\\n    --out o/\n\n"
                          "brgm x   # illustrative: needs a GPU\npip install .\n")
    assert cmds == [("brgm reconstruct a.png      --out o/", None), ("brgm x   # illustrative: needs a GPU",
                                                                        "needs a GPU"), ("pip install .", None)]
    assert {b.doc for b in BLOCKS} >= {"README.md", "docs/corruptions.md", "docs/mcmc.md"}
    assert sum(b.lang == "bash" for b in BLOCKS) >= 10
