"""``brgm convert NETWORK OUT.safetensors``: NVIDIA pickle (or any loadable generator) to our format.

NVIDIA pickles of StyleGAN2 generators (PyTorch: stylegan2-ada-pytorch, stylegan3's --cfg=stylegan2;
TensorFlow: stylegan2, stylegan2-ada; conditional ones and the orig/resnet architectures too) are read
with the restricted unpickler (nothing in the pickle is executed) and written as safetensors with the
generator config in the file's metadata (see docs/stylegan2.md).
"""

from __future__ import annotations

from pathlib import Path

import typer

from brgm_pyro.cli.app import app, user_errors
from brgm_pyro.errors import BRGMError


@app.command()
@user_errors
def convert(
    network: str = typer.Argument(..., help="NVIDIA StyleGAN2 .pkl (PyTorch or TensorFlow), .safetensors, "
                                            ".pt/.pth state dict, or builtin:NAME."),
    out: Path = typer.Argument(..., help="Output file, ending in .safetensors."),
    stats: bool = typer.Option(False, "--stats/--no-stats",
                               help="Also compute the latent statistics (10,000 seeded samples) and "
                                    "cache them beside OUT."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Convert a generator to brgm's safetensors format (weights + config metadata)."""
    from brgm_pyro.models.generators.loading import latent_stats_for, load_generator, save_generator

    if out.suffix != ".safetensors":
        raise BRGMError(f"output {out} must end in .safetensors")
    if out.exists() and not force:
        raise BRGMError(f"{out} exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise BRGMError(f"the directory of {out} does not exist; create it first")
    G = load_generator(network)
    if stats and getattr(G, "c_dim", 0):
        raise BRGMError(f"{network} is conditional ({G.c_dim} classes): its latent statistics are per class; "
                        "convert without --stats, they are computed when reconstructing with --class K")
    save_generator(G, out)
    cfg = G.config()
    summary = ", ".join(f"{k}={cfg[k]}" for k in ("img_resolution", "img_channels", "w_dim", "z_dim",
                                                   "c_dim", "architecture") if k in cfg)
    typer.echo(f"wrote {out} ({type(G).__name__}: {summary}, num_ws={G.num_ws})")
    if stats:
        s = latent_stats_for(G, out)
        typer.echo(f"latent statistics: sigma_scalar={s.sigma_scalar:.4f}, cached beside {out.name}")
