"""``brgm train-generator`` and ``brgm train-percept``: train the bundled ``builtin:faces64``
generator and its perceptual network on the procedural faces dataset (see
``docs/model_card_faces64.md`` for the exact commands that produced the shipped weights).

Both run on a CPU (``--threads``; 1 keeps a shared machine usable) or a GPU (``--device cuda``),
write atomic checkpoints to ``--out DIR`` and continue a killed run with ``--resume``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from brgm_pyro.cli.app import app, user_errors


@app.command("train-generator")
@user_errors
def train_generator_cmd(
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoint, weights, stats, samples, log)."),
    data: str = typer.Option("faces", "--data",
                             help="faces: regression on procedural faces (builtin:faces64); fashion-mnist: "
                                  "adversarial StyleGAN2 on Fashion-MNIST photographs (builtin:fashion32)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir",
                                            help="Folder of the Fashion-MNIST idx files (default: Debian's "
                                                 "/usr/share/datasets/fashion-mnist)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Optimisation steps (faces 4000, fashion-mnist 20000)."),
    seed: int = typer.Option(0, "--seed", help="Initialisation seed (the data order is fixed by the train split)."),
    batch_size: int = typer.Option(32, "--batch-size", help="Faces per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Adam learning rate (faces: peak 2e-3 with warm-up and "
                                                          "cosine decay; fashion-mnist: constant 2.5e-3)."),
    gamma: float = typer.Option(0.01, "--gamma", help="fashion-mnist: R1 penalty weight (lazy, every 16 steps)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (the GPU path is untested here)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch.set_num_threads)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/checkpoint.pt if present."),
    ckpt_every: int = typer.Option(100, "--ckpt-every", help="Checkpoint period in steps."),
    eval_every: int = typer.Option(250, "--eval-every", help="Test-PSNR period in steps."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes",
                                                help="Stop (after a checkpoint) when this wall time is spent."),
    adv_weight: float = typer.Option(0.0, "--adv-weight",
                                     help="Weight of the adversarial term (0: pure L1 regression)."),
    init: Optional[Path] = typer.Option(None, "--init",
                                        help="Start from the weights of another run's checkpoint.pt."),
    quiet: bool = typer.Option(False, "--quiet", help="Log to DIR/log.txt only."),
) -> None:
    """Train a StyleGAN2: faces64 by regression G(mapping(u)) ~ draw(u) on procedural faces (optionally
    with an adversarial term), or fashion32 adversarially on Fashion-MNIST (--data fashion-mnist)."""
    if data not in ("faces", "fashion-mnist"):
        raise typer.BadParameter(f"--data must be faces or fashion-mnist, got {data!r}")
    if data == "fashion-mnist":
        from brgm_pyro.data.fashion_mnist import data_dir as check_data
        from brgm_pyro.training.train_gan import train_gan

        check_data(data_dir)  # a one-line error naming the Debian package, before any work
        s = train_gan(out, steps=20_000 if steps is None else steps, seed=seed, batch_size=batch_size, lr=0.0025 if lr is None else lr,
                      gamma=gamma, device=device, threads=threads, resume=resume, ckpt_every=ckpt_every,
                      max_minutes=max_minutes, root=None if data_dir is None else str(data_dir), quiet=quiet)
        if s.get("stopped"):
            typer.echo(s["stopped"])
        return
    from brgm_pyro.training.train_generator import train_generator

    s = train_generator(out, steps=4000 if steps is None else steps, seed=seed, batch_size=batch_size, lr=2e-3 if lr is None else lr, device=device,
                        threads=threads, resume=resume, ckpt_every=ckpt_every, eval_every=eval_every,
                        max_minutes=max_minutes, quiet=quiet, adv_weight=adv_weight, init=init)
    if s.get("stopped"):
        typer.echo(s["stopped"])


@app.command("train-percept")
@user_errors
def train_percept_cmd(
    out: Path = typer.Option(..., "--out", help="Output directory (checkpoint, percept.safetensors, log)."),
    steps: int = typer.Option(1200, "--steps", help="Optimisation steps."),
    seed: int = typer.Option(0, "--seed", help="Initialisation and sampling seed."),
    batch_size: int = typer.Option(64, "--batch-size", help="Faces per step."),
    num_train: int = typer.Option(30_000, "--num-train", help="Training faces (train split images 0..N-1)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate (x0.2 after 70% of the steps)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads."),
    resume: bool = typer.Option(False, "--resume", help="Continue from DIR/checkpoint.pt if present."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Directory to cache the drawn training faces."),
    quiet: bool = typer.Option(False, "--quiet", help="Log to DIR/log.txt only."),
) -> None:
    """Train the faces64 perceptual network (an encoder predicting each face's drawing code)."""
    from brgm_pyro.training.train_percept import train_percept

    train_percept(out, steps=steps, seed=seed, batch_size=batch_size, num_train=num_train, lr=lr,
                  device=device, threads=threads, resume=resume, data_cache=cache, quiet=quiet)
