"""``brgm train-prior``: fit the normalizing-flow prior on W (``--prior flow`` / ``rls``) to a generator.

The file is found by ``--prior flow`` when it lies beside the generator's weights as
``<weights>.flow_prior.safetensors`` (the default ``--out`` for a generator file; see
:func:`~brgm_pyro.models.generators.loading.flow_prior_path`). Nothing is ever written inside the
installed package: for a builtin generator the default is ``./flow_prior_out/`` (use the file with
``--prior flow --prior-option path=FILE``), and an ``--out`` inside the package is refused. CPU minutes for ``builtin:faces64``
(d = 128); use ``--device cuda`` for a 512-d StyleGAN2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brgm_pyro.cli.app import app, user_errors


def _hidden(text: str) -> tuple:
    from brgm_pyro.errors import BRGMError

    try:
        out = tuple(int(h) for h in text.split(","))
    except ValueError:
        raise BRGMError(f"--hidden must be comma-separated widths such as 256,256; got {text!r}") from None
    if not out or min(out) < 1:
        raise BRGMError(f"--hidden widths must be positive; got {text!r}")
    return out


DEFAULT_OUT_DIR = "flow_prior_out"  # a user directory for generators whose weights ship in the package


def _prior_out(out: Optional[Path], beside: Optional[Path]) -> tuple[Path, Optional[str]]:
    """(the file to write, a note on how to use it or None). Default: beside the generator's weights,
    where ``--prior flow`` finds it, unless those lie in the installed package (builtin generators):
    then ``./flow_prior_out/<name>``. A path inside the package is refused: it would silently replace
    the shipped prior for every later run. The directory must be writable (checked before training)."""
    import brgm_pyro
    from brgm_pyro import io
    from brgm_pyro.errors import BRGMError

    package = Path(brgm_pyro.__file__).resolve().parent
    note = None
    if out is None:
        if beside is None:
            raise BRGMError("this generator has no weights file to put the prior beside; give --out FILE")
        out = beside
        if _inside(out, package):
            out = Path(DEFAULT_OUT_DIR) / beside.name
            note = (f"the generator ships in the package: writing {out}; use it with --prior flow "
                    f"--prior-option path={out}")
    elif _inside(out, package):
        raise BRGMError(f"--out {str(out)!r} is inside the installed brgm_pyro package (it would replace the "
                        f"shipped prior); give a path outside it, e.g. --out {DEFAULT_OUT_DIR}/prior.safetensors")
    io.check_writable_dir(out.parent)
    return out, note


def _inside(path: Path, folder: Path) -> bool:
    p = path.expanduser().resolve()
    return p == folder or folder in p.parents


@app.command("train-prior")
@user_errors
def train_prior_cmd(
    generator: str = typer.Option("builtin:faces64", "--generator", help="Generator spec (file or builtin:NAME)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output .safetensors (default: beside the weights, "
                                       "<weights>.flow_prior.safetensors, where --prior flow finds it; for a "
                                       "builtin generator ./flow_prior_out/; never inside the package)."),
    steps: int = typer.Option(6000, "--steps", help="Maximum Adam steps (cosine-decayed learning rate)."),
    num_train: int = typer.Option(50_000, "--num-train", help="Training latents (z from --seed)."),
    num_val: int = typer.Option(5_000, "--num-val", help="Validation latents (z from --seed + 1)."),
    batch_size: int = typer.Option(512, "--batch-size", help="Latents per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Peak Adam learning rate."),
    transforms: int = typer.Option(5, "--transforms", help="MAF blocks."),
    hidden: str = typer.Option("256,256", "--hidden", help="Hidden widths of each block (comma-separated)."),
    noise: float = typer.Option(0.1, "--noise", help="Smoothing std in units of W's per-dimension std."),
    seed: int = typer.Option(0, "--seed", help="Seed of the training z (validation: seed + 1)."),
    eval_every: int = typer.Option(250, "--eval-every", help="Validation period in steps."),
    patience: int = typer.Option(6, "--patience", help="Evaluations without validation gain before stopping."),
    ckpt_every: int = typer.Option(500, "--ckpt-every", help="Checkpoint period in steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>.ckpt.pt if present."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Pause (checkpoint) after this time."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch.set_num_threads)."),
    class_index: Optional[int] = typer.Option(None, "--class", help="Class K of a conditional generator."),
) -> None:
    """Fit a masked autoregressive flow to the generator's mapped latents (early stopping on
    held-out latents) and write it as safetensors with its architecture and training summary."""
    from brgm_pyro.errors import BRGMError
    from brgm_pyro.models.generators.loading import choose_class, flow_prior_path, load_generator
    from brgm_pyro.models.priors.flow import FlowConfig
    from brgm_pyro.training.common import setup_device
    from brgm_pyro.training.train_prior import train_prior

    dev = setup_device(device, threads)
    G = choose_class(load_generator(generator, device=dev), class_index, required=True)
    out, note = _prior_out(out, flow_prior_path(G))
    if noise < 0:
        raise BRGMError(f"--noise must be >= 0; got {noise}")
    cfg = FlowConfig(w_dim=G.w_dim, transforms=transforms, hidden=_hidden(hidden), noise=noise)
    out.parent.mkdir(parents=True, exist_ok=True)
    if note:
        typer.echo(note)
    s = train_prior(G, out, cfg=cfg, num_train=num_train, num_val=num_val, steps=steps, batch_size=batch_size,
                    lr=lr, seed=seed, eval_every=eval_every, patience=patience, ckpt_every=ckpt_every,
                    resume=resume, max_minutes=max_minutes, log=typer.echo)
    if (s.get("stopped") or "").startswith("paused"):
        typer.echo(s["stopped"])
