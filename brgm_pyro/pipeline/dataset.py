"""A dataset of images: batches, one result folder per image, a manifest, resume, torchrun sharding.

``brgm reconstruct DIR --out OUTDIR`` (or a manifest ``.csv`` with columns ``image`` and optionally
``mask`` and ``task``; relative paths are relative to the CSV) runs :func:`run_dataset`:

* the items are listed in a fixed order (sorted file names / the CSV's rows), grouped by task and
  cut into batches of ``batch_size``; batch k is the same whichever process runs it and uses the
  seed :func:`batch_seed` (``--seed`` for batch 0, so a one-batch run equals a single run), so
  results do not depend on how the work is shared, and the simulated noise of two batches is not
  the same draw;
* under ``torchrun --nproc-per-node N`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) rank r runs
  batches r, r + N, r + 2N, ...; the process group (gloo on CPU, NCCL with ``--device cuda``,
  where rank r uses GPU ``LOCAL_RANK``) is created but no collective is ever called, so a rank that
  fails cannot leave the others waiting;
* each image's folder ``OUTDIR/<name>/`` is built hidden and renamed into place when complete
  (:class:`brgm_pyro.io.OutputDir`), then one line is appended to ``OUTDIR/manifest.jsonl``
  (one ``write`` with ``O_APPEND``). An image is finished iff its folder exists; a rerun of the
  same command skips finished images, recomputes a batch only if one of its images is missing
  (writing only the missing ones), and repairs manifest lines lost to a kill between the rename
  and the append. ``OUTDIR/dataset.json`` holds the settings: a rerun with other settings is refused;
* when a process has finished its batches it rewrites ``OUTDIR/summary.json`` (counts and mean
  scores over the manifest); the last one to finish writes the complete summary.
* Ctrl-C inside a batch's inference stops the run (exit status 130): that batch writes nothing,
  summary.json says ``complete: false, interrupted: true``, and a rerun computes the missing images.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

from brgm_pyro import io
from brgm_pyro.errors import BRGMError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
MANIFEST = "manifest.jsonl"
SETTINGS = "dataset.json"


@dataclass(frozen=True)
class Item:
    """One image of the dataset: its result folder name, files and task."""

    name: str
    image: str
    mask: Optional[str]
    task: Optional[str]


def _is_result(p: Path, src: Path, exclude: Optional[Path]) -> bool:
    """Whether image ``p`` under ``src`` lies in a brgm output folder (``exclude``, the run's own
    ``--out``, or any folder with a ``dataset.json``): results are never read back as inputs."""
    if exclude is not None and exclude.resolve() in p.resolve().parents:
        return True
    return any((d / "dataset.json").is_file() for d in p.parents if d != src and src in d.parents)


def list_items(source: str | os.PathLike, exclude: Optional[str | os.PathLike] = None) -> list[Item]:
    """The dataset's items in their fixed order (see the module docstring); images inside
    ``exclude`` (the run's ``--out``, when it lies inside the input folder) are not items."""
    src = Path(source)
    if src.is_dir():
        ex = None if exclude is None else Path(exclude)
        files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                       and not any(part.startswith(".") for part in p.relative_to(src).parts)
                       and not _is_result(p, src, ex))
        if not files:
            raise BRGMError(f"input {str(src)!r} is a directory with no image in it ({', '.join(IMAGE_EXTS)}); "
                            f"give image files, a directory of images or a .csv manifest")
        names = io.stems([str(p.relative_to(src).with_suffix("")).replace(os.sep, "__") for p in files])
        return [Item(n, str(p), None, None) for n, p in zip(names, files)]
    if not src.is_file():
        raise BRGMError(f"manifest {str(src)!r} does not exist; give a directory of images or a .csv manifest")
    try:
        with open(src, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise BRGMError(f"cannot read manifest {str(src)!r} ({type(e).__name__}); give a UTF-8 CSV with a header "
                        f"row: image[,mask][,task]") from None
    if not rows or "image" not in rows[0]:
        raise BRGMError(f"manifest {str(src)!r} needs a header row with an 'image' column (and optionally 'mask', "
                        f"'task') and at least one row")
    base = src.parent

    def path(v: Optional[str]) -> Optional[str]:
        v = (v or "").strip()
        return None if not v else str(Path(v) if Path(v).is_absolute() else base / v)

    names = io.stems([r["image"].strip() for r in rows])
    return [Item(n, path(r["image"]), path(r.get("mask")), (r.get("task") or "").strip() or None)
            for n, r in zip(names, rows)]


def make_batches(items: list[Item], default_task: str, batch_size: int) -> list[tuple[str, list[Item]]]:
    """(task, items) batches: items grouped by task (first-appearance order), then cut in order."""
    if batch_size < 1:
        raise BRGMError(f"--batch-size must be at least 1, got {batch_size}")
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.task or default_task, []).append(it)
    return [(task, group[i:i + batch_size]) for task, group in groups.items()
            for i in range(0, len(group), batch_size)]


def dist_info() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    env = os.environ
    return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))


def init_distributed(device: str) -> Optional[str]:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) when there are several ranks; the
    device of this rank. No collective is called afterwards (see the module docstring)."""
    rank, world, local = dist_info()
    if device.startswith("cuda") and world > 1:
        device = f"cuda:{local}"
    if world > 1:
        import torch.distributed as dist

        if dist.is_available() and not dist.is_initialized():
            backend = "nccl" if device.startswith("cuda") else "gloo"
            if device.startswith("cuda"):
                import torch

                torch.cuda.set_device(local)
            dist.init_process_group(backend=backend)
    return device


def finished(out: Path) -> set[str]:
    """Names whose result folder is complete (folders appear only when complete)."""
    if not out.is_dir():
        return set()
    return {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")
            and (p / "result.json").is_file()}


def read_manifest(out: Path) -> list[dict]:
    p = out / MANIFEST
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a kill mid-write (cannot happen with O_APPEND, but be safe)
    return rows


def append_manifest(out: Path, row: dict) -> None:
    """One line, one ``write`` with O_APPEND: lines of concurrent ranks never interleave."""
    data = (json.dumps(row, sort_keys=True) + "\n").encode("utf-8")
    fd = os.open(out / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def prepare_outdir(out: Path, settings: dict) -> None:
    """Create OUTDIR with dataset.json, or check that an existing one holds the same settings."""
    s = out / SETTINGS
    if s.is_file():
        try:
            old = json.loads(s.read_text(encoding="utf-8")).get("settings")
        except (OSError, json.JSONDecodeError):
            old = None
        if old != json.loads(json.dumps(settings, default=str)):
            diff = sorted(k for k in set(settings) | set(old or {}) if (old or {}).get(k) != settings.get(k))
            raise BRGMError(f"{str(out)!r} holds a dataset run with other settings ({', '.join(diff) or 'unreadable'}); "
                            f"rerun with the same options to resume, or choose a new --out")
        return
    if out.exists() and (not out.is_dir() or any(p for p in out.iterdir() if not p.name.startswith("."))):
        raise BRGMError(f"output {str(out)!r} exists and is not a dataset run (no {SETTINGS}); choose a new --out")
    io.check_writable_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    io.save_json(s, {"settings": settings, "note": "brgm reconstruct dataset run; rerun the same command to resume"})


@dataclass
class DatasetRun:
    """Everything a dataset run needs, fixed before any work."""

    source: str
    out: Path
    task: str
    task_options: dict
    generator: str
    method: str
    steps: Optional[int]
    num_samples: int
    seed: int
    device: str
    simulate: bool
    percept: bool
    lr: Optional[float]
    batch_size: int
    model_kwargs: dict
    chains: Optional[int] = None
    class_index: Optional[int] = None
    vgg16: Optional[str] = None
    quiet: bool = True
    guide: Optional[str] = None
    particles: Optional[int] = None  # SMC's N (--particles)
    spec: Any = None  # the RunSpec every batch builds its model with (recorded through the fields above)

    def settings(self) -> dict:
        d = asdict(self)
        for k in ("out", "device", "quiet", "spec"):  # a resume may run elsewhere, on other devices
            d.pop(k)
        for k in ("guide", "particles"):  # absent when not given, as in runs written before they existed
            if d[k] is None:
                d.pop(k)
        d["task_options"] = {k: ([str(x) for x in v] if isinstance(v, list) else v)
                             for k, v in self.task_options.items()}
        return json.loads(json.dumps(d, default=str))


def _write_item(run: DatasetRun, obs, b: int, result, batch_index: int, item: Item, rank: int,
                seconds: float, reliance=None) -> dict:
    """Write one image's folder atomically; return its manifest row."""
    from brgm_pyro.pipeline.outputs import score_image, write_image_outputs
    from brgm_pyro.pipeline.records import inference_record

    target = run.out / item.name
    scores = score_image(obs, b, result, run.vgg16) if obs.truth is not None else None
    with io.OutputDir(target) as od:
        files = write_image_outputs(od, (), obs, b, result, reliance)
        io.save_json(od.path("result.json"), {
            "name": item.name, "image": item.image, "mask": item.mask, "task": obs.task.name,
            "batch": batch_index, "seed_of_batch": batch_seed(run.seed, batch_index), "input": obs.inputs[b],
            "mask_info": obs.mask_infos[b] if obs.mask_infos else None,
            "files": files, "scores": scores, "latents_of_batch": result.scalar_summary(),
            "inference_of_batch": inference_record(result)})
    row = {"name": item.name, "image": item.image, "task": obs.task.name, "batch": batch_index, "rank": rank,
           "seconds": round(seconds, 3), "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if scores is not None:
        row["psnr"] = scores["reconstruction"]["psnr"]
        row["ssim"] = scores["reconstruction"]["ssim"]
    return row


def _clean_partials(out: Path, names: set[str]) -> None:
    """Remove hidden half-built folders left by a kill, for this process's own images only (another
    rank may be building its own right now)."""
    for p in out.iterdir():
        if p.is_dir() and p.name.startswith(".") and ".partial-" in p.name:
            if p.name[1:].split(".partial-")[0] in names:
                shutil.rmtree(p, ignore_errors=True)


#: batch k's seed is ``seed + BATCH_SEED_STRIDE * k``: a prime stride, so nearby ``--seed`` values of two
#: runs do not give their batches each other's noise
BATCH_SEED_STRIDE = 10_007


def batch_seed(seed: int, k: int) -> int:
    """The seed of batch ``k`` (simulated noise and inference): distinct per batch, the same on every rank."""
    return int(seed) + BATCH_SEED_STRIDE * int(k)


def run_batch(run: DatasetRun, G, k: int, task: str, items: list[Item], todo: set[str], rank: int) -> list[dict]:
    """Reconstruct batch ``k`` and write its images that are not finished; their manifest rows."""
    from brgm_pyro.pipeline import core

    t0 = time.perf_counter()
    opts = dict(run.task_options) if task == run.task else {}
    masks = [it.mask for it in items]
    if any(masks):
        if not all(masks):
            raise BRGMError(f"batch {k}: some manifest rows of task {task} have a mask and some do not; give a mask "
                            f"for every in-painting row, or none")
        opts["mask"] = masks
    seed = batch_seed(run.seed, k)
    obs = core.observe([it.image for it in items], G, task, simulate=run.simulate, seed=seed,
                       names=[it.name for it in items], **opts)
    # the model of a single run of these images (RunSpec.build: the same defaults on every path)
    model = run.spec.build(G, obs, note=None if run.quiet else lambda text: print(f"batch {k}: {text}",
                                                                                    file=sys.stderr))
    extra = run.spec.method.runner_options()
    result = core.reconstruct(model, obs, run.method, steps=run.steps, num_samples=run.num_samples,
                              seed=seed, progress=not run.quiet, lr=run.lr, **extra)
    from brgm_pyro.pipeline.records import interrupted

    if interrupted(result):  # Ctrl-C inside inference: nothing of this batch is finished; stop the run
        raise KeyboardInterrupt
    rows = []
    from brgm_pyro.pipeline.outputs import reliance_for, write_posterior_nc

    rel, w = reliance_for(model, result)  # reliance.png per image, the NetCDF's reliance group
    if w:
        print(f"warning: batch {k}: {w}", file=sys.stderr)
    with io.sigint_deferred():
        if result.samples_w is not None:
            w = write_posterior_nc(run.out / "posteriors" / f"batch_{k:05d}.nc", result, model,
                                   obs.y.to(G.device()), rel)
            if w:
                print(f"warning: batch {k}: {w}", file=sys.stderr)
        per = (time.perf_counter() - t0) / len(items)
        for b, it in enumerate(items):
            if it.name in todo:
                row = _write_item(run, obs, b, result, k, it, rank, per, rel)
                append_manifest(run.out, row)
                rows.append(row)
    return rows


def write_summary(out: Path, total: int, interrupted: bool = False) -> dict:
    """summary.json from the manifest (atomic; the last process to finish writes the full one).
    ``interrupted``: this process was stopped by Ctrl-C (recorded, and the run is not complete)."""
    import numpy as np

    rows = {r["name"]: r for r in read_manifest(out)}
    summary: dict[str, Any] = {"images": total, "finished": len(rows),
                               "complete": len(rows) >= total and not interrupted}
    if interrupted:
        summary["interrupted"] = True
    for key in ("psnr", "ssim"):
        vals = [r[key] for r in rows.values() if r.get(key) is not None]
        if vals:
            summary[f"mean_{key}"] = float(np.mean(vals))
    io.save_json(out / "summary.json", summary)
    return summary


def run_dataset(run: DatasetRun) -> dict:
    """Run (or resume) a dataset run in this process: its share of the batches. Returns counts."""
    from brgm_pyro.pipeline import core

    rank, world, _ = dist_info()
    items = list_items(run.source, exclude=run.out)
    batches = make_batches(items, run.task, run.batch_size)
    for t, _ in batches:  # every task and its options, before any work
        core.get_task(t)
    for it in items:  # every file readable, before any work
        io.read_image(it.image, what="input image")
    prepare_outdir(run.out, run.settings())
    mine = [(k, t, b) for k, (t, b) in enumerate(batches) if k % world == rank]
    my_names = {it.name for _, _, b in mine for it in b}
    _clean_partials(run.out, my_names)
    done = finished(run.out)
    logged = {r["name"] for r in read_manifest(run.out)}
    for name in sorted((done & my_names) - logged):  # a kill between the rename and the append
        append_manifest(run.out, {"name": name, "rank": rank, "repaired": True})
    counts = {"written": 0, "skipped": 0}
    try:
        _run_batches(run, mine, done, rank, counts)
    except KeyboardInterrupt:
        # Ctrl-C: the interrupted batch wrote nothing (run_batch), finished images stay finished; a
        # rerun of the same command recomputes the rest (as after SIGTERM/SIGKILL under torchrun)
        summary = write_summary(run.out, len(items), interrupted=True)
        return {"rank": rank, "world_size": world, "batches": len(mine), **counts, "summary": summary,
                "interrupted": True}
    summary = write_summary(run.out, len(items))
    return {"rank": rank, "world_size": world, "batches": len(mine), **counts, "summary": summary,
            "interrupted": False}


def _run_batches(run: DatasetRun, mine: list, done: set[str], rank: int, counts: dict) -> None:
    """This process's batches in order, skipping finished images; ``counts`` is updated as it goes."""
    from brgm_pyro.pipeline import core

    G = None
    for k, task, batch in mine:
        todo = {it.name for it in batch} - done
        if not todo:
            counts["skipped"] += len(batch)
            continue
        if G is None:  # loaded once per process, only if there is work
            G = core.load_generator(run.generator, run.device, class_index=run.class_index)
        counts["written"] += len(run_batch(run, G, k, task, batch, todo, rank))
        counts["skipped"] += len(batch) - len(todo)
        if not run.quiet:
            print(f"rank {rank}: batch {k} done ({counts['written']} written)", file=sys.stderr)
        delay = float(os.environ.get("BRGM_TEST_BATCH_DELAY_S") or 0)
        if delay:  # tests only: time to kill the run between two batches
            time.sleep(delay)


def run_dataset_cli(*, source, spec, generator, seed, device, out, quiet, threads, class_index, batch_size,
                    vgg16) -> int:
    """``brgm reconstruct DIR|manifest.csv --out OUTDIR``: checks, then :func:`run_dataset`.
    ``spec``: the run's :class:`~brgm_pyro.pipeline.run.RunSpec` (task options already split)."""
    from brgm_pyro.pipeline import core
    from brgm_pyro.pipeline.run import set_threads

    if spec.task_options.get("mask"):
        raise BRGMError("a dataset run takes masks from the manifest's 'mask' column, not --mask")
    spec.task_options.pop("mask", None)
    set_threads(threads)
    device = init_distributed(core.resolve_device(device))
    spec.check(device)
    io.check_writable_dir(out)  # before any work: an unusable --out is one line, not a lost run
    rank, world, _ = dist_info()
    m = spec.method
    model_kwargs = {**spec.model.model_kwargs(), **({"discrepancy": "default"} if spec.model.discrepancy is None
                                                     else {})}
    run = DatasetRun(source=str(source), out=Path(out).expanduser().absolute(), task=spec.task,
                     task_options=spec.task_options, generator=generator, method=m.method, steps=m.steps,
                     num_samples=m.num_samples, seed=seed, device=device, simulate=spec.simulate,
                     percept=spec.use_percept(), lr=m.lr, batch_size=batch_size, model_kwargs=model_kwargs, chains=m.chains,
                     class_index=class_index, vgg16=str(vgg16) if vgg16 else None, quiet=quiet or rank > 0,
                     guide=m.guide, particles=m.particles, spec=spec)
    t0 = time.perf_counter()
    try:
        res = run_dataset(run)
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()  # local teardown only: no rank waits for another
    s = res["summary"]
    print(f"rank {rank}/{world}: {res['written']} image(s) written, {res['skipped']} already finished; "
          f"{s['finished']}/{s['images']} in {run.out} ({time.perf_counter() - t0:.1f} s)")
    if res["interrupted"]:
        print(f"interrupted (Ctrl-C): the run is not complete; rerun the same command to compute the other "
              f"{s['images'] - s['finished']} image(s)", file=sys.stderr)
        return 130
    return 0


__all__ = ["Item", "DatasetRun", "list_items", "make_batches", "run_dataset", "finished", "read_manifest",
           "dist_info"]
