"""``brgm diagnose posterior.nc``: R-hat, ESS and MCSE of image-level summaries, trace and rank plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from brgm_pyro import io
from brgm_pyro.cli.app import app, user_errors


@app.command()
@user_errors
def diagnose(
    posterior: Path = typer.Argument(..., help="posterior.nc written by brgm reconstruct --method sgld|nuts|..."),
    components: int = typer.Option(3, help="Principal directions of w to summarise (pc1..pcK)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write trace.png, rank.png and "
                                       "diagnostics.json (default: next to the posterior file)."),
    all_coords: bool = typer.Option(False, "--all-coords", help="Also the worst R-hat / smallest ESS over "
                                    "every latent coordinate (slow at 10^4 dimensions)."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write trace and rank plots."),
) -> None:
    """Print convergence diagnostics of a posterior and write trace/rank plots."""
    from brgm_pyro.diagnostics import diagnose as run_diagnose, format_report, scalar_summaries, write_plots
    from brgm_pyro.errors import BRGMError
    from brgm_pyro.inference.arviz_io import read_inference_data

    if components < 0:
        raise BRGMError(f"--components must be >= 0, got {components}")
    idata = read_inference_data(posterior)
    summaries = scalar_summaries(idata, components)
    rep = run_diagnose(idata, all_coords=all_coords, summaries=summaries)
    out_dir = Path(out) if out is not None else Path(posterior).resolve().parent
    for line in format_report(rep):
        typer.echo(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    if plots:
        for p in write_plots(idata, out_dir, num_components=components,
                                summaries=summaries):
            typer.echo(f"wrote {p}")
    target = out_dir / "diagnostics.json"
    io.write_text_atomic(target, json.dumps(rep, indent=2, default=float))
    typer.echo(f"wrote {target}")
